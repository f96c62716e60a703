package render

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"testing"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/dptest"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// benchAddr returns base + i.
func benchAddr(base netip.Addr, i int) netip.Addr {
	b := base.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(i)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// benchNode builds a large node the way test/bench does for its cold start:
// pods isolated pods in ingress, rules rules spread round-robin over them,
// rule r admitting group r mod groups on one TCP port (every other rule on
// two), and groups of size peer addresses from 198.18.0.0/15.
func benchNode(pods, rules, groups, size int) (v1alpha1.NodeRuleSetSpec, map[string]v1alpha1.AddressGroupSpec) {
	peerBase := netip.MustParseAddr("198.18.0.1")
	localBase := netip.MustParseAddr("198.19.254.1")
	ports := []int32{80, 443, 8080, 9090, 5432}
	groupName := func(g int) string { return fmt.Sprintf("g%05d", g) }

	var spec v1alpha1.NodeRuleSetSpec
	gs := make(map[string]v1alpha1.AddressGroupSpec, groups)
	peer := 0
	for g := range groups {
		addrs := make([]string, size)
		for j := range addrs {
			addrs[j] = benchAddr(peerBase, peer).String()
			peer++
		}
		gs[groupName(g)] = v1alpha1.AddressGroupSpec{Addresses: addrs}
		spec.AddressGroups = append(spec.AddressGroups, groupName(g))
	}
	local := make([]v1alpha1.LocalPod, pods)
	for i := range local {
		local[i] = v1alpha1.LocalPod{Namespace: "bench", Name: fmt.Sprintf("pod-%04d", i), IPs: []string{benchAddr(localBase, i).String()}}
	}
	for r := range rules {
		id := fmt.Sprintf("r%05d", r)
		policy := fmt.Sprintf("NetworkPolicy/bench/p-%05d", r)
		ru := v1alpha1.Rule{ID: id, Direction: v1alpha1.DirectionIngress,
			Peers:    []v1alpha1.Peer{{AddressGroup: groupName(r % groups)}},
			Ports:    []v1alpha1.Port{{Protocol: v1alpha1.ProtocolTCP, Port: ports[r%len(ports)]}},
			Policies: []string{policy}}
		if r%2 == 1 {
			ru.Ports = append(ru.Ports, v1alpha1.Port{Protocol: v1alpha1.ProtocolTCP, Port: ports[(r+2)%len(ports)]})
		}
		spec.Rules = append(spec.Rules, ru)
		pod := &local[r%len(local)]
		if pod.Ingress == nil {
			pod.Ingress = &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce}
		}
		pod.Ingress.Rules = append(pod.Ingress.Rules, id)
		pod.Ingress.Policies = append(pod.Ingress.Policies, policy)
	}
	spec.Pods = local
	return spec, gs
}

// BenchmarkRender renders a large node from scratch, as an agent does on
// start: 110 pods, 10,000 rules and 100,000 peer addresses in 1,000 groups.
func BenchmarkRender(b *testing.B) { benchRender(b, Options{}) }

// BenchmarkRenderIdentities is BenchmarkRender in the identity layout
// (every pod has about 90 rules: all of them are flat).
func BenchmarkRenderIdentities(b *testing.B) { benchRender(b, Options{Identities: true}) }

func benchRender(b *testing.B, opts Options) {
	spec, groups := benchNode(110, 10_000, 1_000, 100)
	b.ReportAllocs()
	var t *model.Table
	for b.Loop() {
		var err error
		if t, err = NewRenderer(opts).Render(spec, groups); err != nil {
			b.Fatal(err)
		}
	}
	chains, rules, elements := t.Counts()
	b.ReportMetric(float64(chains), "chains")
	b.ReportMetric(float64(rules), "rules")
	b.ReportMetric(float64(elements), "elements")
}

// TestRenderUnchanged pins what Render makes of the sample and of a small
// node with port dispatch, rule ids included: the kernel keeps a rule's id
// as its comment, so a changed id makes every agent rewrite its rules on
// upgrade. Speeding rendering up must leave this digest as it is.
func TestRenderUnchanged(t *testing.T) {
	spec, groups := dptest.Sample()
	small, smallGroups := benchNode(4, 48, 6, 5)
	h := sha256.New()
	for _, tc := range []struct {
		spec     v1alpha1.NodeRuleSetSpec
		groups   map[string]v1alpha1.AddressGroupSpec
		opts     Options
		dispatch bool
	}{
		{spec, groups, Options{LogGroup: 7, LogRate: 5, LogBurst: 10}, false},
		{small, smallGroups, Options{}, true},
	} {
		tab, err := Render(tc.spec, tc.groups, tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		if tc.dispatch && !slices.ContainsFunc(tab.Sets, func(s *model.Set) bool { return s.Kind == model.MapPortsVerdict }) {
			t.Fatal("the small node does not dispatch on ports")
		}
		io.WriteString(h, tab.String())
		for _, c := range tab.Chains {
			for _, r := range c.Rules {
				io.WriteString(h, r.ID()+"\n")
			}
		}
	}
	// Changed when pod chains gained their self-accept rules (hairpin through
	// a Service), and again when the invalid-state drop moved from the base
	// chains into Enforce pod chains and neighbour discovery was accepted on
	// input only, with hop limit 255; the ids of the other rules stayed.
	const want = "d3b3137528b7517ee67f4a994dd33bf9db1c4e4d8e6850c3f7731b9c2364280d"
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		t.Errorf("rendered tables or rule ids changed: digest %s, want %s", got, want)
	}
}

// BenchmarkRenderDelta renders the node of BenchmarkRender again after one
// member of a group changed, with the Renderer that rendered it: what an
// agent does for a pod event.
func BenchmarkRenderDelta(b *testing.B) {
	for _, tc := range []struct {
		name string
		opts Options
	}{{"rule-chains", Options{}}, {"identities", Options{Identities: true}}} {
		b.Run(tc.name, func(b *testing.B) {
			spec, groups := benchNode(110, 10_000, 1_000, 100)
			m := NewRenderer(tc.opts)
			if _, err := m.Render(spec, groups); err != nil {
				b.Fatal(err)
			}
			g := groups["g00007"]
			orig := g.Addresses
			swapped := append(slices.Clone(orig[:len(orig)-1]), "198.19.200.1")
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				g.Addresses = orig
				if i%2 == 0 {
					g.Addresses = swapped
				}
				i++
				groups["g00007"] = g
				if _, err := m.Render(spec, groups); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
