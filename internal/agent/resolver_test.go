package agent

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/audit"
)

func TestResolverLocalPods(t *testing.T) {
	r := &Resolver{}
	r.SetRuleSet(&v1alpha1.NodeRuleSetSpec{Pods: []v1alpha1.LocalPod{
		{Namespace: "shop", Name: "web", IPs: []string{"198.18.0.10", "fd00::10"},
			Ingress: &v1alpha1.Isolation{Policies: []string{"NetworkPolicy/shop/web"}},
			Egress:  &v1alpha1.Isolation{Policies: []string{"DefaultDeny/baseline"}}},
		{Namespace: "shop", Name: "open", IPs: []string{"198.18.0.11"}},
	}})
	ns, name, pols, ok := r.LocalPod(audit.PodKey("shop", "web"), audit.Ingress)
	if !ok || ns != "shop" || name != "web" || !slices.Equal(pols, []string{"NetworkPolicy/shop/web"}) {
		t.Fatalf("ingress: %s/%s %v %v", ns, name, pols, ok)
	}
	if _, _, pols, _ := r.LocalPod(audit.PodKey("shop", "web"), audit.Egress); !slices.Equal(pols, []string{"DefaultDeny/baseline"}) {
		t.Fatalf("egress policies %v", pols)
	}
	if _, _, _, ok := r.LocalPod(audit.PodKey("shop", "gone"), audit.Ingress); ok {
		t.Fatal("unknown pod key resolved")
	}
	if ns, name, ok := r.Peer(netip.MustParseAddr("fd00::10")); !ok || ns != "shop" || name != "web" {
		t.Fatalf("local peer: %s/%s %v", ns, name, ok)
	}
}

func TestResolverNamesOnlyLocalPods(t *testing.T) {
	r := &Resolver{}
	r.SetRuleSet(&v1alpha1.NodeRuleSetSpec{Pods: []v1alpha1.LocalPod{
		{Namespace: "shop", Name: "web", IPs: []string{"198.18.0.10"}},
	}})
	if _, _, ok := r.Peer(netip.MustParseAddr("198.18.1.5")); ok {
		t.Fatal("a remote address was named: the agent names its own pods only")
	}
	if ns, name, ok := r.Peer(netip.MustParseAddr("::ffff:198.18.0.10")); !ok || ns != "shop" || name != "web" {
		t.Fatalf("v4-mapped local address: %s/%s %v", ns, name, ok)
	}
	r.SetRuleSet(&v1alpha1.NodeRuleSetSpec{})
	if _, _, ok := r.Peer(netip.MustParseAddr("198.18.0.10")); ok {
		t.Fatal("a pod gone from the rule set is still named")
	}
}
