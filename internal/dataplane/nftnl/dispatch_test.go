package nftnl

import (
	"slices"
	"testing"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

// TestPortDispatch: a pod direction with dispatchMin rules or more that name
// ports dispatches on the destination port through a map of disjoint port
// segments, each jumping to the rules allowing it; rules for every port are
// walked after. Real packets check overlapping ranges, protocols and an
// every-port rule, through changes and back to the plain layout.
func TestPortDispatch(t *testing.T) {
	topo := newTopology(t, "a", "b", "c")
	a, b, c := topo.pods["a"], topo.pods["b"], topo.pods["c"]
	port := func(proto v1alpha1.Protocol, from, to int32) v1alpha1.Port {
		p := v1alpha1.Port{Protocol: proto, Port: from}
		if to != from {
			p.EndPort = to
		}
		return p
	}
	tcp, udp := v1alpha1.ProtocolTCP, v1alpha1.ProtocolUDP
	rules := []v1alpha1.Rule{
		ingressRule("c6-any", []v1alpha1.Peer{{IPBlock: &v1alpha1.IPBlock{CIDR: c.ip6.String() + "/128"}}}),
		ingressRule("a-80", group("pods-a"), port(tcp, 80, 80)),
		ingressRule("c-81", group("pods-c"), port(tcp, 81, 81)),
		ingressRule("a-8000", group("pods-a"), port(tcp, 8000, 8100)),
		ingressRule("c-udp80", group("pods-c"), port(udp, 80, 80)),
		ingressRule("a-9000", group("pods-a"), port(tcp, 9000, 9000)),
		ingressRule("c-79", group("pods-c"), port(tcp, 79, 81)),
		ingressRule("a-udp8080", group("pods-a"), port(udp, 8080, 8080)),
		ingressRule("a-sctp", group("pods-a"), port(v1alpha1.ProtocolSCTP, 80, 80)),
	}
	ids := func(rs []v1alpha1.Rule) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return out
	}
	pol := policy{
		ingress: map[string][]string{"b": ids(rules)},
		rules:   rules,
		groups:  map[string]v1alpha1.AddressGroupSpec{"pods-a": topo.addrs("a"), "pods-c": topo.addrs("c")},
	}
	p := programmer(t, topo.node)
	topo.apply(t, p, pol)
	tab := p.applied
	m := tab.Set(render.PodPortMapName("in", "x", "b"))
	if m == nil || m.Kind != model.MapPortsVerdict {
		t.Fatalf("no port map for x/b in\n%s", tab)
	}
	// tcp 79, 80, 81, 8000-8100, 9000; udp 80, 8080; sctp 80.
	var segs []string
	for _, e := range m.Elements {
		segs = append(segs, model.MapPortsVerdict.Format(e))
	}
	if len(segs) != 8 {
		t.Errorf("segments:\n%v", segs)
	}
	pod := tab.Chain(render.PodChainName("in", "x", "b"))
	// After the invalid-state drop and the pod's two self-accept rules
	// (hairpin through a Service).
	if got := pod.Rules[3].String(); got != "meta l4proto . th dport vmap @"+m.Name {
		t.Errorf("pod chain dispatches with %q", got)
	}
	if got := pod.Rules[4].String(); got != "jump "+render.RuleChainName("c6-any") {
		t.Errorf("then %q, want the jump to the every-port rule", got)
	}
	allowed := func() []expect {
		return []expect{
			tcpProbe("a->b:80", a.ns, b.ip4, 80, true),
			tcpProbe("a->b:81", a.ns, b.ip4, 81, false),
			tcpProbe("a->b:8080", a.ns, b.ip4, 8080, true),
			udpProbe("a->b:80", a.ns, b.ip4, 80, false),
			udpProbe("a->b:8080", a.ns, b.ip4, 8080, true),
			tcpProbe("c->b:80", c.ns, b.ip4, 80, true),
			tcpProbe("c->b:81", c.ns, b.ip4, 81, true),
			tcpProbe("c->b:8080", c.ns, b.ip4, 8080, false),
			udpProbe("c->b:80", c.ns, b.ip4, 80, true),
			udpProbe("c->b:8080", c.ns, b.ip4, 8080, false),
			tcpProbe("c->b6:8080 (every port)", c.ns, b.ip6, 8080, true),
			tcpProbe("a->b6:81", a.ns, b.ip6, 81, false),
		}
	}
	check(t, allowed()...)

	// Without a-8000, tcp 8080 from a is refused; segments follow.
	pol.rules = slices.DeleteFunc(slices.Clone(rules), func(r v1alpha1.Rule) bool { return r.ID == "a-8000" })
	pol.ingress["b"] = ids(pol.rules)
	topo.apply(t, p, pol)
	probes := allowed()
	probes[2] = tcpProbe("a->b:8080", a.ns, b.ip4, 8080, false)
	check(t, probes...)

	// Below dispatchMin rules with ports, the pod walks its rules again.
	pol.rules = pol.rules[:render.DispatchMin-1]
	pol.ingress["b"] = ids(pol.rules)
	topo.apply(t, p, pol)
	if s := p.applied.Set(render.PodPortMapName("in", "x", "b")); s != nil {
		t.Fatalf("port map kept with %d rules with ports", len(pol.rules)-1)
	}
	check(t,
		tcpProbe("a->b:80", a.ns, b.ip4, 80, true),
		tcpProbe("c->b:81", c.ns, b.ip4, 81, true),
		udpProbe("c->b:80", c.ns, b.ip4, 80, true),
		udpProbe("a->b:8080", a.ns, b.ip4, 8080, true),
		tcpProbe("a->b:8080", a.ns, b.ip4, 8080, false),
		tcpProbe("a->b:81", a.ns, b.ip4, 81, false),
	)
}
