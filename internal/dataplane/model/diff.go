package model

import (
	"bytes"
	"fmt"
	"strings"
)

// OpKind is one kind of change in a netlink batch.
type OpKind int

const (
	OpAddTable OpKind = iota
	OpFlushTable
	OpAddChain
	OpFlushChain
	OpDelChain
	OpAddSet
	OpFlushSet
	OpDelSet
	OpDelElements
	OpAddElements
	OpDelRule
	OpInsertRule
	OpAddRule
)

// Op is one change. Which fields are set depends on kind.
type Op struct {
	Kind OpKind
	// Name is the chain or set the op applies to.
	Name string
	// Chain is the definition of an added chain.
	Chain *Chain
	// Set is the definition of an added set (its elements are added with
	// it), or the set whose elements change.
	Set   *Set
	Elems []Element
	// Rule is an added rule; handle is the rule deleted, or the rule an
	// inserted rule goes before.
	Rule   *Rule
	Handle uint64
	// Capacity is the size an added set is declared with (0: none).
	Capacity uint32
}

// Plan is an ordered list of changes that turns one table into another.
// Executed in order in one transaction, every reference (a rule to a set or
// chain, a map element to a chain) is created before and removed after its
// users:
//
//	add table; [rebuild: flush table, empty maps, delete mismatched and
//	unwanted sets and chains]; add chains; add sets with elements; delete
//	elements; refill interval sets; add elements; delete, insert and append
//	rules; flush unwanted chains; delete unwanted sets; delete unwanted chains.
type Plan struct {
	Ops []Op
	// Rebuild is set when the kernel held objects of a shape nftguard does
	// not write (a set of another type, a chain with another hook), or a
	// shared set too small for the change: every rule is then rewritten,
	// still in one transaction.
	Rebuild bool
}

// Changes counts what a plan changes.
type Changes struct {
	ChainsAdded, ChainsDeleted     int
	RulesAdded, RulesDeleted       int
	SetsAdded, SetsDeleted         int
	ElementsAdded, ElementsDeleted int
	// Flushes counts flushed chains, sets and tables.
	Flushes int
}

// Empty reports whether nothing changes.
func (c Changes) Empty() bool { return c == Changes{} }

func (p *Plan) Changes() Changes {
	var c Changes
	for _, o := range p.Ops {
		switch o.Kind {
		case OpAddChain:
			c.ChainsAdded++
		case OpDelChain:
			c.ChainsDeleted++
		case OpAddRule, OpInsertRule:
			c.RulesAdded++
		case OpDelRule:
			c.RulesDeleted++
		case OpAddSet:
			c.SetsAdded++
			c.ElementsAdded += len(o.Set.Elements)
		case OpDelSet:
			c.SetsDeleted++
		case OpAddElements:
			c.ElementsAdded += len(o.Elems)
		case OpDelElements:
			c.ElementsDeleted += len(o.Elems)
		case OpFlushChain, OpFlushSet, OpFlushTable:
			c.Flushes++
		}
	}
	return c
}

// String prints the plan, one change a line, in nft syntax (element lists
// abridged).
func (p *Plan) String() string {
	var b strings.Builder
	for _, o := range p.Ops {
		b.WriteString(o.String())
		b.WriteByte('\n')
	}
	return b.String()
}

func (o Op) String() string {
	switch o.Kind {
	case OpAddTable:
		return "add table inet " + TableName
	case OpFlushTable:
		return "flush table inet " + TableName
	case OpAddChain:
		if o.Chain.IsBase() {
			return fmt.Sprintf("add chain %s { type filter hook %s priority %d; policy accept; }", o.Name, o.Chain.Hook, o.Chain.Priority)
		}
		return "add chain " + o.Name
	case OpFlushChain:
		return "flush chain " + o.Name
	case OpDelChain:
		return "delete chain " + o.Name
	case OpAddSet:
		s := fmt.Sprintf("add set %s { type %s; }", o.Name, o.Set.Kind)
		if len(o.Set.Elements) > 0 {
			s += " " + ElemsString(o.Set.Kind, o.Set.Elements)
		}
		return s
	case OpFlushSet:
		return "flush set " + o.Name
	case OpDelSet:
		return "delete set " + o.Name
	case OpAddElements:
		return "add element " + o.Name + " " + ElemsString(o.Set.Kind, o.Elems)
	case OpDelElements:
		return "delete element " + o.Name + " " + ElemsString(o.Set.Kind, o.Elems)
	case OpAddRule:
		return "add rule " + o.Name + " " + o.Rule.String()
	case OpInsertRule:
		return fmt.Sprintf("insert rule %s position %d %s", o.Name, o.Handle, o.Rule.String())
	case OpDelRule:
		return fmt.Sprintf("delete rule %s handle %d", o.Name, o.Handle)
	}
	return fmt.Sprintf("op %d", o.Kind)
}

