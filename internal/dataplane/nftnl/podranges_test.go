package nftnl

import (
	"slices"
	"testing"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
)

// TestNotReadyAddressesAreDropped: on a node whose pod ranges are known, a
// pod-range address that the rule set does not list is dropped both ways,
// in both families, whatever the policies; the node still reaches it (and
// its replies are established); once listed, its policies decide.
func TestNotReadyAddressesAreDropped(t *testing.T) {
	topo := newTopology(t, "a", "b", "c")
	a, b, c := topo.pods["a"], topo.pods["b"], topo.pods["c"]
	p := programmer(t, topo.node)
	apply := func(t *testing.T, listed ...string) {
		t.Helper()
		spec := topo.spec(policy{})
		spec.Pods = slices.DeleteFunc(spec.Pods, func(lp v1alpha1.LocalPod) bool { return !slices.Contains(listed, lp.Name) })
		spec.PodCIDRs = []string{"198.18.0.0/24", "fd00::/64"}
		applySpec(t, p, spec, nil)
	}

	t.Run("c not listed", func(t *testing.T) {
		apply(t, "a", "b")
		check(t,
			tcpProbe("a->b", a.ns, b.ip4, 80, true),
			tcpProbe("b->a", b.ns, a.ip6, 80, true),
			tcpProbe("c->a", c.ns, a.ip4, 80, false),
			tcpProbe("c->a", c.ns, a.ip6, 80, false),
			udpProbe("c->b", c.ns, b.ip4, 81, false),
			tcpProbe("a->c", a.ns, c.ip4, 80, false),
			tcpProbe("b->c", b.ns, c.ip6, 8080, false),
			udpProbe("a->c", a.ns, c.ip6, 80, false),
			sctpProbe("a->c", a, c, c.ip4, 80, false),
			tcpProbe("c->node", c.ns, nodeIP4, 80, false),
			tcpProbe("node->c", topo.node, c.ip4, 80, true),
			tcpProbe("node->c", topo.node, c.ip6, 81, true),
		)
	})

	t.Run("c listed", func(t *testing.T) {
		apply(t, "a", "b", "c")
		check(t,
			tcpProbe("c->a", c.ns, a.ip4, 80, true),
			udpProbe("c->b", c.ns, b.ip6, 81, true),
			tcpProbe("a->c", a.ns, c.ip4, 80, true),
			sctpProbe("a->c", a, c, c.ip6, 80, true),
			tcpProbe("c->node", c.ns, nodeIP6, 80, true),
		)
	})

	t.Run("c no longer listed", func(t *testing.T) {
		apply(t, "a", "b")
		check(t,
			tcpProbe("c->a", c.ns, a.ip4, 80, false),
			tcpProbe("a->c", a.ns, c.ip6, 80, false),
		)
	})
}
