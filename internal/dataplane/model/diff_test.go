package model

import (
	"strings"
	"testing"
	"weak"
)

func planText(p *Plan) string { return strings.TrimSpace(p.String()) }

func elems(addrs ...byte) []Element {
	var out []Element
	for _, a := range addrs {
		out = append(out, Element{Key: []byte{198, 18, 0, a}})
	}
	return out
}

// coOwnedTable is a table with a chain matching a co-owned set.
func coOwnedTable(ready []Element, hook Hook) *Table {
	return &Table{
		Sets: []*Set{
			{Name: "peers", Kind: SetIPv4, Elements: elems(9)},
			{Name: "ready4", Kind: SetIPv4, CoOwned: true, Elements: ready},
			{Name: "readymap", Kind: MapIPv4Verdict, CoOwned: true, Elements: []Element{
				{Key: []byte{198, 18, 0, 7}, Verdict: &Verdict{Kind: VerdictAccept}}}},
		},
		Chains: []*Chain{{Name: "egress-forward", Hook: hook, Rules: []*Rule{
			NewRule(AddrInSet{Family: IPv4, Field: Saddr, Set: "ready4"}, Verdict{Kind: VerdictAccept}),
		}}},
	}
}

// kernelCopy returns t as the decoder would read it back: other objects,
// with the kernel's chain signatures.
func kernelCopy(t *Table, ready []Element) *Table {
	out := &Table{}
	for _, s := range t.Sets {
		c := *s
		c.CoOwned = false // the kernel does not know who owns a set
		if s.Name == "ready4" {
			c.Elements = ready
		}
		out.Sets = append(out.Sets, &c)
	}
	for _, ch := range t.Chains {
		c := *ch
		c.KernelSig = c.Signature()
		var rules []*Rule
		for i, r := range ch.Rules {
			rules = append(rules, KernelRule(r.Stmts, r.ID(), uint64(i+1)))
		}
		c.Rules = rules
		out.Chains = append(out.Chains, &c)
	}
	return out
}

// TestCoOwnedSet: a co-owned set is created when missing, with the
// declared elements; afterwards its elements are the other writer's, and
// neither a diff, a drift check nor a rebuild touches them.
func TestCoOwnedSet(t *testing.T) {
	want := coOwnedTable(elems(1), HookForward)

	created := Diff(nil, want)
	if !strings.Contains(planText(created), "add set ready4 { type ipv4_addr; } { 198.18.0.1 }") {
		t.Fatalf("missing co-owned set not created with its elements:\n%s", planText(created))
	}

	// The other writer added two addresses and removed the first.
	kernel := kernelCopy(want, elems(2, 3))
	if p := Diff(kernel, want); len(p.Ops) != 0 {
		t.Fatalf("the other writer's elements changed the plan:\n%s", planText(p))
	}

	// nftguard's own set still converges.
	changed := coOwnedTable(elems(1), HookForward)
	changed.Sets[0] = &Set{Name: "peers", Kind: SetIPv4, Elements: elems(8)}
	if got := planText(Diff(kernel, changed)); got != "delete element peers { 198.18.0.9 }\nadd element peers { 198.18.0.8 }" {
		t.Fatalf("plan:\n%s", got)
	}

	// A chain of the wrong shape rebuilds the table; the co-owned set is
	// neither flushed nor deleted.
	rebuild := Diff(kernelCopy(coOwnedTable(nil, HookInput), elems(2, 3)), want)
	if !rebuild.Rebuild {
		t.Fatalf("no rebuild:\n%s", planText(rebuild))
	}
	for _, o := range rebuild.Ops {
		if o.Name == "ready4" || o.Name == "readymap" {
			t.Errorf("rebuild touches the co-owned set: %s", o)
		}
	}

	// Declared as not co-owned, the same set would be converged.
	own := coOwnedTable(elems(1), HookForward)
	own.Sets[1].CoOwned = false
	if got := planText(Diff(kernel, own)); !strings.Contains(got, "delete element ready4") || !strings.Contains(got, "add element ready4 { 198.18.0.1 }") {
		t.Fatalf("an owned set was not converged:\n%s", got)
	}

	// Of the wrong kind, it is replaced: it could not be used as declared.
	wrong := kernelCopy(want, nil)
	wrong.Sets[1] = &Set{Name: "ready4", Kind: SetIPv4Interval}
	replaced := Diff(wrong, want)
	if got := planText(replaced); !replaced.Rebuild || !strings.Contains(got, "delete set ready4") || !strings.Contains(got, "add set ready4") {
		t.Fatalf("a co-owned set of the wrong kind was kept:\n%s", got)
	}
}

// TestDiffTakesTheSetsDelta checks that a diff takes the changes of a set
// made from the applied one from the set (SetDelta), and compares the
// elements when the applied set is another, even an equal copy.
func TestDiffTakesTheSetsDelta(t *testing.T) {
	jump := func(chain string) *Verdict { return &Verdict{Kind: VerdictJump, Chain: chain} }
	el := func(a byte, chain string) Element { return Element{Key: []byte{198, 18, 0, a}, Verdict: jump(chain)} }
	chains := []*Chain{{Name: "a"}, {Name: "b"}}
	applied := &Table{Chains: chains, Sets: []*Set{{Name: "m", Kind: MapIPv4Verdict, Elements: []Element{el(1, "a"), el(2, "a"), el(3, "a")}}}}
	// 2 moves to b, 3 goes, 4 comes; the delta says so.
	want := &Table{Chains: chains, Sets: []*Set{{Name: "m", Kind: MapIPv4Verdict,
		Elements: []Element{el(1, "a"), el(2, "b"), el(4, "a")},
		Delta: &SetDelta{Base: weak.Make(applied.Sets[0]),
			Removed: []Element{el(2, "a"), el(3, "a")}, Added: []Element{el(2, "b"), el(4, "a")}}}}}
	compared := planText(Diff(applied, &Table{Chains: chains, Sets: []*Set{{Name: "m", Kind: MapIPv4Verdict, Elements: want.Sets[0].Elements}}}))
	if got := planText(Diff(applied, want)); got != compared {
		t.Fatalf("with the delta:\n%s\nby comparison:\n%s", got, compared)
	}
	if !strings.Contains(compared, "198.18.0.3") || !strings.Contains(compared, "jump b") {
		t.Fatalf("the comparison misses a change:\n%s", compared)
	}

	// The diff takes the delta as it is: one that names nothing is an
	// empty plan against its base...
	want.Sets[0].Delta = &SetDelta{Base: weak.Make(applied.Sets[0])}
	if got := planText(Diff(applied, want)); got != "" {
		t.Fatalf("a delta of nothing from the applied set gave\n%s", got)
	}
	// ...and is ignored against any other set.
	c := *applied.Sets[0]
	other := &Table{Chains: chains, Sets: []*Set{&c}}
	if got := planText(Diff(other, want)); got != compared {
		t.Fatalf("against a copy of the base:\n%s\nby comparison:\n%s", got, compared)
	}
}
