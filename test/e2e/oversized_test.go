package e2e

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/test/localcluster"
)

// maxObjectBytes is the e2e controller's --max-object-bytes: far above any
// rule set of the conformance topology, below what a policy of 20,000 ports
// compiles to.
const maxObjectBytes = 256 * 1024

// TestOversizedTenant: a NetworkPolicy of 20,000 ports pushes its node's
// rule set past the object limit. Its own pod stays isolated without its
// rules (x/b is blocked), while a neighbour's policy on the same node is
// enforced as written (x/b reaches the neighbour, x/c does not). A policy
// of 20,000 inline ipBlocks (one of them x/b's address) is not oversized:
// its blocks become a group, and it is enforced.
func TestOversizedTenant(t *testing.T) {
	needCluster(t)
	ctx := context.Background()
	resetPolicies(t)
	t.Cleanup(func() { resetPolicies(t) })
	// Two pods of other namespaces on one node: the tenant and its
	// neighbour; and a third pod for the policy of many blocks.
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
	listed := "z/a"
	if tenant == listed {
		listed = "z/b"
	}
	allowed := mustPod(t, "x/b").IPv4
	blocks := []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: allowed.String() + "/32"}}}
	// The others are outside the pods' ranges (198.18.<node>.0/24) and the
	// nodes' (198.19.0.0/24), so that x/c is in none of them.
	for i := 0; len(blocks) < 20000; i++ {
		addr := netip.AddrFrom4([4]byte{198, 19, byte(1 + i>>8), byte(i)})
		blocks = append(blocks, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: addr.String() + "/32"}})
	}
	var ports []networkingv1.NetworkPolicyPort
	for i := range 20000 {
		ports = append(ports, networkingv1.NetworkPolicyPort{Port: ptr.To(intstr.FromInt32(int32(1 + i)))})
	}
	tenantPod, neighbourPod, listedPod := mustPod(t, tenant), mustPod(t, neighbour), mustPod(t, listed)
	create(t,
		&networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: tenantPod.Namespace, Name: "many"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: labels("pod", tenantPod.Name)},
				Ingress:     []networkingv1.NetworkPolicyIngressRule{{Ports: ports, From: blocks[:1]}},
			},
		},
		&networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: listedPod.Namespace, Name: "blocks"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: labels("pod", listedPod.Name)},
				Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: blocks}},
			},
		},
		allowIngress(policy(neighbourPod.Namespace, "few", labels("pod", neighbourPod.Name), networkingv1.PolicyTypeIngress), nil,
			networkingv1.NetworkPolicyPeer{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: labels("ns", "x")},
				PodSelector:       &metav1.LabelSelector{MatchLabels: labels("pod", "b")},
			}))
	many, few := v1alpha1.NetworkPolicyKey(tenantPod.Namespace, "many"), v1alpha1.NetworkPolicyKey(neighbourPod.Namespace, "few")
	manyBlocks := v1alpha1.NetworkPolicyKey(listedPod.Namespace, "blocks")
	isolatedBy := func(rs *v1alpha1.NodeRuleSet, p localcluster.Pod, policy string) bool {
		for _, lp := range rs.Spec.Pods {
			if lp.Namespace == p.Namespace && lp.Name == p.Name {
				return lp.Ingress != nil && slices.Contains(lp.Ingress.Policies, policy)
			}
		}
		return false
	}
	programmed := func(rs *v1alpha1.NodeRuleSet) string {
		c := meta.FindStatusCondition(rs.Status.Conditions, v1alpha1.ConditionProgrammed)
		if c == nil || c.Status != metav1.ConditionTrue || rs.Status.ObservedGeneration != rs.Generation {
			return fmt.Sprintf("generation %d not programmed yet: %+v", rs.Generation, c)
		}
		return ""
	}
	var why string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		rs, listedRS := &v1alpha1.NodeRuleSet{}, &v1alpha1.NodeRuleSet{}
		if err := cl.Client().Get(ctx, client.ObjectKey{Name: tenantPod.Node}, rs); err != nil {
			t.Fatal(err)
		}
		if err := cl.Client().Get(ctx, client.ObjectKey{Name: listedPod.Node}, listedRS); err != nil {
			t.Fatal(err)
		}
		u := rs.Spec.Unwritten
		switch {
		case u == nil || len(u.Policies) != 1 || u.Policies[0] != many:
			why = fmt.Sprintf("unwritten %+v, want the rules of %s left out", u, many)
		case !isolatedBy(rs, neighbourPod, few) || !isolatedBy(rs, tenantPod, many) || !isolatedBy(listedRS, listedPod, manyBlocks):
			why = "the policies not compiled into the rule sets yet"
		case listedPod.Node != tenantPod.Node && listedRS.Spec.Unwritten != nil:
			why = fmt.Sprintf("node %s: unwritten %+v, want the policy of many blocks written", listedPod.Node, listedRS.Spec.Unwritten)
		default:
			why = cmp.Or(programmed(rs), programmed(listedRS))
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
	if !probeOne(t, "x/b", listed, tcp80) {
		t.Errorf("x/b -> %s, which one of the policy's 20,000 ipBlocks allows, is blocked", listed)
	}
	if probeOne(t, "x/c", listed, tcp80) {
		t.Errorf("x/c -> %s, which none of the policy's 20,000 ipBlocks allows, connected", listed)
	}
}
