package render

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/dptest"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// randomNode builds a small random rule set: pods (some dual-stack, some
// isolated in either direction), rules over a few groups, ipBlocks and
// ports, and groups of addresses, CIDRs or named-port endpoints. Some
// inputs are invalid (an unknown mode, a bad address, a missing rule).
func randomNode(rng *rand.Rand) (v1alpha1.NodeRuleSetSpec, map[string]v1alpha1.AddressGroupSpec) {
	pick := func(n int) int { return rng.IntN(n) }
	// Two shards of one group too: rules reference one or both.
	groupNames := []string{"g-a", "g-b", "g-c", "g-named", "ag-00000000000000aa-2-0", "ag-00000000000000aa-2-1"}
	groups := map[string]v1alpha1.AddressGroupSpec{}
	for _, name := range groupNames {
		if name == "g-named" {
			var eps []v1alpha1.Endpoint
			for range pick(4) {
				ip := fmt.Sprintf("198.18.9.%d", 1+pick(4))
				if pick(3) == 0 {
					ip = fmt.Sprintf("fd00::9:%d", 1+pick(4))
				}
				eps = append(eps, v1alpha1.Endpoint{IP: ip, Port: int32(8080 + pick(2))})
			}
			groups[name] = v1alpha1.AddressGroupSpec{NamedPort: &v1alpha1.NamedPort{Name: "http", Protocol: v1alpha1.ProtocolTCP}, Endpoints: eps}
			continue
		}
		var addrs []string
		for range pick(5) {
			switch pick(8) {
			case 0:
				addrs = append(addrs, fmt.Sprintf("fd00::%x", 1+pick(6)))
			case 1:
				addrs = append(addrs, fmt.Sprintf("198.18.%d.0/28", pick(3)))
			case 2:
				if pick(10) == 0 {
					addrs = append(addrs, "not-an-address")
				}
			default:
				addrs = append(addrs, fmt.Sprintf("198.18.1.%d", 1+pick(6)))
			}
		}
		groups[name] = v1alpha1.AddressGroupSpec{Addresses: addrs}
	}
	var spec v1alpha1.NodeRuleSetSpec
	spec.AddressGroups = groupNames
	var ids [2][]string
	for i := range 6 {
		ru := v1alpha1.Rule{ID: fmt.Sprintf("r%d", i), Direction: v1alpha1.DirectionIngress}
		// The direction follows the index, so that a changed rule keeps
		// the pods that reference it valid.
		d := i % 2
		if d == 1 {
			ru.Direction = v1alpha1.DirectionEgress
		}
		for range pick(3) {
			if pick(3) == 0 {
				ru.Peers = append(ru.Peers, v1alpha1.Peer{IPBlock: &v1alpha1.IPBlock{CIDR: "198.19.0.0/16", Except: []string{fmt.Sprintf("198.19.%d.0/24", pick(3))}}})
			} else {
				ru.Peers = append(ru.Peers, v1alpha1.Peer{AddressGroup: groupNames[pick(len(groupNames))]})
			}
		}
		for range pick(3) {
			p := v1alpha1.Port{Protocol: v1alpha1.ProtocolTCP, Port: int32(80 + pick(3))}
			switch pick(4) {
			case 0:
				p.EndPort = p.Port + int32(pick(4))
			case 1:
				p.Protocol = v1alpha1.ProtocolUDP
			}
			ru.Ports = append(ru.Ports, p)
		}
		spec.Rules = append(spec.Rules, ru)
		ids[d] = append(ids[d], ru.ID)
	}
	isolation := func(d int) *v1alpha1.Isolation {
		if pick(3) == 0 {
			return nil
		}
		iso := &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce}
		switch pick(10) {
		case 0:
			iso.Mode = v1alpha1.IsolationAudit
		case 1:
			if pick(5) == 0 {
				iso.Mode = "Sometimes"
			}
		}
		for _, id := range ids[d] {
			if pick(2) == 0 {
				iso.Rules = append(iso.Rules, id)
			}
		}
		if pick(60) == 0 {
			iso.Rules = append(iso.Rules, "r-missing")
		}
		return iso
	}
	for i := range 3 + pick(3) {
		pod := v1alpha1.LocalPod{Namespace: "ns", Name: fmt.Sprintf("pod-%d", i), IPs: []string{fmt.Sprintf("198.18.0.%d", 1+pick(8))},
			Ingress: isolation(0), Egress: isolation(1)}
		if pick(3) == 0 {
			pod.IPs = append(pod.IPs, fmt.Sprintf("fd00::%d", 1+pick(8)))
		}
		spec.Pods = append(spec.Pods, pod)
	}
	return spec, groups
}

