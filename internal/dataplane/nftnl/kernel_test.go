package nftnl

import (
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/dptest"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

// policy describes the isolation of the test pods: pod name -> rule ids of
// each isolated direction (a present key isolates, even with no rules).
type policy struct {
	ingress, egress map[string][]string
	audit           map[string]bool
	rules           []v1alpha1.Rule
	groups          map[string]v1alpha1.AddressGroupSpec
}

// namespaceOf puts a and b in namespace x, the others in y.
func namespaceOf(pod string) string {
	if pod == "a" || pod == "b" {
		return "x"
	}
	return "y"
}

func (topo *topology) spec(pol policy) v1alpha1.NodeRuleSetSpec {
	var spec v1alpha1.NodeRuleSetSpec
	for _, name := range []string{"a", "b", "c"} {
		p := topo.pods[name]
		if p == nil {
			continue
		}
		lp := v1alpha1.LocalPod{Namespace: namespaceOf(name), Name: name, IPs: []string{p.ip4.String(), p.ip6.String()}}
		mode := v1alpha1.IsolationEnforce
		if pol.audit[name] {
			mode = v1alpha1.IsolationAudit
		}
		if ids, ok := pol.ingress[name]; ok {
			lp.Ingress = &v1alpha1.Isolation{Mode: mode, Policies: []string{"NetworkPolicy/test/p"}, Rules: ids}
		}
		if ids, ok := pol.egress[name]; ok {
			lp.Egress = &v1alpha1.Isolation{Mode: mode, Policies: []string{"NetworkPolicy/test/p"}, Rules: ids}
		}
		spec.Pods = append(spec.Pods, lp)
	}
	spec.Rules = pol.rules
	for g := range pol.groups {
		spec.AddressGroups = append(spec.AddressGroups, g)
	}
	return spec
}

// addrs returns the IPv4 and IPv6 addresses of pods, as an address group.
func (topo *topology) addrs(pods ...string) v1alpha1.AddressGroupSpec {
	var g v1alpha1.AddressGroupSpec
	for _, p := range pods {
		g.Addresses = append(g.Addresses, topo.pods[p].ip4.String(), topo.pods[p].ip6.String())
	}
	return g
}

func (topo *topology) apply(t testing.TB, p *Programmer, pol policy) Stats {
	t.Helper()
	return applySpec(t, p, topo.spec(pol), pol.groups)
}

// applySpec renders a rule set, applies it and checks the table is in sync.
func applySpec(t testing.TB, p *Programmer, spec v1alpha1.NodeRuleSetSpec, groups map[string]v1alpha1.AddressGroupSpec) Stats {
	t.Helper()
	st, err := p.Apply(mustRender(t, spec, groups))
	if err != nil {
		t.Fatal(err)
	}
	assertInSync(t, p)
	return st
}

func ingressRule(id string, peers []v1alpha1.Peer, ports ...v1alpha1.Port) v1alpha1.Rule {
	return v1alpha1.Rule{ID: id, Direction: v1alpha1.DirectionIngress, Peers: peers, Ports: ports}
}

func egressRule(id string, peers []v1alpha1.Peer, ports ...v1alpha1.Port) v1alpha1.Rule {
	return v1alpha1.Rule{ID: id, Direction: v1alpha1.DirectionEgress, Peers: peers, Ports: ports}
}

func group(name string) []v1alpha1.Peer { return []v1alpha1.Peer{{AddressGroup: name}} }

// flushNeighbours empties the neighbour caches of ns, so that the next
// packets need ARP and neighbour discovery again.
func flushNeighbours(t testing.TB, ns netns.NsHandle) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := h.NeighList(0, fam)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range ns {
			if n.State&(netlink.NUD_NOARP|netlink.NUD_PERMANENT) == 0 {
				_ = h.NeighDel(&n)
			}
		}
	}
}

