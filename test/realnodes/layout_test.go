package realnodes

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/nftnl"
	"github.com/nftguard/nftguard/internal/dataplane/render"
	"github.com/nftguard/nftguard/test/conformance"
	"github.com/nftguard/nftguard/test/localcluster"
)

// identityLayout installs config/identity-layout instead of config/default:
// the whole suite then runs with the agents in the identity layout.
var identityLayout = flag.Bool("realnodes.identity-layout", false, "install config/identity-layout (the agents with --identity-layout) instead of config/default")

// kustomization is the path of the kustomization that installs nftguard
// with the agents in the identity layout or with rule chains; the suite
// installs kustomization(*identityLayout).
func kustomization(identities bool) string {
	name := "default"
	if identities {
		name = "identity-layout"
	}
	return filepath.Join(localcluster.RepoRoot(), "config", name)
}

// TestLayoutOnTheNodes: the layout the agents were installed with is the
// one in each node's kernel, and applying the other kustomization over it
// switches every node to the other layout and back while probes run, with
// no allowed probe failing and no denied one getting through. With the
// ingress of namespace y allowed from namespace x, the node of each y pod
// holds, in the identity layout, every IPv4 address of x in the identity
// map idi4, each jumping to an identity chain; with rule chains it has no
// identity map at all.
func TestLayoutOnTheNodes(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		ctx := context.Background()
		s := policySuite(t, c)
		defer s.ResetPolicies(t)
		s.Create(t, conformance.AllowIngress(conformance.Policy("y", "from-x", nil, conformance.Ingress), nil,
			conformance.NsPeer(conformance.Labels("ns", "x"))))
		s.WaitConverged(t)
		if why := waitLayout(ctx, c, *identityLayout); why != "" {
			t.Fatalf("as installed (config/%s): %s", filepath.Base(kustomization(*identityLayout)), why)
		}

		switched := false
		defer func() {
			// Leave the cluster as installed for the tests after this one.
			if switched {
				if err := rollAgents(ctx, c, "apply", "--server-side", "-k", kustomization(*identityLayout)); err != nil {
					t.Errorf("installing config/%s again: %v", filepath.Base(kustomization(*identityLayout)), err)
				}
			}
		}()
		for _, identities := range []bool{!*identityLayout, *identityLayout} {
			dir := filepath.Base(kustomization(identities))
			probes := probeDuring(ctx, c, fromXToY)
			time.Sleep(time.Second)
			switched = identities != *identityLayout
			err := rollAgents(ctx, c, "apply", "--server-side", "-k", kustomization(identities))
			probes.stop(t, "the switch to config/"+dir)
			if err != nil {
				t.Fatal(err)
			}
			if why := waitLayout(ctx, c, identities); why != "" {
				t.Fatalf("after applying config/%s: %s", dir, why)
			}
		}
	})
}

// waitLayout waits up to 30 s until every node of a pod of namespace y has
// the layout asked for (see TestLayoutOnTheNodes), and says how the last
// look differed if it did not.
func waitLayout(ctx context.Context, c *localcluster.Cluster, identities bool) string {
	deadline := time.Now().Add(30 * time.Second)
	for {
		why := layoutDiffers(ctx, c, identities)
		if why == "" || time.Now().After(deadline) {
			return why
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// layoutDiffers says how the nodes of namespace y's pods differ from the
// layout asked for, or returns "".
func layoutDiffers(ctx context.Context, c *localcluster.Cluster, identities bool) string {
	// What the API holds, not the topology: tests before this one may
	// have replaced pods.
	var want []netip.Addr
	nodes := map[string]bool{}
	for _, ns := range []string{"x", "y"} {
		pods, err := c.Clientset().CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err.Error()
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
				continue
			}
			if ns == "y" {
				nodes[p.Spec.NodeName] = true
				continue
			}
			for _, ip := range p.Status.PodIPs {
				if a, err := netip.ParseAddr(ip.IP); err == nil && a.Is4() {
					want = append(want, a)
				}
			}
		}
	}
	slices.SortFunc(want, netip.Addr.Compare)
	if len(want) == 0 || len(nodes) == 0 {
		return fmt.Sprintf("%d IPv4 addresses in namespace x and pods of y on %d nodes", len(want), len(nodes))
	}
	var problems []string
	for _, node := range slices.Sorted(maps.Keys(nodes)) {
		tab, err := nodeTable(c, node)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		var idmap *model.Set
		for _, set := range tab.Sets {
			if set.Name == render.MapIdentity4 {
				idmap = set
			}
		}
		switch {
		case !identities && idmap != nil:
			problems = append(problems, fmt.Sprintf("node %s: map %s (%d elements) with rule chains", node, render.MapIdentity4, len(idmap.Elements)))
		case identities && idmap == nil:
			problems = append(problems, fmt.Sprintf("node %s: no map %s in the identity layout", node, render.MapIdentity4))
		case identities:
			var got []netip.Addr
			for _, e := range idmap.Elements {
				a, ok := netip.AddrFromSlice(e.Key)
				if !ok || e.Verdict == nil || e.Verdict.Kind != model.VerdictJump || !strings.HasPrefix(e.Verdict.Chain, "idi-") {
					problems = append(problems, fmt.Sprintf("node %s: element %x of %s: verdict %v, want a jump to an identity chain", node, e.Key, render.MapIdentity4, e.Verdict))
					continue
				}
				got = append(got, a)
			}
			slices.SortFunc(got, netip.Addr.Compare)
			if !slices.Equal(got, want) {
				problems = append(problems, fmt.Sprintf("node %s: %s holds %v, want the addresses of namespace x %v", node, render.MapIdentity4, got, want))
			}
		}
	}
	return strings.Join(problems, "; ")
}

// nodeTable reads nftguard's table from a node's network namespace.
func nodeTable(c *localcluster.Cluster, node string) (*model.Table, error) {
	n, ok := c.Node(node)
	if !ok {
		return nil, fmt.Errorf("no node %s", node)
	}
	h, err := netns.GetFromPath(localcluster.NetNSPath(n.NetNS))
	if err != nil {
		return nil, err
	}
	defer h.Close()
	tab, err := nftnl.ReadTable(int(h))
	if err != nil {
		return nil, fmt.Errorf("reading node %s's table: %w", node, err)
	}
	if tab == nil {
		return nil, fmt.Errorf("node %s has no table inet nftguard", node)
	}
	return tab, nil
}
