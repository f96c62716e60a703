package dataplane

import (
	"fmt"
	"slices"
	"testing"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
)

// collidingNames returns two group names with the same tag, first < second.
func collidingNames(t testing.TB) (string, string) {
	seen := map[uint32]string{}
	for i := range 1 << 20 {
		name := fmt.Sprintf("group-%d", i)
		if other, ok := seen[groupTag(name)]; ok {
			return min(name, other), max(name, other)
		}
		seen[groupTag(name)] = name
	}
	t.Fatal("no two names with the same tag")
	return "", ""
}

// TestTagCollision: of two groups whose names hash to the same tag, the
// first by name goes in the shared sets and the other gets sets of its
// own, so that neither matches the other's members; packets show it.
func TestTagCollision(t *testing.T) {
	first, second := collidingNames(t)
	topo := newTopology(t, "a", "b", "c")
	a, b, c := topo.pods["a"], topo.pods["b"], topo.pods["c"]
	pol := policy{
		ingress: map[string][]string{"b": {"from-first", "from-second"}},
		rules: []v1alpha1.Rule{
			ingressRule("from-first", group(first), tcpPort(80)),
			ingressRule("from-second", group(second), tcpPort(81)),
		},
		groups: map[string]v1alpha1.AddressGroupSpec{first: topo.addrs("a"), second: topo.addrs("c")},
	}
	tab, err := Render(topo.spec(pol), pol.groups, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var sets []string
	for _, s := range tab.Sets {
		sets = append(sets, s.Name)
	}
	own4, own6 := groupSetName(ipv4, false, second), groupSetName(ipv6, false, second)
	for _, want := range []string{shared4(first), shared6(first), own4, own6} {
		if !slices.Contains(sets, want) {
			t.Errorf("sets %q lack %s", sets, want)
		}
	}
	if got, want := tab.Chain(ruleChainName("from-first")).Rules[0].String(), "tcp dport 80 "+tag(first)+" . ip saddr @"+shared4(first)+" accept"; got != want {
		t.Errorf("first group's rule %q, want %q", got, want)
	}
	if got, want := tab.Chain(ruleChainName("from-second")).Rules[0].String(), "tcp dport 81 ip saddr @"+own4+" accept"; got != want {
		t.Errorf("second group's rule %q, want %q", got, want)
	}
	if n := len(tab.Set(shared4(first)).Elements); n != 1 {
		t.Errorf("%s holds %d elements, want only the first group's", shared4(first), n)
	}

	p := programmer(t, topo.node)
	topo.apply(t, p, pol)
	check(t,
		tcpProbe("a->b:80", a.ns, b.ip4, 80, true),
		tcpProbe("a->b6:80", a.ns, b.ip6, 80, true),
		tcpProbe("a->b:81", a.ns, b.ip4, 81, false),
		tcpProbe("c->b:81", c.ns, b.ip4, 81, true),
		tcpProbe("c->b6:81", c.ns, b.ip6, 81, true),
		tcpProbe("c->b:80", c.ns, b.ip4, 80, false),
	)

	// Without the first group, the second takes the tag and joins the
	// shared sets, in one transaction.
	delete(pol.groups, first)
	pol.rules = pol.rules[1:]
	pol.ingress["b"] = []string{"from-second"}
	st := topo.apply(t, p, pol)
	if st.Transactions != 1 || p.applied.Set(own4) != nil {
		t.Fatalf("after the first group went: %+v, own set %v", st, p.applied.Set(own4))
	}
	check(t, tcpProbe("c->b:81", c.ns, b.ip4, 81, true), tcpProbe("a->b:80", a.ns, b.ip4, 80, false))
}