// TestPolicies programs rule sets on a node with pods a, b (namespace x)
// and c (namespace y) and checks real TCP, UDP and SCTP traffic, IPv4 and
// IPv6.
func TestPolicies(t *testing.T) {
	topo := newTopology(t, "a", "b", "c")
	a, b, c := topo.pods["a"], topo.pods["b"], topo.pods["c"]
	p := programmer(t, topo.node)
	udp := func(port int32) v1alpha1.Port { return v1alpha1.Port{Protocol: v1alpha1.ProtocolUDP, Port: port} }
	sctp := func(port int32) v1alpha1.Port { return v1alpha1.Port{Protocol: v1alpha1.ProtocolSCTP, Port: port} }

	t.Run("not isolated", func(t *testing.T) {
		topo.apply(t, p, policy{})
		check(t,
			tcpProbe("a->b", a.ns, b.ip4, 80, true),
			tcpProbe("c->b", c.ns, b.ip6, 81, true),
			udpProbe("c->a", c.ns, a.ip4, 80, true),
			sctpProbe("a->c", a, c, c.ip4, 80, true),
			sctpProbe("a->c", a, c, c.ip6, 80, true),
		)
	})

	t.Run("ingress from a pod selector on a port", func(t *testing.T) {
		topo.apply(t, p, policy{
			ingress: map[string][]string{"b": {"from-a"}},
			rules:   []v1alpha1.Rule{ingressRule("from-a", group("pods-a"), dptest.TCP(80))},
			groups:  map[string]v1alpha1.AddressGroupSpec{"pods-a": topo.addrs("a")},
		})
		check(t,
			tcpProbe("a->b", a.ns, b.ip4, 80, true),
			tcpProbe("a->b", a.ns, b.ip6, 80, true),
			tcpProbe("a->b other port", a.ns, b.ip4, 81, false),
			udpProbe("a->b udp", a.ns, b.ip4, 80, false),
			tcpProbe("c->b", c.ns, b.ip4, 80, false),
			tcpProbe("c->b", c.ns, b.ip6, 80, false),
			tcpProbe("node->b", topo.node, b.ip4, 81, true),
			tcpProbe("node->b", topo.node, b.ip6, 8080, true),
			tcpProbe("b->c (egress not isolated)", b.ns, c.ip4, 80, true),
			tcpProbe("c->a (not isolated)", c.ns, a.ip4, 80, true),
		)
	})

	t.Run("ingress from a namespace selector", func(t *testing.T) {
		topo.apply(t, p, policy{
			ingress: map[string][]string{"c": {"from-x"}},
			rules:   []v1alpha1.Rule{ingressRule("from-x", group("ns-x"))},
			groups:  map[string]v1alpha1.AddressGroupSpec{"ns-x": topo.addrs("a", "b")},
		})
		check(t,
			tcpProbe("a->c", a.ns, c.ip4, 80, true),
			tcpProbe("b->c", b.ns, c.ip6, 8080, true),
			udpProbe("a->c", a.ns, c.ip4, 81, true),
			sctpProbe("b->c", b, c, c.ip4, 80, true),
			tcpProbe("node->c", topo.node, c.ip4, 80, true),
		)
	})

	t.Run("address group holding CIDRs", func(t *testing.T) {
		topo.apply(t, p, policy{
			ingress: map[string][]string{"c": {"from-nets"}},
			rules:   []v1alpha1.Rule{ingressRule("from-nets", group("nets"), dptest.TCP(80))},
			groups:  map[string]v1alpha1.AddressGroupSpec{"nets": {Addresses: []string{a.ip4.String(), "fd00::2/127"}}},
		})
		check(t,
			tcpProbe("a->c", a.ns, c.ip4, 80, true),
			tcpProbe("a->c6", a.ns, c.ip6, 80, false),
			tcpProbe("b->c6", b.ns, c.ip6, 80, true),
			tcpProbe("b->c", b.ns, c.ip4, 80, false),
		)
	})

	t.Run("egress to an ipBlock with except and a port range", func(t *testing.T) {
		topo.apply(t, p, policy{
			egress: map[string][]string{"a": {"to-block", "to-block6"}},
			rules: []v1alpha1.Rule{
				egressRule("to-block", []v1alpha1.Peer{{IPBlock: &v1alpha1.IPBlock{CIDR: "198.18.0.0/24", Except: []string{"198.18.0.3/32"}}}},
					v1alpha1.Port{Protocol: v1alpha1.ProtocolTCP, Port: 80, EndPort: 81}),
				egressRule("to-block6", []v1alpha1.Peer{{IPBlock: &v1alpha1.IPBlock{CIDR: "fd00::/64", Except: []string{"fd00::3/128"}}}}, udp(80)),
			},
		})
		check(t,
			tcpProbe("a->b", a.ns, b.ip4, 80, true),
			tcpProbe("a->b", a.ns, b.ip4, 81, true),
			tcpProbe("a->b outside the range", a.ns, b.ip4, 8080, false),
			tcpProbe("a->c (except)", a.ns, c.ip4, 80, false),
			tcpProbe("a->node (outside the block)", a.ns, nodeIP4, 80, false),
			udpProbe("a->b6", a.ns, b.ip6, 80, true),
			udpProbe("a->c6 (except)", a.ns, c.ip6, 80, false),
			tcpProbe("a->b6 tcp", a.ns, b.ip6, 80, false),
			tcpProbe("b->a (ingress not isolated)", b.ns, a.ip4, 80, true),
			tcpProbe("c->a", c.ns, a.ip6, 80, true),
		)
	})

	t.Run("egress to named-port endpoints", func(t *testing.T) {
		topo.apply(t, p, policy{
			egress: map[string][]string{"a": {"to-http"}},
			rules:  []v1alpha1.Rule{egressRule("to-http", group("http"))},
			groups: map[string]v1alpha1.AddressGroupSpec{"http": {
				NamedPort: &v1alpha1.NamedPort{Name: "http", Protocol: v1alpha1.ProtocolTCP},
				Endpoints: []v1alpha1.Endpoint{{IP: b.ip4.String(), Port: 8080}, {IP: b.ip6.String(), Port: 8080}, {IP: c.ip4.String(), Port: 81}},
			}},
		})
		check(t,
			tcpProbe("a->b:http", a.ns, b.ip4, 8080, true),
			tcpProbe("a->b6:http", a.ns, b.ip6, 8080, true),
			tcpProbe("a->c:http", a.ns, c.ip4, 81, true),
			tcpProbe("a->b other port", a.ns, b.ip4, 80, false),
			tcpProbe("a->c other port", a.ns, c.ip4, 8080, false),
			tcpProbe("a->c6 (no v6 endpoint)", a.ns, c.ip6, 81, false),
			udpProbe("a->b udp", a.ns, b.ip4, 8080, false),
		)
	})

	t.Run("sctp", func(t *testing.T) {
		topo.apply(t, p, policy{
			ingress: map[string][]string{"b": {"sctp-from-a"}},
			rules:   []v1alpha1.Rule{ingressRule("sctp-from-a", group("pods-a"), sctp(80))},
			groups:  map[string]v1alpha1.AddressGroupSpec{"pods-a": topo.addrs("a")},
		})
		check(t,
			sctpProbe("a->b", a, b, b.ip4, 80, true),
			sctpProbe("a->b6", a, b, b.ip6, 80, true),
			sctpProbe("a->b other port", a, b, b.ip4, 81, false),
			sctpProbe("c->b", c, b, b.ip4, 80, false),
			sctpProbe("c->b6", c, b, b.ip6, 80, false),
			tcpProbe("a->b tcp", a.ns, b.ip4, 80, false),
		)
	})

	t.Run("replies of allowed connections pass", func(t *testing.T) {
		topo.apply(t, p, policy{
			ingress: map[string][]string{"b": {"from-a"}},
			egress:  map[string][]string{"b": nil},
			rules:   []v1alpha1.Rule{ingressRule("from-a", group("pods-a"), dptest.TCP(80), udp(80))},
			groups:  map[string]v1alpha1.AddressGroupSpec{"pods-a": topo.addrs("a")},
		})
		check(t,
			tcpProbe("a->b", a.ns, b.ip4, 80, true),
			udpProbe("a->b", a.ns, b.ip4, 80, true),
			udpProbe("a->b6", a.ns, b.ip6, 80, true),
			tcpProbe("b->a (egress denied)", b.ns, a.ip4, 80, false),
			udpProbe("b->c (egress denied)", b.ns, c.ip6, 80, false),
			tcpProbe("b->node (egress denied)", b.ns, nodeIP4, 80, false),
			tcpProbe("node->b", topo.node, b.ip4, 8080, true),
			udpProbe("node->b", topo.node, b.ip6, 81, true),
		)
	})

	t.Run("pod to its node, with neighbour discovery", func(t *testing.T) {
		topo.apply(t, p, policy{
			egress: map[string][]string{"a": {"to-node"}},
			rules: []v1alpha1.Rule{egressRule("to-node", []v1alpha1.Peer{
				{IPBlock: &v1alpha1.IPBlock{CIDR: nodeIP4.String() + "/32"}},
				{IPBlock: &v1alpha1.IPBlock{CIDR: nodeIP6.String() + "/128"}},
			}, dptest.TCP(80))},
		})
		flushNeighbours(t, a.ns)
		flushNeighbours(t, topo.node)
		check(t,
			tcpProbe("a->node", a.ns, nodeIP4, 80, true),
			tcpProbe("a->node6", a.ns, nodeIP6, 80, true),
			tcpProbe("a->node other port", a.ns, nodeIP4, 81, false),
			tcpProbe("a->node6 other port", a.ns, nodeIP6, 81, false),
			tcpProbe("a->b", a.ns, b.ip4, 80, false),
			tcpProbe("node->a", topo.node, a.ip6, 81, true),
		)
	})

	t.Run("egress and ingress on one node must both allow", func(t *testing.T) {
		pol := policy{
			egress:  map[string][]string{"a": {"to-b"}},
			ingress: map[string][]string{"b": {"from-c"}},
			rules: []v1alpha1.Rule{
				egressRule("to-b", group("pods-b"), dptest.TCP(80)),
				ingressRule("from-c", group("pods-c")),
				ingressRule("from-a", group("pods-a")),
			},
			groups: map[string]v1alpha1.AddressGroupSpec{"pods-a": topo.addrs("a"), "pods-b": topo.addrs("b"), "pods-c": topo.addrs("c")},
		}
		topo.apply(t, p, pol)
		check(t,
			tcpProbe("a->b (b does not admit a)", a.ns, b.ip4, 80, false),
			tcpProbe("c->b", c.ns, b.ip4, 80, true),
			tcpProbe("a->c (a may not send)", a.ns, c.ip4, 80, false),
		)
		pol.ingress["b"] = []string{"from-c", "from-a"}
		topo.apply(t, p, pol)
		check(t,
			tcpProbe("a->b", a.ns, b.ip4, 80, true),
			tcpProbe("a->b6", a.ns, b.ip6, 80, true),
			tcpProbe("a->b other port (egress)", a.ns, b.ip4, 81, false),
		)
	})

	t.Run("audit mode lets everything through", func(t *testing.T) {
		topo.apply(t, p, policy{
			ingress: map[string][]string{"b": nil},
			egress:  map[string][]string{"b": nil},
			audit:   map[string]bool{"b": true},
		})
		check(t,
			tcpProbe("a->b", a.ns, b.ip4, 80, true),
			udpProbe("c->b6", c.ns, b.ip6, 81, true),
			sctpProbe("c->b", c, b, b.ip4, 80, true),
			tcpProbe("b->c", b.ns, c.ip4, 8080, true),
		)
	})

	t.Run("uninstall", func(t *testing.T) {
		topo.apply(t, p, policy{ingress: map[string][]string{"b": nil}})
		check(t, tcpProbe("a->b", a.ns, b.ip4, 80, false))
		if err := p.Delete(); err != nil {
			t.Fatal(err)
		}
		if ok, err := p.rd.tableExists(); ok || err != nil {
			t.Fatalf("table still there (%v)", err)
		}
		check(t, tcpProbe("a->b", a.ns, b.ip4, 80, true))
		if err := p.Delete(); err != nil {
			t.Fatalf("second Delete: %v", err)
		}
	})
}

