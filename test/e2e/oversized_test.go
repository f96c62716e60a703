package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/test/localcluster"
)

// maxObjectBytes is the e2e controller's --max-object-bytes: far above any
// rule set of the conformance topology, below what a policy of 20,000
// inline ipBlocks compiles to.
const maxObjectBytes = 256 * 1024

// TestOversizedTenant: a NetworkPolicy of 20,000 inline ipBlocks (one of
// them x/b's address) pushes its node's rule set past the object limit.
// Its own pod stays isolated without its rules (x/b is blocked), while a
// neighbour's policy on the same node is enforced as written (x/b reaches
// the neighbour, x/c does not).
func TestOversizedTenant(t *testing.T) {
	needCluster(t)
	ctx := context.Background()
	resetPolicies(t)
	t.Cleanup(func() { resetPolicies(t) })
	// Two pods of other namespaces on one node: the tenant and its neighbour.
	var tenant, neighbour string
	for _, a := range []string{"y/a", "y/b", "y/c"} {
		for _, b := range []string{"z/a", "z/b", "z/c"} {
			if mustPod(t, a).Node == mustPod(t, b).Node && tenant == "" {
				tenant, neighbour = b, a
			}
		}
	}
	if tenant == "" {
		t.Fatal("no pod of z shares a node with a pod of y")
	}
	allowed := mustPod(t, "x/b").IPv4
	blocks := []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: allowed.String() + "/32"}}}
	for i := 0; len(blocks) < 20000; i++ {
		if addr := netip.AddrFrom4([4]byte{198, byte(18 + i>>16), byte(i >> 8), byte(i)}); addr != allowed {
			blocks = append(blocks, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: addr.String() + "/32"}})
		}
	}
	tenantPod, neighbourPod := mustPod(t, tenant), mustPod(t, neighbour)
	create(t,
		&networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: tenantPod.Namespace, Name: "many"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: labels("pod", tenantPod.Name)},
				Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: blocks}},
			},
		},
		allowIngress(policy(neighbourPod.Namespace, "few", labels("pod", neighbourPod.Name), networkingv1.PolicyTypeIngress), nil,
			networkingv1.NetworkPolicyPeer{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: labels("ns", "x")},
				PodSelector:       &metav1.LabelSelector{MatchLabels: labels("pod", "b")},
			}))
	many, few := v1alpha1.NetworkPolicyKey(tenantPod.Namespace, "many"), v1alpha1.NetworkPolicyKey(neighbourPod.Namespace, "few")
	isolatedBy := func(rs *v1alpha1.NodeRuleSet, p localcluster.Pod, policy string) bool {
		for _, lp := range rs.Spec.Pods {
			if lp.Namespace == p.Namespace && lp.Name == p.Name {
				return lp.Ingress != nil && slices.Contains(lp.Ingress.Policies, policy)
			}
		}
		return false
	}
	var why string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		rs := &v1alpha1.NodeRuleSet{}
		if err := cl.Client().Get(ctx, client.ObjectKey{Name: tenantPod.Node}, rs); err != nil {
			t.Fatal(err)
		}
		c := meta.FindStatusCondition(rs.Status.Conditions, v1alpha1.ConditionProgrammed)
		u := rs.Spec.Unwritten
		switch {
		case u == nil || len(u.Policies) != 1 || u.Policies[0] != many:
			why = fmt.Sprintf("unwritten %+v, want the rules of %s left out", u, many)
		case !isolatedBy(rs, neighbourPod, few) || !isolatedBy(rs, tenantPod, many):
			why = "both policies not compiled into the rule set yet"
		case c == nil || c.Status != metav1.ConditionTrue || rs.Status.ObservedGeneration != rs.Generation:
			why = fmt.Sprintf("generation %d not programmed yet: %+v", rs.Generation, c)
		default:
			why = ""
		}
		if why == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: %s", tenantPod.Node, why)
		}
	}
	// The neighbour's NodeRuleSet is the same object: it is programmed.
	if !probeOne(t, "x/b", neighbour, tcp80) {
		t.Errorf("x/b -> %s, which the neighbour's policy allows, is blocked", neighbour)
	}
	if probeOne(t, "x/c", neighbour, tcp80) {
		t.Errorf("x/c -> %s, which the neighbour's policy does not allow, connected", neighbour)
	}
	if probeOne(t, "x/b", tenant, tcp80) {
		t.Errorf("x/b -> %s connected: the oversized policy's pod must stay isolated without its rules", tenant)
	}
}