func ElemsString(k SetKind, es []Element) string {
	const show = 4
	parts := make([]string, 0, show+1)
	for i, e := range es {
		if i == show {
			parts = append(parts, fmt.Sprintf("... (%d elements)", len(es)))
			break
		}
		parts = append(parts, k.Format(e))
	}
	return "{ " + strings.Join(parts, ", ") + " }"
}

// Diff plans the changes that turn cur into want. cur is what the kernel
// holds (nil: no table), as last applied or as read back; rules of cur
// chains that differ from want need their kernel handles (a chain whose
// rules lack them is rewritten whole).
func Diff(cur, want *Table) *Plan { return DiffSized(cur, want, nil) }

// DiffSized is diff for the Programmer, which declares the size of the
// shared sets (see SetCapacity): capacity returns the size a set of cur was
// created with (0: none). A set too small for its change is replaced, which
// rewrites every rule (in the same transaction); it happens each time a
// shared set outgrows the double of its size when it was made.
func DiffSized(cur, want *Table, capacity func(name string) uint32) *Plan {
	p := &Plan{}
	if cur == nil {
		p.Ops = append(p.Ops, Op{Kind: OpAddTable})
		cur = &Table{}
	}
	curChains := make(map[string]*Chain, len(cur.Chains))
	for _, c := range cur.Chains {
		curChains[c.Name] = c
	}
	curSets := make(map[string]*Set, len(cur.Sets))
	for _, s := range cur.Sets {
		curSets[s.Name] = s
	}
	wantChains := make(map[string]*Chain, len(want.Chains))
	for _, c := range want.Chains {
		wantChains[c.Name] = c
	}
	wantSets := make(map[string]*Set, len(want.Sets))
	for _, s := range want.Sets {
		wantSets[s.Name] = s
	}

	// Objects of the wrong shape cannot be changed in place; they are
	// replaced, which needs every rule out of the way first.
	for _, c := range want.Chains {
		if k := curChains[c.Name]; k != nil && k.Signature() != c.Signature() {
			p.Rebuild = true
		}
	}
	var small map[string]bool
	var deltas map[string][2][]Element // of sized sets, computed once
	for _, s := range want.Sets {
		k := curSets[s.Name]
		if k == nil {
			continue
		}
		if k.Kind != s.Kind || k.KernelSig != "" {
			p.Rebuild = true
		}
		if capacity == nil || !s.Kind.Sized() || k == s || s.CoOwned {
			continue
		}
		c := capacity(k.Name)
		if c == 0 {
			continue
		}
		// The set holds its old elements and the added ones together at
		// some point (when a large change is split, additions are
		// committed before removals).
		removed, added := s.DeltaFrom(k)
		if deltas == nil {
			deltas = map[string][2][]Element{}
		}
		deltas[s.Name] = [2][]Element{removed, added}
		if len(k.Elements)+len(added) > int(c) {
			if small == nil {
				small = map[string]bool{}
			}
			small[s.Name] = true
			p.Rebuild = true
		}
	}
	if p.Rebuild {
		p.Ops = append(p.Ops, Op{Kind: OpFlushTable})
		for _, k := range cur.Sets {
			s := wantSets[k.Name]
			switch {
			case s == nil || s.Kind != k.Kind || k.KernelSig != "" || small[k.Name]:
				p.Ops = append(p.Ops, Op{Kind: OpDelSet, Name: k.Name})
				delete(curSets, k.Name)
			case s.CoOwned:
				// Another writer's elements stay.
			case k.Kind.IsMap() && len(k.Elements) > 0:
				// Its elements may point at chains deleted below.
				p.Ops = append(p.Ops, Op{Kind: OpFlushSet, Name: k.Name, Set: k})
				curSets[k.Name] = &Set{Name: k.Name, Kind: k.Kind}
			}
		}
		for _, k := range cur.Chains {
			if c := wantChains[k.Name]; c == nil || c.Signature() != k.Signature() {
				p.Ops = append(p.Ops, Op{Kind: OpDelChain, Name: k.Name})
				delete(curChains, k.Name)
			} else {
				curChains[k.Name] = &Chain{Name: k.Name, Hook: k.Hook, Priority: k.Priority, KernelSig: k.KernelSig}
			}
		}
	}

	for _, c := range want.Chains {
		if curChains[c.Name] == nil {
			p.Ops = append(p.Ops, Op{Kind: OpAddChain, Name: c.Name, Chain: c})
		}
	}
	for _, s := range want.Sets {
		if curSets[s.Name] == nil {
			o := Op{Kind: OpAddSet, Name: s.Name, Set: s}
			if capacity != nil && s.Kind.Sized() {
				o.Capacity = SetCapacity(len(s.Elements))
			}
			p.Ops = append(p.Ops, o)
		}
	}
	var dels, refills, adds []Op
	for _, s := range want.Sets {
		k := curSets[s.Name]
		if k == nil || k == s || s.CoOwned {
			// New, or the very set applied last time (a Renderer reuses
			// the sets of unchanged groups), or another writer's
			// elements.
			continue
		}
		var removed, added []Element
		if d, ok := deltas[s.Name]; ok {
			removed, added = d[0], d[1]
		} else {
			removed, added = s.DeltaFrom(k)
		}
		switch {
		case len(removed) == 0 && len(added) == 0:
		case s.Kind.IsRBTree():
			// Intervals are rewritten whole: start and end elements
			// of neighbouring ranges must never be half updated.
			refills = append(refills, Op{Kind: OpFlushSet, Name: s.Name, Set: s})
			if len(s.Elements) > 0 {
				refills = append(refills, Op{Kind: OpAddElements, Name: s.Name, Set: s, Elems: s.Elements})
			}
		default:
			if len(removed) > 0 {
				dels = append(dels, Op{Kind: OpDelElements, Name: s.Name, Set: s, Elems: removed})
			}
			if len(added) > 0 {
				adds = append(adds, Op{Kind: OpAddElements, Name: s.Name, Set: s, Elems: added})
			}
		}
	}
	p.Ops = append(p.Ops, dels...)
	p.Ops = append(p.Ops, refills...)
	p.Ops = append(p.Ops, adds...)

	for _, c := range want.Chains {
		var rules []*Rule
		if k := curChains[c.Name]; k != nil {
			if k == c {
				continue
			}
			rules = k.Rules
		}
		p.Ops = append(p.Ops, RuleOps(c.Name, rules, c.Rules)...)
	}

	var unwanted []string
	for _, k := range cur.Chains {
		if curChains[k.Name] != nil && wantChains[k.Name] == nil {
			unwanted = append(unwanted, k.Name)
			p.Ops = append(p.Ops, Op{Kind: OpFlushChain, Name: k.Name})
		}
	}
	for _, k := range cur.Sets {
		if curSets[k.Name] != nil && wantSets[k.Name] == nil {
			p.Ops = append(p.Ops, Op{Kind: OpDelSet, Name: k.Name})
		}
	}
	for _, name := range unwanted {
		p.Ops = append(p.Ops, Op{Kind: OpDelChain, Name: name})
	}
	return p
}

