package render

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// mutateMembers changes the members of some groups, leaving the rule set
// as it is: small edits mostly (an address in or out, which renderMembers
// handles), sometimes a family's first or last member, a CIDR, a bad
// address or new endpoints of the named-port group (which it leaves to a
// full render).
func mutateMembers(rng *rand.Rand, groups map[string]v1alpha1.AddressGroupSpec) map[string]v1alpha1.AddressGroupSpec {
	out := make(map[string]v1alpha1.AddressGroupSpec, len(groups))
	for _, name := range slices.Sorted(maps.Keys(groups)) {
		g := groups[name]
		g.Addresses = slices.Clone(g.Addresses)
		g.Endpoints = slices.Clone(g.Endpoints)
		if bad := slices.Index(g.Addresses, "not-an-address"); bad >= 0 && rng.IntN(2) == 0 {
			g.Addresses = slices.Delete(g.Addresses, bad, bad+1)
		} else if rng.IntN(3) == 0 {
			switch {
			case g.NamedPort != nil:
				if rng.IntN(4) == 0 {
					g.Endpoints = append(g.Endpoints, v1alpha1.Endpoint{IP: fmt.Sprintf("198.18.9.%d", 1+rng.IntN(8)), Port: 8080})
				}
			case rng.IntN(12) == 0:
				g.Addresses = append(g.Addresses, fmt.Sprintf("198.18.%d.0/28", rng.IntN(3)))
			case rng.IntN(12) == 0:
				g.Addresses = append(g.Addresses, fmt.Sprintf("fd00::%x", 1+rng.IntN(6)))
			case rng.IntN(40) == 0:
				g.Addresses = append(g.Addresses, "not-an-address")
			case len(g.Addresses) > 0 && rng.IntN(2) == 0:
				g.Addresses = slices.Delete(g.Addresses, 0, 1)
			default:
				g.Addresses = append(g.Addresses, fmt.Sprintf("198.18.1.%d", 1+rng.IntN(12)))
			}
		}
		out[name] = g
	}
	return out
}

// scribble overwrites what a rule set's slices hold, as a caller reusing
// them for its next rule set would.
func scribble(spec *v1alpha1.NodeRuleSetSpec) {
	for i := range spec.Rules {
		for j := range spec.Rules[i].Ports {
			spec.Rules[i].Ports[j].Port = 1
		}
		for j := range spec.Rules[i].Peers {
			spec.Rules[i].Peers[j] = v1alpha1.Peer{AddressGroup: "scribbled"}
		}
		spec.Rules[i] = v1alpha1.Rule{ID: "scribbled", Direction: v1alpha1.DirectionEgress}
	}
	for i := range spec.Pods {
		for j := range spec.Pods[i].IPs {
			spec.Pods[i].IPs[j] = "198.19.255.255"
		}
	}
}

