package render

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// flatProbeAddrs are the addresses randomNode's pods, groups and ipBlocks
// use, and some they do not.
func flatProbeAddrs() []netip.Addr {
	var out []netip.Addr
	for i := range 10 {
		out = append(out,
			netip.MustParseAddr(fmt.Sprintf("198.18.0.%d", i)),
			netip.MustParseAddr(fmt.Sprintf("198.18.1.%d", i)),
			netip.MustParseAddr(fmt.Sprintf("198.18.2.%d", i*2)),
			netip.MustParseAddr(fmt.Sprintf("198.18.9.%d", i)),
			netip.MustParseAddr(fmt.Sprintf("198.19.%d.7", i%4)),
			netip.MustParseAddr(fmt.Sprintf("fd00::%x", i)),
			netip.MustParseAddr(fmt.Sprintf("fd00::9:%d", i)))
	}
	out = append(out, netip.MustParseAddr("198.18.0.20"), netip.MustParseAddr("198.20.0.1"))
	return out
}

// TestIdentityLayoutDecidesAsRuleChains renders random rule sets with and
// without the identity layout and checks that every new connection between
// the addresses they use, on the ports they name and others, gets the same
// verdict from both tables.
func TestIdentityLayoutDecidesAsRuleChains(t *testing.T) {
	defer func(n int) { DispatchMin = n }(DispatchMin)
	addrs := flatProbeAddrs()
	var compared, flat, mixed, packets int
	for seed := range uint64(120) {
		DispatchMin = 1 + int(seed%3)
		rng := rand.New(rand.NewPCG(seed, 11))
		spec, groups := randomNode(rng)
		// Every isolated direction flat, or (one seed in three) only
		// those with at least 2 rules: rule chains and identities on
		// one node.
		opts := Options{Identities: true}
		if seed%3 == 2 {
			opts = Options{IdentityMin: 2}
		}
		for step := range 4 {
			want, wantErr := Render(spec, groups, Options{})
			got, gotErr := Render(spec, groups, opts)
			all := got
			if opts.IdentityMin > 0 {
				all, _ = Render(spec, groups, Options{Identities: true})
			}
			if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
				t.Fatalf("seed %d step %d: identity layout error %v, rule chains error %v", seed, step, gotErr, wantErr)
			}
			spec, groups = mutate(rng, spec, groups)
			if wantErr != nil {
				continue
			}
			compared++
			if got.Set(MapIdentity4) != nil {
				flat++
				if all.String() != got.String() {
					mixed++ // not every direction flat: some rule chains
				}
			}
			for _, s := range got.Sets {
				if !model.SortedElements(s.Elements) {
					t.Fatalf("seed %d: set %s is not in order", seed, s.Name)
				}
			}
			dw, dg := model.NewDecider(want), model.NewDecider(got)
			for _, src := range addrs {
				for _, dst := range addrs {
					if src.Is4() != dst.Is4() {
						continue
					}
					for _, proto := range []uint8{model.ProtoTCP, model.ProtoUDP} {
						for _, port := range []uint16{79, 80, 81, 82, 84, 8080} {
							p := model.Packet{Src: src, Dst: dst, Proto: proto, Dport: port}
							w, err := dw.Decide(model.HookForward, p)
							if err != nil {
								t.Fatalf("seed %d: %v", seed, err)
							}
							g, err := dg.Decide(model.HookForward, p)
							if err != nil {
								t.Fatalf("seed %d: identity layout: %v", seed, err)
							}
							packets++
							if g != w {
								t.Fatalf("seed %d step %d: %+v: identity layout lets it through %t, rule chains %t\n%s", seed, step, p, g, w, got)
							}
						}
					}
				}
			}
		}
	}
	if flat < compared/2 || mixed < compared/10 {
		t.Fatalf("%d of %d tables have the identity layout, %d of them with rule chains too: the generator no longer covers it", flat, compared, mixed)
	}
	t.Logf("%d tables (%d with identities, %d of them with rule chains too), %d packets", compared, flat, mixed, packets)
}