// ElementDelta returns the elements of cur missing from want and those of
// want missing from cur. A map element whose verdict changes is in both.
func ElementDelta(cur, want []Element) (removed, added []Element) {
	// Most sets are unchanged by an update and are rendered in the same
	// order every time: compare them in place before building any index.
	if SameElements(cur, want) {
		return nil, nil
	}
	if SortedElements(cur) && SortedElements(want) {
		return mergeDelta(cur, want)
	}
	have := make(map[string]struct{}, len(cur))
	for _, e := range cur {
		have[e.elementKey()] = struct{}{}
	}
	keep := make(map[string]struct{}, len(want))
	for _, e := range want {
		k := e.elementKey()
		keep[k] = struct{}{}
		if _, ok := have[k]; !ok {
			added = append(added, e)
		}
	}
	for _, e := range cur {
		if _, ok := keep[e.elementKey()]; !ok {
			removed = append(removed, e)
		}
	}
	return removed, added
}

// SameElements reports whether two element lists are equal in order,
// without allocating.
func SameElements(a, b []Element) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := &a[i], &b[i]
		if !bytes.Equal(x.Key, y.Key) || !bytes.Equal(x.KeyEnd, y.KeyEnd) || (x.Verdict == nil) != (y.Verdict == nil) ||
			(x.Verdict != nil && *x.Verdict != *y.Verdict) {
			return false
		}
	}
	return true
}

