package agent

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

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

func TestResolverPeersFromTheAPI(t *testing.T) {
	pod := func(name, ip string, hostNetwork bool, phase corev1.PodPhase) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "other", Name: name},
			Spec:       corev1.PodSpec{HostNetwork: hostNetwork},
			Status:     corev1.PodStatus{Phase: phase, PodIP: ip},
		}
	}
	reader := fake.NewClientBuilder().WithScheme(scheme.Scheme).
		WithObjects(pod("api", "198.18.1.5", false, corev1.PodRunning),
			pod("node-exporter", "198.18.9.9", true, corev1.PodRunning),
			pod("done", "198.18.1.6", false, corev1.PodSucceeded)).
		WithIndex(&corev1.Pod{}, "status.podIP", func(o client.Object) []string { return []string{o.(*corev1.Pod).Status.PodIP} }).
		Build()
	r := &Resolver{Reader: reader}
	if ns, name, ok := r.Peer(netip.MustParseAddr("198.18.1.5")); !ok || ns != "other" || name != "api" {
		t.Fatalf("remote peer: %s/%s %v", ns, name, ok)
	}
	for _, ip := range []string{"198.18.9.9", "198.18.1.6", "198.18.7.7"} {
		if _, _, ok := r.Peer(netip.MustParseAddr(ip)); ok {
			t.Errorf("%s resolved; hostNetwork, finished and unknown pods must not", ip)
		}
	}
	// Answers are cached: a deleted pod still resolves until the entry expires.
	if err := reader.Delete(t.Context(), pod("api", "", false, "")); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := r.Peer(netip.MustParseAddr("198.18.1.5")); !ok {
		t.Error("cached answer was not used")
	}
}
