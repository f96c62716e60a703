package dataplane

import (
	"strings"
	"testing"
)

// previousLayout is the table an agent of the first release wrote for
// basePolicy with members "a": a set per group and family, and rule lines
// that match the peer set before the port.
func previousLayout(topo *topology) *Table {
	a, b := topo.pods["a"], topo.pods["b"]
	accept := verdict{Kind: VerdictAccept}
	return &Table{
		Sets: []*Set{
			{Name: "ag4-pods-a", Kind: SetIPv4, Elements: []Element{{Key: a.ip4.AsSlice()}}},
			{Name: "ag6-pods-a", Kind: SetIPv6, Elements: []Element{{Key: a.ip6.AsSlice()}}},
			{Name: MapEgress4, Kind: MapIPv4Verdict},
			{Name: MapEgress6, Kind: MapIPv6Verdict},
			{Name: MapIngress4, Kind: MapIPv4Verdict, Elements: []Element{{Key: b.ip4.AsSlice(), Verdict: &Verdict{Kind: VerdictGoto, Chain: "in-x.b"}}}},
			{Name: MapIngress6, Kind: MapIPv6Verdict, Elements: []Element{{Key: b.ip6.AsSlice(), Verdict: &Verdict{Kind: VerdictGoto, Chain: "in-x.b"}}}},
		},
		Chains: append(baseChains(),
			&Chain{Name: "in-x.b", Rules: []*Rule{
				rule(verdict{Kind: VerdictJump, Chain: "rule-from-a"}),
				rule(limitRate{DefaultLogRate, DefaultLogBurst}, nflog{"nftguard:drop:in:" + PodKey("x", "b"), DefaultLogGroup}),
				rule(verdict{Kind: VerdictDrop}),
			}},
			&Chain{Name: "rule-from-a", Rules: []*Rule{
				rule(addrInSet{ipv4, saddr, "ag4-pods-a"}, dportIn{protoTCP, 80, 80}, accept),
				rule(addrInSet{ipv6, saddr, "ag6-pods-a"}, dportIn{protoTCP, 80, 80}, accept),
			}},
		),
	}
}

// TestUpgradeFromPreviousLayout: an agent finding the table of the first
// release's layout rewrites it to the current one in one transaction,
// while an established connection keeps working and a blocked flow never
// gets through.
func TestUpgradeFromPreviousLayout(t *testing.T) {
	topo := newTopology(t, "a", "b", "c")
	a, b, c := topo.pods["a"], topo.pods["b"], topo.pods["c"]
	old := programmer(t, topo.node)
	if _, err := old.Apply(previousLayout(topo)); err != nil {
		t.Fatal(err)
	}
	old.Close()
	check(t, tcpProbe("a->b (previous layout)", a.ns, b.ip4, 80, true), tcpProbe("c->b (previous layout)", c.ns, b.ip4, 80, false))
	conn := dialIn(t, a.ns, b.ip4, 80)
	echo(t, conn, "before")
	leaks := probeLoop(t, c.ns, b.ip4, 80)

	fresh := programmer(t, topo.node)
	st := topo.apply(t, fresh, basePolicy(topo, "a"))
	if !st.Full || st.Transactions != 1 {
		t.Fatalf("upgrade: %+v\n%s", st, fresh.lastPlan)
	}
	plan := fresh.lastPlan.String()
	for _, want := range []string{"delete set ag4-pods-a", "delete set ag6-pods-a", "add set " + shared4("pods-a")} {
		if !strings.Contains(plan, want) {
			t.Errorf("upgrade plan lacks %q:\n%s", want, plan)
		}
	}
	echo(t, conn, "after")
	if n := leaks(); n > 0 {
		t.Fatalf("blocked flow c->b got through %d times during the upgrade", n)
	}
	assertInSync(t, fresh)
	check(t, tcpProbe("a->b", a.ns, b.ip4, 80, true), tcpProbe("a->b6", a.ns, b.ip6, 80, true), tcpProbe("c->b", c.ns, b.ip4, 80, false))
}
