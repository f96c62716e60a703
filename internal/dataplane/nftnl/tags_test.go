package nftnl

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/dptest"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

// collidingNames returns two group names with the same tag, first < second.
func collidingNames(t testing.TB) (string, string) {
	seen := map[uint32]string{}
	for i := range 1 << 20 {
		name := fmt.Sprintf("group-%d", i)
		if other, ok := seen[render.GroupTag(name)]; ok {
			return min(name, other), max(name, other)
		}
		seen[render.GroupTag(name)] = name
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
			ingressRule("from-first", group(first), dptest.TCP(80)),
			ingressRule("from-second", group(second), dptest.TCP(81)),
		},
		groups: map[string]v1alpha1.AddressGroupSpec{first: topo.addrs("a"), second: topo.addrs("c")},
	}
	tab, err := render.Render(topo.spec(pol), pol.groups, render.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var sets []string
	for _, s := range tab.Sets {
		sets = append(sets, s.Name)
	}
	own4, own6 := render.GroupSetName(model.IPv4, false, second), render.GroupSetName(model.IPv6, false, second)
	for _, want := range []string{shared4(first), shared6(first), own4, own6} {
		if !slices.Contains(sets, want) {
			t.Errorf("sets %q lack %s", sets, want)
		}
	}
	if got, want := tab.Chain(render.RuleChainName("from-first")).Rules[0].String(), "tcp dport 80 "+tag(first)+" . ip saddr @"+shared4(first)+" accept"; got != want {
		t.Errorf("first group's rule %q, want %q", got, want)
	}
	if got, want := tab.Chain(render.RuleChainName("from-second")).Rules[0].String(), "tcp dport 81 ip saddr @"+own4+" accept"; got != want {
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

// TestShardedGroup: the shards of a group share the group's tag, so a rule
// referencing all of them has one line per family, and the shared set holds
// their members in order; packets from members of every shard pass.
func TestShardedGroup(t *testing.T) {
	topo := newTopology(t, "a", "b", "c")
	a, b, c := topo.pods["a"], topo.pods["b"], topo.pods["c"]
	const group = "ag-0123456789abcdef"
	s0, s1 := group+"-2-0", group+"-2-1"
	extra := func(n int, pods ...string) v1alpha1.AddressGroupSpec {
		g := topo.addrs(pods...)
		for i := range n {
			g.Addresses = append(g.Addresses, fmt.Sprintf("198.18.%d.%d", 100+n, i+1))
		}
		return g
	}
	pol := policy{
		ingress: map[string][]string{"b": {"from-group"}},
		rules:   []v1alpha1.Rule{ingressRule("from-group", []v1alpha1.Peer{{AddressGroup: s0}, {AddressGroup: s1}}, dptest.TCP(80))},
		groups:  map[string]v1alpha1.AddressGroupSpec{s0: extra(3, "a"), s1: extra(4, "c")},
	}
	tab, err := render.Render(topo.spec(pol), pol.groups, render.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, r := range tab.Chain(render.RuleChainName("from-group")).Rules {
		lines = append(lines, r.String())
	}
	want := []string{
		"tcp dport 80 " + tag(group) + " . ip saddr @" + shared4(group) + " accept",
		"tcp dport 80 " + tag(group) + " . ip6 saddr @" + shared6(group) + " accept",
	}
	if !slices.Equal(lines, want) {
		t.Fatalf("rule lines:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	set := tab.Set(shared4(group))
	if len(set.Elements) != 1+3+1+4 || !model.SortedElements(set.Elements) {
		t.Fatalf("%s: %s", set.Name, model.ElemsString(set.Kind, set.Elements))
	}
	p := programmer(t, topo.node)
	topo.apply(t, p, pol)
	check(t,
		tcpProbe("a->b (shard 0)", a.ns, b.ip4, 80, true),
		tcpProbe("c->b (shard 1)", c.ns, b.ip4, 80, true),
		tcpProbe("c->b6 (shard 1)", c.ns, b.ip6, 80, true),
		tcpProbe("c->b:81", c.ns, b.ip4, 81, false),
	)
	// A member leaves one shard: only that shard's element goes.
	pol.groups[s1] = extra(4)
	st := topo.apply(t, p, pol)
	if st.Changes.ElementsDeleted != 2 || st.Changes.ElementsAdded != 0 || st.Changes.RulesAdded != 0 {
		t.Fatalf("c leaving its shard sent %+v", st.Changes)
	}
	check(t, tcpProbe("c->b", c.ns, b.ip4, 80, false), tcpProbe("a->b", a.ns, b.ip4, 80, true))

	// A rule that references one shard only (not what the controller
	// writes, but a rule set may say it): the shards then keep tags of
	// their own, and that rule matches its shard's members alone.
	pol.groups[s1] = extra(4, "c")
	pol.rules = append(pol.rules, ingressRule("from-shard-1", []v1alpha1.Peer{{AddressGroup: s1}}, dptest.TCP(81)))
	pol.ingress["b"] = []string{"from-group", "from-shard-1"}
	topo.apply(t, p, pol)
	if n := len(p.applied.Chain(render.RuleChainName("from-group")).Rules); n != 4 {
		t.Errorf("from-group has %d lines, want one per shard and family", n)
	}
	check(t,
		tcpProbe("a->b:80", a.ns, b.ip4, 80, true),
		tcpProbe("c->b:80", c.ns, b.ip4, 80, true),
		tcpProbe("c->b:81", c.ns, b.ip4, 81, true),
		tcpProbe("a->b:81 (shard 0)", a.ns, b.ip4, 81, false),
		tcpProbe("a->b6:81 (shard 0)", a.ns, b.ip6, 81, false),
	)
}
