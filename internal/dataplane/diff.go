package dataplane

import (
	"bytes"
	"fmt"
	"strings"
)

// opKind is one kind of change in a netlink batch.
type opKind int

const (
	opAddTable opKind = iota
	opFlushTable
	opAddChain
	opFlushChain
	opDelChain
	opAddSet
	opFlushSet
	opDelSet
	opDelElements
	opAddElements
	opDelRule
	opInsertRule
	opAddRule
)

// op is one change. Which fields are set depends on kind.
type op struct {
	kind opKind
	// name is the chain or set the op applies to.
	name string
	// chain is the definition of an added chain.
	chain *Chain
	// set is the definition of an added set (its elements are added with
	// it), or the set whose elements change.
	set   *Set
	elems []Element
	// rule is an added rule; handle is the rule deleted, or the rule an
	// inserted rule goes before.
	rule   *Rule
	handle uint64
	// capacity is the size an added set is declared with (0: none).
	capacity uint32
}

// plan is an ordered list of changes that turns one table into another.
// Executed in order in one transaction, every reference (a rule to a set or
// chain, a map element to a chain) is created before and removed after its
// users:
//
//	add table; [rebuild: flush table, empty maps, delete mismatched and
//	unwanted sets and chains]; add chains; add sets with elements; delete
//	elements; refill interval sets; add elements; delete, insert and append
//	rules; flush unwanted chains; delete unwanted sets; delete unwanted chains.
type plan struct {
	ops []op
	// rebuild is set when the kernel held objects of a shape nftguard does
	// not write (a set of another type, a chain with another hook), or a
	// shared set too small for the change: every rule is then rewritten,
	// still in one transaction.
	rebuild bool
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

func (p *plan) changes() Changes {
	var c Changes
	for _, o := range p.ops {
		switch o.kind {
		case opAddChain:
			c.ChainsAdded++
		case opDelChain:
			c.ChainsDeleted++
		case opAddRule, opInsertRule:
			c.RulesAdded++
		case opDelRule:
			c.RulesDeleted++
		case opAddSet:
			c.SetsAdded++
			c.ElementsAdded += len(o.set.Elements)
		case opDelSet:
			c.SetsDeleted++
		case opAddElements:
			c.ElementsAdded += len(o.elems)
		case opDelElements:
			c.ElementsDeleted += len(o.elems)
		case opFlushChain, opFlushSet, opFlushTable:
			c.Flushes++
		}
	}
	return c
}

// String prints the plan, one change a line, in nft syntax (element lists
// abridged).
func (p *plan) String() string {
	var b strings.Builder
	for _, o := range p.ops {
		b.WriteString(o.String())
		b.WriteByte('\n')
	}
	return b.String()
}

func (o op) String() string {
	switch o.kind {
	case opAddTable:
		return "add table inet " + TableName
	case opFlushTable:
		return "flush table inet " + TableName
	case opAddChain:
		if o.chain.IsBase() {
			return fmt.Sprintf("add chain %s { type filter hook %s priority %d; policy accept; }", o.name, o.chain.Hook, o.chain.Priority)
		}
		return "add chain " + o.name
	case opFlushChain:
		return "flush chain " + o.name
	case opDelChain:
		return "delete chain " + o.name
	case opAddSet:
		s := fmt.Sprintf("add set %s { type %s; }", o.name, o.set.Kind)
		if len(o.set.Elements) > 0 {
			s += " " + elemsString(o.set.Kind, o.set.Elements)
		}
		return s
	case opFlushSet:
		return "flush set " + o.name
	case opDelSet:
		return "delete set " + o.name
	case opAddElements:
		return "add element " + o.name + " " + elemsString(o.set.Kind, o.elems)
	case opDelElements:
		return "delete element " + o.name + " " + elemsString(o.set.Kind, o.elems)
	case opAddRule:
		return "add rule " + o.name + " " + o.rule.String()
	case opInsertRule:
		return fmt.Sprintf("insert rule %s position %d %s", o.name, o.handle, o.rule.String())
	case opDelRule:
		return fmt.Sprintf("delete rule %s handle %d", o.name, o.handle)
	}
	return fmt.Sprintf("op %d", o.kind)
}

func elemsString(k SetKind, es []Element) string {
	const show = 4
	parts := make([]string, 0, show+1)
	for i, e := range es {
		if i == show {
			parts = append(parts, fmt.Sprintf("... (%d elements)", len(es)))
			break
		}
		parts = append(parts, k.format(e))
	}
	return "{ " + strings.Join(parts, ", ") + " }"
}

// diff plans the changes that turn cur into want. cur is what the kernel
// holds (nil: no table), as last applied or as read back; rules of cur
// chains that differ from want need their kernel handles (a chain whose
// rules lack them is rewritten whole).
func diff(cur, want *Table) *plan { return diffSized(cur, want, nil) }

// diffSized is diff for the Programmer, which declares the size of the
// shared sets (see setCapacity): capacity returns the size a set of cur was
// created with (0: none). A set too small for its change is replaced, which
// rewrites every rule (in the same transaction); it happens each time a
// shared set outgrows the double of its size when it was made.
func diffSized(cur, want *Table, capacity func(name string) uint32) *plan {
	p := &plan{}
	if cur == nil {
		p.ops = append(p.ops, op{kind: opAddTable})
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
		if k := curChains[c.Name]; k != nil && k.signature() != c.signature() {
			p.rebuild = true
		}
	}
	var small map[string]bool
	var deltas map[string][2][]Element // of sized sets, computed once
	for _, s := range want.Sets {
		k := curSets[s.Name]
		if k == nil {
			continue
		}
		if k.Kind != s.Kind || k.sig != "" {
			p.rebuild = true
		}
		if capacity == nil || !s.Kind.sized() || k == s {
			continue
		}
		c := capacity(k.Name)
		if c == 0 {
			continue
		}
		// The set holds its old elements and the added ones together at
		// some point (when a large change is split, additions are
		// committed before removals).
		removed, added := elementDelta(k.Elements, s.Elements)
		if deltas == nil {
			deltas = map[string][2][]Element{}
		}
		deltas[s.Name] = [2][]Element{removed, added}
		if len(k.Elements)+len(added) > int(c) {
			if small == nil {
				small = map[string]bool{}
			}
			small[s.Name] = true
			p.rebuild = true
		}
	}
	if p.rebuild {
		p.ops = append(p.ops, op{kind: opFlushTable})
		for _, k := range cur.Sets {
			s := wantSets[k.Name]
			switch {
			case s == nil || s.Kind != k.Kind || k.sig != "" || small[k.Name]:
				p.ops = append(p.ops, op{kind: opDelSet, name: k.Name})
				delete(curSets, k.Name)
			case k.Kind.IsMap() && len(k.Elements) > 0:
				// Its elements may point at chains deleted below.
				p.ops = append(p.ops, op{kind: opFlushSet, name: k.Name, set: k})
				curSets[k.Name] = &Set{Name: k.Name, Kind: k.Kind}
			}
		}
		for _, k := range cur.Chains {
			if c := wantChains[k.Name]; c == nil || c.signature() != k.signature() {
				p.ops = append(p.ops, op{kind: opDelChain, name: k.Name})
				delete(curChains, k.Name)
			} else {
				curChains[k.Name] = &Chain{Name: k.Name, Hook: k.Hook, Priority: k.Priority, sig: k.sig}
			}
		}
	}

	for _, c := range want.Chains {
		if curChains[c.Name] == nil {
			p.ops = append(p.ops, op{kind: opAddChain, name: c.Name, chain: c})
		}
	}
	for _, s := range want.Sets {
		if curSets[s.Name] == nil {
			o := op{kind: opAddSet, name: s.Name, set: s}
			if capacity != nil && s.Kind.sized() {
				o.capacity = setCapacity(len(s.Elements))
			}
			p.ops = append(p.ops, o)
		}
	}
	var dels, refills, adds []op
	for _, s := range want.Sets {
		k := curSets[s.Name]
		if k == nil || k == s {
			// New, or the very set applied last time (a Renderer reuses
			// the sets of unchanged groups).
			continue
		}
		var removed, added []Element
		if d, ok := deltas[s.Name]; ok {
			removed, added = d[0], d[1]
		} else {
			removed, added = elementDelta(k.Elements, s.Elements)
		}
		switch {
		case len(removed) == 0 && len(added) == 0:
		case s.Kind.isRBTree():
			// Intervals are rewritten whole: start and end elements
			// of neighbouring ranges must never be half updated.
			refills = append(refills, op{kind: opFlushSet, name: s.Name, set: s})
			if len(s.Elements) > 0 {
				refills = append(refills, op{kind: opAddElements, name: s.Name, set: s, elems: s.Elements})
			}
		default:
			if len(removed) > 0 {
				dels = append(dels, op{kind: opDelElements, name: s.Name, set: s, elems: removed})
			}
			if len(added) > 0 {
				adds = append(adds, op{kind: opAddElements, name: s.Name, set: s, elems: added})
			}
		}
	}
	p.ops = append(p.ops, dels...)
	p.ops = append(p.ops, refills...)
	p.ops = append(p.ops, adds...)

	for _, c := range want.Chains {
		var rules []*Rule
		if k := curChains[c.Name]; k != nil {
			if k == c {
				continue
			}
			rules = k.Rules
		}
		p.ops = append(p.ops, ruleOps(c.Name, rules, c.Rules)...)
	}

	var unwanted []string
	for _, k := range cur.Chains {
		if curChains[k.Name] != nil && wantChains[k.Name] == nil {
			unwanted = append(unwanted, k.Name)
			p.ops = append(p.ops, op{kind: opFlushChain, name: k.Name})
		}
	}
	for _, k := range cur.Sets {
		if curSets[k.Name] != nil && wantSets[k.Name] == nil {
			p.ops = append(p.ops, op{kind: opDelSet, name: k.Name})
		}
	}
	for _, name := range unwanted {
		p.ops = append(p.ops, op{kind: opDelChain, name: name})
	}
	return p
}

// elementDelta returns the elements of cur missing from want and those of
// want missing from cur. A map element whose verdict changes is in both.
func elementDelta(cur, want []Element) (removed, added []Element) {
	// Most sets are unchanged by an update and are rendered in the same
	// order every time: compare them in place before building any index.
	if sameElements(cur, want) {
		return nil, nil
	}
	if sortedElements(cur) && sortedElements(want) {
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

// sameElements reports whether two element lists are equal in order,
// without allocating.
func sameElements(a, b []Element) bool {
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

// compareElements orders elements by key, then key end, then verdict.
func compareElements(x, y *Element) int {
	if c := bytes.Compare(x.Key, y.Key); c != 0 {
		return c
	}
	if c := bytes.Compare(x.KeyEnd, y.KeyEnd); c != 0 {
		return c
	}
	switch {
	case x.Verdict == nil && y.Verdict == nil:
		return 0
	case x.Verdict == nil:
		return -1
	case y.Verdict == nil:
		return 1
	}
	return strings.Compare(x.Verdict.String(), y.Verdict.String())
}

// sortedElements reports whether elements are in strictly increasing order
// (the renderer's order, so the usual case).
func sortedElements(es []Element) bool {
	for i := 1; i < len(es); i++ {
		if compareElements(&es[i-1], &es[i]) >= 0 {
			return false
		}
	}
	return true
}

// mergeDelta is elementDelta for two sorted lists, in one pass.
func mergeDelta(cur, want []Element) (removed, added []Element) {
	i, j := 0, 0
	for i < len(cur) && j < len(want) {
		switch c := compareElements(&cur[i], &want[j]); {
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

// ruleOps returns the rule changes that turn cur into want: deletions by
// handle of the rules that go, then each new rule inserted before the next
// kept rule (or appended), so kept rules never move. Without handles the
// chain is flushed and rewritten.
func ruleOps(chain string, cur, want []*Rule) []op {
	if sameRules(cur, want) {
		return nil
	}
	appendAll := func(ops []op) []op {
		for _, r := range want {
			ops = append(ops, op{kind: opAddRule, name: chain, rule: r})
		}
		return ops
	}
	if len(cur) == 0 {
		return appendAll(nil)
	}
	for _, r := range cur {
		if r.handle == 0 {
			return appendAll([]op{{kind: opFlushChain, name: chain}})
		}
	}
	if len(cur)*len(want) > maxLCSCells {
		return appendAll([]op{{kind: opFlushChain, name: chain}})
	}
	keptCur, keptWant := lcs(cur, want)
	var ops []op
	for i, r := range cur {
		if !keptCur[i] {
			ops = append(ops, op{kind: opDelRule, name: chain, handle: r.handle})
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
			ops = append(ops, op{kind: opInsertRule, name: chain, rule: r, handle: anchor[j]})
		default:
			ops = append(ops, op{kind: opAddRule, name: chain, rule: r})
		}
	}
	return ops
}

func sameRules(a, b []*Rule) bool {
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