// TestTouchesNoOtherTable checks that programming and deleting leave
// another table of the namespace alone.
func TestTouchesNoOtherTable(t *testing.T) {
	ns := newNetNS(t)
	p := programmer(t, ns)
	// Another table, written with google/nftables directly.
	if err := writeOtherTable(ns); err != nil {
		t.Fatal(err)
	}
	tab, err := render.Render(v1alpha1.NodeRuleSetSpec{Pods: []v1alpha1.LocalPod{{Namespace: "a", Name: "b", IPs: []string{"198.18.0.1"},
		Ingress: &v1alpha1.Isolation{}}}}, nil, render.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Apply(tab); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Apply(mustRender(t, v1alpha1.NodeRuleSetSpec{}, nil)); err != nil {
		t.Fatal(err)
	}
	if err := p.Delete(); err != nil {
		t.Fatal(err)
	}
	if err := checkOtherTable(ns); err != nil {
		t.Fatal(err)
	}
}

// TestReadBack programs the sample table and reads it back: the kernel's
// copy prints exactly as the rendered one (rules decoded from their
// expressions, intervals, concatenations and verdicts from the elements).
func TestReadBack(t *testing.T) {
	ns := newNetNS(t)
	p := programmer(t, ns)
	spec, groups := dptest.Sample()
	want := mustRender(t, spec, groups)
	if _, err := p.Apply(want); err != nil {
		t.Fatal(err)
	}
	got, err := ReadTable(int(ns))
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != want.String() {
		t.Fatalf("read back:\n%s\nwant:\n%s", got, want)
	}
	for _, c := range got.Chains {
		for _, r := range c.Rules {
			if r.Handle() == 0 || strings.HasPrefix(r.ID(), "foreign") {
				t.Errorf("%s: rule %q read back with handle %d, id %s", c.Name, r, r.Handle(), r.ID())
			}
		}
	}
	if none, err := ReadTable(int(newNetNS(t))); err != nil || none != nil {
		t.Fatalf("ReadTable of an empty namespace: %v, %v", none, err)
	}
}