// mutate changes a few parts of a rule set, leaving the rest as it was.
func mutate(rng *rand.Rand, spec v1alpha1.NodeRuleSetSpec, groups map[string]v1alpha1.AddressGroupSpec) (v1alpha1.NodeRuleSetSpec, map[string]v1alpha1.AddressGroupSpec) {
	fresh, freshGroups := randomNode(rng)
	out := v1alpha1.NodeRuleSetSpec{AddressGroups: spec.AddressGroups}
	out.Pods = slices.Clone(spec.Pods)
	out.Rules = slices.Clone(spec.Rules)
	outGroups := map[string]v1alpha1.AddressGroupSpec{}
	for name, g := range groups {
		if rng.IntN(4) == 0 {
			g = freshGroups[name]
		}
		outGroups[name] = g
	}
	for i := range out.Rules {
		if rng.IntN(4) == 0 && i < len(fresh.Rules) {
			out.Rules[i] = fresh.Rules[i]
		}
	}
	for i := range out.Pods {
		if rng.IntN(4) == 0 && i < len(fresh.Pods) {
			out.Pods[i] = fresh.Pods[i]
		}
	}
	if rng.IntN(4) == 0 {
		out.Pods = fresh.Pods
	}
	return out, outGroups
}

// TestRendererMatchesRender renders sequences of changing rule sets with one
// Renderer and checks every table against a fresh Render, every error
// against Render's, and that tables returned earlier never change.
func TestRendererMatchesRender(t *testing.T) {
	// Pods here have a few rules: dispatch on ports from two of them, so
	// that both layouts are exercised.
	defer func(n int) { DispatchMin = n }(DispatchMin)
	var rendered, failed, dispatched, flat, deltas int
	for seed := range uint64(200) {
		DispatchMin = 2 + int(seed%2)*100
		rng := rand.New(rand.NewPCG(seed, 7))
		// Half the sequences in the identity layout (with dispatch
		// above, it replaces it), every isolated direction or those
		// with at least 2 rules.
		opts := Options{Identities: seed%4 == 2}
		if seed%4 == 3 {
			opts.IdentityMin = 2
		}
		m := NewRenderer(opts)
		spec, groups := randomNode(rng)
		type kept struct {
			table *model.Table
			text  string
		}
		var earlier []kept
		for step := range 15 {
			got, gotErr := m.Render(spec, groups)
			want, wantErr := Render(spec, groups, opts)
			if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
				t.Fatalf("seed %d step %d: Renderer error %v, Render error %v", seed, step, gotErr, wantErr)
			}
			if wantErr != nil {
				failed++
			} else {
				rendered++
				if slices.ContainsFunc(got.Sets, func(s *model.Set) bool { return s.Kind == model.MapPortsVerdict }) {
					dispatched++
				}
				if got.Set(MapIdentity4) != nil {
					flat++
				}
				if got.String() != want.String() {
					t.Fatalf("seed %d step %d: Renderer gave\n%s\nRender gave\n%s", seed, step, got, want)
				}
				for i, c := range want.Chains {
					for j, ru := range c.Rules {
						if g := got.Chains[i].Rules[j].ID(); g != ru.ID() {
							t.Fatalf("seed %d step %d: chain %s rule %d id %s, want %s", seed, step, c.Name, j, g, ru.ID())
						}
					}
				}
				for _, set := range got.Sets {
					if !model.SortedElements(set.Elements) {
						t.Fatalf("seed %d step %d: set %s is not in order: %s", seed, step, set.Name, model.ElemsString(set.Kind, set.Elements))
					}
				}
				if len(earlier) > 0 {
					deltas += checkDeltas(t, fmt.Sprintf("seed %d step %d", seed, step), earlier[len(earlier)-1].table, got)
				}
				earlier = append(earlier, kept{got, got.String()})
			}
			for _, k := range earlier {
				if k.table.String() != k.text {
					t.Fatalf("seed %d step %d: a table returned earlier changed", seed, step)
				}
			}
			spec, groups = mutate(rng, spec, groups)
		}
	}
	// Both paths must be exercised for the comparison to mean anything.
	if rendered < 1000 || failed < 50 || dispatched < 100 || flat < 100 || deltas < 50 {
		t.Fatalf("%d tables rendered (%d with port dispatch, %d in the identity layout, %d sets made from the last's) and %d rule sets refused: the generator no longer covers all", rendered, dispatched, flat, deltas, failed)
	}
	t.Logf("%d tables rendered (%d with port dispatch, %d in the identity layout, %d sets made from the last's), %d rule sets refused", rendered, dispatched, flat, deltas, failed)
}