// CompareElements orders elements by key, then key end, then verdict.
func CompareElements(x, y *Element) int {
	if c := bytes.Compare(x.Key, y.Key); c != 0 {
		return c
	}
	if c := bytes.Compare(x.KeyEnd, y.KeyEnd); c != 0 {
		return c
	}
	switch {
	case x.Verdict == y.Verdict: // the same, or both nil
		return 0
	case x.Verdict == nil:
		return -1
	case y.Verdict == nil:
		return 1
	}
	// By kind, then chain: the order of their String forms (no kind is a
	// prefix of another), without making them.
	if c := strings.Compare(string(x.Verdict.Kind), string(y.Verdict.Kind)); c != 0 {
		return c
	}
	return strings.Compare(x.Verdict.Chain, y.Verdict.Chain)
}

// SortedElements reports whether elements are in strictly increasing order
// (the renderer's order, so the usual case).
func SortedElements(es []Element) bool {
	for i := 1; i < len(es); i++ {
		if CompareElements(&es[i-1], &es[i]) >= 0 {
			return false
		}
	}
	return true
}

// mergeDelta is elementDelta for two sorted lists, in one pass.
func mergeDelta(cur, want []Element) (removed, added []Element) {
	i, j := 0, 0
	for i < len(cur) && j < len(want) {
		switch c := CompareElements(&cur[i], &want[j]); {
		case c == 0:
			i++
			j++
		case c < 0:
			removed = append(removed, cur[i])
			i++
		default:
			added = append(added, want[j])
			j++
		}
	}
	removed = append(removed, cur[i:]...)
	added = append(added, want[j:]...)
	return removed, added
}

// maxLCSCells bounds the work of a rule-level chain diff; bigger chains
// are rewritten whole.
const maxLCSCells = 1 << 20

// RuleOps returns the rule changes that turn cur into want: deletions by
// handle of the rules that go, then each new rule inserted before the next
// kept rule (or appended), so kept rules never move. Without handles the
// chain is flushed and rewritten.
func RuleOps(chain string, cur, want []*Rule) []Op {
	if SameRules(cur, want) {
		return nil
	}
	appendAll := func(ops []Op) []Op {
		for _, r := range want {
			ops = append(ops, Op{Kind: OpAddRule, Name: chain, Rule: r})
		}
		return ops
	}
	if len(cur) == 0 {
		return appendAll(nil)
	}
	for _, r := range cur {
		if r.handle == 0 {
			return appendAll([]Op{{Kind: OpFlushChain, Name: chain}})
		}
	}
	if len(cur)*len(want) > maxLCSCells {
		return appendAll([]Op{{Kind: OpFlushChain, Name: chain}})
	}
	keptCur, keptWant := lcs(cur, want)
	var ops []Op
	for i, r := range cur {
		if !keptCur[i] {
			ops = append(ops, Op{Kind: OpDelRule, Name: chain, Handle: r.handle})
		}
	}
	// anchor[j] is the handle of the first kept rule at or after want[j].
	anchor := make([]uint64, len(want)+1)
	for j := len(want) - 1; j >= 0; j-- {
		anchor[j] = anchor[j+1]
		if keptWant[j] >= 0 {
			anchor[j] = cur[keptWant[j]].handle
		}
	}
	for j, r := range want {
		switch {
		case keptWant[j] >= 0:
		case anchor[j] != 0:
			ops = append(ops, Op{Kind: OpInsertRule, Name: chain, Rule: r, Handle: anchor[j]})
		default:
			ops = append(ops, Op{Kind: OpAddRule, Name: chain, Rule: r})
		}
	}
	return ops
}

func SameRules(a, b []*Rule) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] && a[i].ID() != b[i].ID() {
			return false
		}
	}
	return true
}

// lcs matches a longest common subsequence of rule ids: keptCur[i] reports
// whether cur[i] stays, keptWant[j] is the index in cur of want[j], or -1.
func lcs(cur, want []*Rule) (keptCur []bool, keptWant []int) {
	n, m := len(cur), len(want)
	l := make([][]int32, n+1)
	for i := range l {
		l[i] = make([]int32, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if cur[i].ID() == want[j].ID() {
				l[i][j] = l[i+1][j+1] + 1
			} else {
				l[i][j] = max(l[i+1][j], l[i][j+1])
			}
		}
	}
	keptCur = make([]bool, n)
	keptWant = make([]int, m)
	for j := range keptWant {
		keptWant[j] = -1
	}
	for i, j := 0, 0; i < n && j < m; {
		switch {
		case cur[i].ID() == want[j].ID():
			keptCur[i], keptWant[j] = true, i
			i++
			j++
		case l[i+1][j] >= l[i][j+1]:
			i++
		default:
			j++
		}
	}
	return keptCur, keptWant
}
