package nftnl

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/dptest"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

// TestMemberChurnInTheKernel applies what a Renderer renders while the
// members of address groups come, go and move between groups, in both
// layouts, and checks after each Apply that the kernel holds exactly the
// applied table. In the identity layout the identity maps then say how
// they were made from the applied ones (model.SetDelta) and the Programmer
// sends what they say without comparing: this is the check that what they
// say is what the kernel needed.
func TestMemberChurnInTheKernel(t *testing.T) {
	for _, identities := range []bool{false, true} {
		t.Run(fmt.Sprintf("identities=%v", identities), func(t *testing.T) {
			p := programmer(t, newNetNS(t))
			m := render.NewRenderer(render.Options{Identities: identities})
			spec, groups := dptest.Sample()
			rng := rand.New(rand.NewPCG(3, 5))
			// Addresses that come and go: single ones of both families,
			// some already in a group (so that moving them changes
			// their identity rather than adding one).
			pool := []string{"198.18.1.1", "198.18.1.2", "198.18.3.1", "fd00::1:1"}
			for i := range 12 {
				pool = append(pool, fmt.Sprintf("198.18.4.%d", i+1), fmt.Sprintf("fd00::4:%x", i+1))
			}
			made := 0
			for step := range 40 {
				tab, err := m.Render(spec, groups)
				if err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				for _, name := range []string{render.MapIdentity4, "idi6"} {
					if s := tab.Set(name); s != nil && s.Delta != nil && s.Delta.Base.Value() != nil {
						made++
					}
				}
				st, err := p.Apply(tab)
				if err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				if step > 0 && st.Full {
					t.Fatalf("step %d: a member change was a full reconcile", step)
				}
				assertInSync(t, p)
				groups = churn(rng, groups, pool)
			}
			if identities && made < 20 {
				t.Fatalf("%d of 40 renders made an identity map from the last one: the test no longer covers it", made)
			}
		})
	}
}

// churn returns groups with the addresses of shop-frontend and monitoring
// changed: one or two of pool added to or removed from either.
func churn(rng *rand.Rand, groups map[string]v1alpha1.AddressGroupSpec, pool []string) map[string]v1alpha1.AddressGroupSpec {
	out := make(map[string]v1alpha1.AddressGroupSpec, len(groups))
	for name, g := range groups {
		g.Addresses = slices.Clone(g.Addresses)
		out[name] = g
	}
	for range 1 + rng.IntN(2) {
		name := []string{"shop-frontend", "monitoring"}[rng.IntN(2)]
		g := out[name]
		a := pool[rng.IntN(len(pool))]
		if i := slices.Index(g.Addresses, a); i >= 0 {
			// Keep one address of each family in shop-frontend, whose
			// rule would otherwise lose a family's set.
			if name != "shop-frontend" || len(g.Addresses) > 3 {
				g.Addresses = slices.Delete(g.Addresses, i, i+1)
			}
		} else {
			g.Addresses = append(g.Addresses, a)
		}
		out[name] = g
	}
	return out
}