// checkDeltas checks the sets of got that say how they were made from an
// earlier set (model.SetDelta): their changes are what comparing the two
// sets' elements gives. It returns how many were made from prev's set of
// the same name, the case the Programmer relies on.
func checkDeltas(t *testing.T, at string, prev, got *model.Table) int {
	t.Helper()
	n := 0
	for _, s := range got.Sets {
		if s.Delta == nil {
			continue
		}
		base := s.Delta.Base.Value()
		if base == nil {
			continue // made from a set nobody holds any more
		}
		removed, added := model.ElementDelta(base.Elements, s.Elements)
		if !model.SameElements(removed, s.Delta.Removed) || !model.SameElements(added, s.Delta.Added) {
			t.Fatalf("%s: set %s says it removed %s and added %s from its base, the elements say %s and %s", at, s.Name,
				model.ElemsString(s.Kind, s.Delta.Removed), model.ElemsString(s.Kind, s.Delta.Added),
				model.ElemsString(s.Kind, removed), model.ElemsString(s.Kind, added))
		}
		if base == prev.Set(s.Name) {
			n++
		}
	}
	return n
}

// TestRendererReuses checks that a Renderer hands back the very chains and
// sets of what did not change, which is what makes diffing them free, and
// renders anew what did.
func TestRendererReuses(t *testing.T) {
	spec, groups := dptest.Sample()
	m := NewRenderer(Options{})
	first, err := m.Render(spec, groups)
	if err != nil {
		t.Fatal(err)
	}
	// Change one group's members and one pod's address.
	groups["monitoring"] = v1alpha1.AddressGroupSpec{Addresses: []string{"198.18.2.0/28", "198.18.3.2"}}
	spec.Pods = slices.Clone(spec.Pods)
	spec.Pods[1].IPs = []string{"198.18.0.21"}
	second, err := m.Render(spec, groups)
	if err != nil {
		t.Fatal(err)
	}
	want, err := Render(spec, groups, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if second.String() != want.String() {
		t.Fatalf("Renderer gave\n%s\nRender gave\n%s", second, want)
	}
	sameChain := func(name string) bool { return first.Chain(name) == second.Chain(name) }
	sameSet := func(name string) bool {
		if first.Set(name) == nil {
			t.Fatalf("no set %s in the first table", name)
		}
		return first.Set(name) == second.Set(name)
	}
	for _, name := range []string{"rule-r-frontend", "rule-r-dns", "in-shop.web-0"} {
		if !sameChain(name) {
			t.Errorf("chain %s was rendered again though nothing it depends on changed", name)
		}
	}
	for _, name := range []string{shared4("shop-frontend"), shared6("shop-frontend"), "ep4-shop-http", "rule-r-dns-ports"} {
		if !sameSet(name) {
			t.Errorf("set %s was rendered again though its group did not change", name)
		}
	}
	if sameSet("agn4-monitoring") {
		t.Error("the changed group's set was reused")
	}
	if !sameChain("rule-r-monitoring") {
		t.Error("rule-r-monitoring was rendered again though its groups' set names did not change")
	}
	if first.Chain("eg-shop.client") == nil || sameChain("eg-shop.client") {
		t.Error("chain eg-shop.client was reused though the pod's address changed")
	}
	// A diff between the two tables compares only what changed.
	if pl := model.Diff(first, second); len(pl.Ops) == 0 {
		t.Error("no change planned between the two tables")
	}
	// A member of a group in the shared sets rebuilds the shared set of
	// its family only.
	groups["shop-frontend"] = v1alpha1.AddressGroupSpec{Addresses: []string{"198.18.1.1", "198.18.1.9", "fd00::1:1"}}
	third, err := m.Render(spec, groups)
	if err != nil {
		t.Fatal(err)
	}
	if s4, s6 := shared4("shop-frontend"), shared6("shop-frontend"); third.Set(s4) == second.Set(s4) || third.Set(s6) != second.Set(s6) {
		t.Error("a new IPv4 member must rebuild its shared IPv4 set and leave the IPv6 one as it was")
	}
	if want, _ := Render(spec, groups, Options{}); third.String() != want.String() {
		t.Errorf("Renderer gave\n%s\nRender gave\n%s", third, want)
	}
}