// TestSegments cuts overlapping ranges of peer sets into disjoint
// segments.
func TestSegments(t *testing.T) {
	r := func(from, to string) ipRange {
		return ipRange{from: netip.MustParseAddr(from), to: netip.MustParseAddr(to)}
	}
	var cuts []boundary
	for _, c := range []struct {
		set string
		rg  ipRange
	}{
		{"a", r("198.18.0.0", "198.18.0.255")},
		{"b", r("198.18.0.16", "198.18.0.31")},
		{"c", r("198.18.0.31", "198.18.0.31")},
		{"c", r("198.18.1.0", "198.18.1.9")},
		{"d", r("198.18.1.10", "198.18.1.20")},
		{"e", r("198.18.1.10", "198.18.1.20")},
		{"f", r("255.255.255.0", "255.255.255.255")},
	} {
		cuts = append(cuts, boundary{at: c.rg.from, set: c.set}, boundary{at: c.rg.to, set: c.set, end: true})
	}
	var got []string
	for _, s := range segments(cuts) {
		got = append(got, fmt.Sprintf("%s %s", model.RangeString(s.from, s.to), strings.Join(s.sets, ",")))
	}
	want := []string{
		"198.18.0.0/28 a",
		"198.18.0.16-198.18.0.30 a,b",
		"198.18.0.31 a,b,c",
		"198.18.0.32-198.18.0.255 a",
		"198.18.1.0-198.18.1.9 c",
		"198.18.1.10-198.18.1.20 d,e",
		"255.255.255.0/24 f",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("segments:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestIdentityLayoutShape renders a pod selected by 40 rules on one port,
// each from a group of its own: its chain has the same lines as with 10,
// each identity a chain of one line, and a new member of a group is one
// element of a map.
func TestIdentityLayoutShape(t *testing.T) {
	node := func(n int, extra string) (v1alpha1.NodeRuleSetSpec, map[string]v1alpha1.AddressGroupSpec) {
		names := make([]string, n)
		for i := range names {
			names[i] = fmt.Sprintf("g%d", i)
		}
		return serverSelectedBy(names, func(i int) []string {
			addrs := []string{fmt.Sprintf("198.18.%d.%d", 1+i/200, 1+i%200)}
			if i == 0 && extra != "" {
				addrs = append(addrs, extra)
			}
			return addrs
		})
	}
	lines := func(n int) []string {
		spec, groups := node(n, "")
		tab, err := Render(spec, groups, Options{Identities: true})
		if err != nil {
			t.Fatal(err)
		}
		// The pod's chain and the ingress base chain, which looks the
		// peer's identity up.
		var out []string
		for _, name := range []string{PodChainName("in", "ns", "server"), model.ChainIngressForward} {
			for _, ru := range tab.Chain(name).Rules {
				out = append(out, ru.String())
			}
		}
		if s := tab.Set("idpi4"); s == nil || len(s.Elements) != n {
			t.Fatalf("%d rules: identity port set %v", n, s)
		}
		ids := 0
		for _, c := range tab.Chains {
			if strings.HasPrefix(c.Name, "idi-") {
				ids++
				if len(c.Rules) != 1 {
					t.Fatalf("%d rules: identity chain %s has %d rules", n, c.Name, len(c.Rules))
				}
			}
		}
		if ids != n {
			t.Fatalf("%d rules: %d identity chains", n, ids)
		}
		return out
	}
	ten, forty := lines(10), lines(40)
	if !slices.Equal(ten, forty) {
		t.Fatalf("the pod chain grows with its rules:\n%s\nthen\n%s", strings.Join(ten, "\n"), strings.Join(forty, "\n"))
	}
	if !slices.Contains(ten, "ct state new ip saddr vmap @idi4") {
		t.Fatalf("no identity lookup in\n%s", strings.Join(ten, "\n"))
	}

	// 198.18.1.50 joins g0: it shares g0's identity with g0's other
	// member, so the change is one element of a map.
	spec, groups := node(40, "")
	before, err := Render(spec, groups, Options{Identities: true})
	if err != nil {
		t.Fatal(err)
	}
	spec, groups = node(40, "198.18.1.50")
	after, err := Render(spec, groups, Options{Identities: true})
	if err != nil {
		t.Fatal(err)
	}
	var changed []string
	for _, s := range after.Sets {
		old := before.Set(s.Name)
		if old == nil {
			changed = append(changed, "new "+s.Name)
			continue
		}
		removed, added := model.ElementDelta(old.Elements, s.Elements)
		for _, e := range removed {
			changed = append(changed, "- "+s.Name+" "+s.Kind.Format(e))
		}
		for _, e := range added {
			changed = append(changed, "+ "+s.Name+" "+s.Kind.Format(e))
		}
	}
	if len(changed) != 1 || !strings.HasPrefix(changed[0], "+ idi4 198.18.1.50 : jump idi-") || len(after.Chains) != len(before.Chains) {
		t.Fatalf("a new member of a group changed:\n%s", strings.Join(changed, "\n"))
	}
}

// TestIdentityNumbersCollide gives two identities the same hash: each
// still gets a number of its own, and a Renderer taken through groups
// coming and going numbers them as a fresh Render does.
func TestIdentityNumbersCollide(t *testing.T) {
	// Two group names whose identities' keys hash alike (a birthday
	// search over 32 bits).
	seen := map[uint32]string{}
	var a, b string
	for i := 0; a == ""; i++ {
		name := fmt.Sprintf("g%d", i)
		h := fnv1a32("g/" + name)
		if other, ok := seen[h]; ok {
			a, b = other, name
		}
		seen[h] = name
	}
	node := func(groups ...string) (v1alpha1.NodeRuleSetSpec, map[string]v1alpha1.AddressGroupSpec) {
		return serverSelectedBy(append([]string{"f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8"}, groups...),
			func(i int) []string { return []string{fmt.Sprintf("198.18.1.%d", 1+i)} })
	}
	m := NewRenderer(Options{Identities: true})
	for step, groups := range [][]string{{a}, {a, b}, {b}, {a, b}, {a}, {}, {b, a}, {b}} {
		spec, gs := node(groups...)
		got, err := m.Render(spec, gs)
		if err != nil {
			t.Fatal(err)
		}
		want, err := Render(spec, gs, Options{Identities: true})
		if err != nil {
			t.Fatal(err)
		}
		if got.String() != want.String() {
			t.Fatalf("step %d (%v): Renderer gave\n%s\nRender gave\n%s", step, groups, got, want)
		}
		chains := 0
		for _, c := range got.Chains {
			if strings.HasPrefix(c.Name, "idi-") {
				chains++
			}
		}
		if chains != 8+len(groups) {
			t.Fatalf("step %d (%v): %d identity chains, want %d", step, groups, chains, 8+len(groups))
		}
	}
}

// serverSelectedBy is a node whose pod ns/server is isolated on ingress by
// one rule per group, each from its group on TCP 80; group i (of those
// named) has the addresses addrs(i).
func serverSelectedBy(names []string, addrs func(i int) []string) (v1alpha1.NodeRuleSetSpec, map[string]v1alpha1.AddressGroupSpec) {
	spec := v1alpha1.NodeRuleSetSpec{}
	groups := map[string]v1alpha1.AddressGroupSpec{}
	var ids []string
	for i, g := range names {
		groups[g] = v1alpha1.AddressGroupSpec{Addresses: addrs(i)}
		spec.AddressGroups = append(spec.AddressGroups, g)
		id := "r-" + g
		ids = append(ids, id)
		spec.Rules = append(spec.Rules, v1alpha1.Rule{ID: id, Direction: v1alpha1.DirectionIngress,
			Peers: []v1alpha1.Peer{{AddressGroup: g}}, Ports: []v1alpha1.Port{{Protocol: v1alpha1.ProtocolTCP, Port: 80}}})
	}
	spec.Pods = []v1alpha1.LocalPod{{Namespace: "ns", Name: "server", IPs: []string{"198.18.0.1"},
		Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Rules: ids}}}
	return spec, groups
}