// TestMembersMatchRender renders sequences of rule sets where only the
// members of groups change with one Renderer, and checks every table and
// error against a fresh Render, that tables returned earlier never change,
// and that most renders started from the last one (renderMembers) rather
// than going through all of the rule set. Each step's rule set is a copy of
// the last, whose slices are then overwritten: the Renderer must keep
// nothing of its callers' memory.
func TestMembersMatchRender(t *testing.T) {
	defer func(n int) { DispatchMin = n }(DispatchMin)
	for _, layout := range []struct {
		name string
		opts Options
	}{{"rule chains", Options{}}, {"identities", Options{Identities: true}}, {"identities from 2 rules", Options{IdentityMin: 2}}} {
		name := layout.name
		var rendered, failed, members, deltas int
		for seed := range uint64(150) {
			DispatchMin = 2 + int(seed%2)*100
			rng := rand.New(rand.NewPCG(seed, 11))
			opts := layout.opts
			m := NewRenderer(opts)
			spec, groups := randomNode(rng)
			var earlier []*model.Table
			var texts []string
			for step := range 20 {
				got, gotErr := m.Render(spec, groups)
				want, wantErr := Render(spec, groups, opts)
				if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
					t.Fatalf("%s seed %d step %d: Renderer error %v, Render error %v", name, seed, step, gotErr, wantErr)
				}
				if wantErr != nil {
					failed++
				} else {
					rendered++
					if got.String() != want.String() {
						t.Fatalf("%s seed %d step %d: Renderer gave\n%s\nRender gave\n%s", name, seed, step, got, want)
					}
					for i, c := range want.Chains {
						for j, ru := range c.Rules {
							if g := got.Chains[i].Rules[j].ID(); g != ru.ID() {
								t.Fatalf("%s seed %d step %d: chain %s rule %d id %s, want %s", name, seed, step, c.Name, j, g, ru.ID())
							}
						}
					}
					if len(earlier) > 0 {
						deltas += checkDeltas(t, fmt.Sprintf("%s seed %d step %d", name, seed, step), earlier[len(earlier)-1], got)
					}
					earlier, texts = append(earlier, got), append(texts, got.String())
				}
				for i, e := range earlier {
					if e.String() != texts[i] {
						t.Fatalf("%s seed %d step %d: a table returned earlier changed", name, seed, step)
					}
				}
				next := spec.DeepCopy()
				scribble(&spec)
				spec, groups = *next, mutateMembers(rng, groups)
			}
			members += m.members
		}
		t.Logf("%s: %d tables rendered, %d of them from the last render's, %d sets made from the last's, %d rule sets refused", name, rendered, members, deltas, failed)
		// The comparison means something only when both paths run.
		if members < rendered/5 || members > rendered*4/5 || failed < 20 || layout.name != "rule chains" && deltas < 50 {
			t.Fatalf("%s: %d of %d tables rendered from the last render's, %d refused: the generator no longer covers both paths", name, members, rendered, failed)
		}
	}
}

// TestMembersRenderOnlyTheChangedGroup checks what a member change renders
// again: the changed group's set and nothing else (rule chains), or the
// identity map (identities); and that new pod interfaces make the next
// render go through all of the rule set.
func TestMembersRenderOnlyTheChangedGroup(t *testing.T) {
	for _, opts := range []Options{{}, {Identities: true}} {
		spec, groups := benchNode(6, 60, 6, 4)
		m := NewRenderer(opts)
		first, err := m.Render(spec, groups)
		if err != nil {
			t.Fatal(err)
		}
		g := groups["g00002"]
		g.Addresses = append(slices.Clone(g.Addresses), "198.19.200.1")
		groups["g00002"] = g
		second, err := m.Render(spec, groups)
		if err != nil {
			t.Fatal(err)
		}
		if m.members != 1 {
			t.Fatalf("identities %v: %d renders from the last one, want 1", opts.Identities, m.members)
		}
		if want, _ := Render(spec, groups, opts); second.String() != want.String() {
			t.Fatalf("identities %v: Renderer gave\n%s\nRender gave\n%s", opts.Identities, second, want)
		}
		changed := SharedSetName(model.IPv4, GroupTag("g00002"))
		if opts.Identities {
			changed = MapIdentity4
		}
		for _, s := range second.Sets {
			if same := first.Set(s.Name) == s; same == (s.Name == changed) {
				t.Errorf("identities %v: set %s reused %v", opts.Identities, s.Name, same)
			}
		}
		for i, c := range second.Chains {
			if first.Chains[i] != c {
				t.Errorf("identities %v: chain %s rendered again", opts.Identities, c.Name)
			}
		}
		// The same groups again: the same table.
		if third, err := m.Render(spec, groups); err != nil || third != second {
			t.Errorf("identities %v: the same input gave another table (error %v)", opts.Identities, err)
		}
		m.SetPodInterfaces([]string{"veth0"})
		if _, err := m.Render(spec, groups); err != nil || m.members != 1 || m.last == nil {
			t.Errorf("identities %v: new pod interfaces: error %v, %d renders from the last one (want 1), last %v", opts.Identities, err, m.members, m.last != nil)
		}
	}
}
