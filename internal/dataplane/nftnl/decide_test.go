package nftnl

import (
	"fmt"
	"net/netip"
	"testing"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/dptest"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

// TestDecideAgreesWithTheKernel: for rule sets with egress and ingress
// isolation, address groups, ipBlocks with excepts, port ranges, many
// ports (dispatch) and Audit, model.Table.Decide gives every new TCP and
// UDP connection between the pods, in both families, the verdict the
// kernel gives it.
func TestDecideAgreesWithTheKernel(t *testing.T) {
	topo := newTopology(t, "a", "b", "c")
	p := programmer(t, topo.node)
	udp := func(port int32) v1alpha1.Port { return v1alpha1.Port{Protocol: v1alpha1.ProtocolUDP, Port: port} }
	many := []v1alpha1.Port{dptest.TCP(80), udp(81), dptest.TCP(8080), {Protocol: v1alpha1.ProtocolTCP, Port: 7000, EndPort: 7100}, udp(9000)}
	mixed := 0
	for _, tc := range []struct {
		name string
		pol  policy
	}{
		{"ingress from a group on a port, egress to an ipBlock", policy{
			ingress: map[string][]string{"b": {"from-a"}},
			egress:  map[string][]string{"a": {"to-block"}},
			rules: []v1alpha1.Rule{
				ingressRule("from-a", group("pods-a"), dptest.TCP(80)),
				egressRule("to-block", []v1alpha1.Peer{{IPBlock: &v1alpha1.IPBlock{CIDR: "198.18.0.0/24", Except: []string{"198.18.0.3/32"}}},
					{IPBlock: &v1alpha1.IPBlock{CIDR: "fd00::/64"}}}, v1alpha1.Port{Protocol: v1alpha1.ProtocolTCP, Port: 80, EndPort: 81}, udp(8080)),
			},
			groups: map[string]v1alpha1.AddressGroupSpec{"pods-a": topo.addrs("a")},
		}},
		{"many ports (dispatch), an Audit pod, isolation both ways", policy{
			ingress: map[string][]string{"c": {"many"}, "a": {"from-c"}},
			egress:  map[string][]string{"c": {"to-a"}},
			audit:   map[string]bool{"a": true},
			rules: []v1alpha1.Rule{
				ingressRule("many", group("ab"), many...),
				ingressRule("from-c", group("pods-c"), udp(81)),
				egressRule("to-a", group("pods-a"), dptest.TCP(8080), udp(80)),
			},
			groups: map[string]v1alpha1.AddressGroupSpec{"ab": topo.addrs("a", "b"), "pods-a": topo.addrs("a"), "pods-c": topo.addrs("c")},
		}},
		{"rules without ports, without peers, and a CIDR group", policy{
			ingress: map[string][]string{"b": {"all-from-c", "open-81"}, "c": {"from-net"}},
			egress:  map[string][]string{"a": {"to-net", "to-c-all"}},
			rules: []v1alpha1.Rule{
				ingressRule("all-from-c", group("pods-c")),
				ingressRule("open-81", nil, v1alpha1.Port{Protocol: v1alpha1.ProtocolTCP, Port: 81}),
				ingressRule("from-net", group("net"), dptest.TCP(8080), udp(80)),
				egressRule("to-net", group("net"), dptest.TCP(80)),
				egressRule("to-c-all", group("pods-c")),
			},
			// 198.18.0.2 and fd00::2 (b) as ranges, a as addresses.
			groups: map[string]v1alpha1.AddressGroupSpec{"pods-c": topo.addrs("c"),
				"net": {Addresses: []string{"198.18.0.2/31", "fd00::2/127", topo.pods["a"].ip4.String()}}},
		}},
	} {
		for _, layout := range []struct {
			name string
			opts render.Options
		}{{"", render.Options{}}, {", identity layout", render.Options{Identities: true}},
			// Pods with 2 rules or more flat, the others rule chains.
			{", identity layout from 2 rules", render.Options{IdentityMin: 2}}} {
			t.Run(tc.name+layout.name, func(t *testing.T) {
				if _, err := p.Apply(mustRenderWith(t, topo.spec(tc.pol), tc.pol.groups, layout.opts)); err != nil {
					t.Fatal(err)
				}
				assertInSync(t, p)
				tab := p.applied
				got := tab.Set(render.MapIdentity4) != nil
				if layout.opts.IdentityMin == 0 && got != layout.opts.Identities {
					t.Fatalf("identity maps in the table: %t, want %t", got, layout.opts.Identities)
				}
				if layout.opts.IdentityMin > 0 && got {
					mixed++
				}
				decideInKernel(t, topo, tab)
			})
		}
	}
	if mixed == 0 {
		t.Fatal("no rule set had identities with rules from 2: the cases no longer cover a node with both layouts")
	}
}

// decideInKernel sends a new TCP and UDP connection between every two pods
// of topo, in both families, to every served port, and checks each gets the
// verdict tab.Decide gives it.
func decideInKernel(t *testing.T, topo *topology, tab *model.Table) {
	{
		{
			var probes []expect
			for _, from := range []string{"a", "b", "c"} {
				for _, to := range []string{"a", "b", "c"} {
					if from == to {
						continue
					}
					src, dst := topo.pods[from], topo.pods[to]
					for _, fam := range [][2]netip.Addr{{src.ip4, dst.ip4}, {src.ip6, dst.ip6}} {
						for _, port := range servedPorts {
							for _, proto := range []uint8{model.ProtoTCP, model.ProtoUDP} {
								want, err := tab.Decide(model.HookForward, model.Packet{Src: fam[0], Dst: fam[1], Proto: proto, Dport: uint16(port)})
								if err != nil {
									t.Fatal(err)
								}
								name := fmt.Sprintf("%s->%s (Decide: %v)", from, to, want)
								if proto == model.ProtoTCP {
									probes = append(probes, tcpProbe(name, src.ns, fam[1], port, want))
								} else {
									probes = append(probes, udpProbe(name, src.ns, fam[1], port, want))
								}
							}
						}
					}
				}
			}
			check(t, probes...)
		}
	}
}
