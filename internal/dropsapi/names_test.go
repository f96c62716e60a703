package dropsapi

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
)

func pod(ns, name, uid string, ips ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid)}}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	p.Status.Phase = corev1.PodRunning
	return p
}

func lookup(t *testing.T, x *PodIndex, ip string) string {
	t.Helper()
	ns, name, ok := x.PodByIP(netip.MustParseAddr(ip))
	if !ok {
		return ""
	}
	return ns + "/" + name
}

func TestPodIndex(t *testing.T) {
	x := NewPodIndex()
	a := pod("shop", "web", "u1", "198.18.0.2", "fd00::2")
	x.OnAdd(a, true)
	if got := lookup(t, x, "198.18.0.2"); got != "shop/web" {
		t.Fatalf("v4 = %q", got)
	}
	if got := lookup(t, x, "fd00::2"); got != "shop/web" {
		t.Fatalf("v6 = %q", got)
	}
	if got := lookup(t, x, "::ffff:198.18.0.2"); got != "shop/web" {
		t.Fatalf("v4-mapped = %q", got)
	}

	// The address is reused by a new pod before the old one's delete arrives.
	b := pod("bank", "api", "u2", "198.18.0.2")
	x.OnAdd(b, false)
	x.OnDelete(toolscache.DeletedFinalStateUnknown{Key: "shop/web", Obj: a})
	if got := lookup(t, x, "198.18.0.2"); got != "bank/api" {
		t.Fatalf("after reuse and late delete = %q, want bank/api", got)
	}
	if got := lookup(t, x, "fd00::2"); got != "" {
		t.Fatalf("deleted pod's v6 still named %q", got)
	}

	// A pod that finished gives its address back.
	done := b.DeepCopy()
	done.Status.Phase = corev1.PodSucceeded
	x.OnUpdate(b, done)
	if got := lookup(t, x, "198.18.0.2"); got != "" {
		t.Fatalf("finished pod still named %q", got)
	}

	// Host-network pods share the node's address and are never indexed.
	h := pod("kube-system", "proxy", "u3", "198.18.5.5")
	h.Spec.HostNetwork = true
	x.OnAdd(h, true)
	if got := lookup(t, x, "198.18.5.5"); got != "" || x.Len() != 0 {
		t.Fatalf("host-network pod indexed (%q, %d addresses)", got, x.Len())
	}

	// Updates move a pod's addresses.
	c := pod("shop", "db", "u4", "198.18.0.7")
	x.OnAdd(c, true)
	c2 := pod("shop", "db", "u4", "198.18.0.8")
	x.OnUpdate(c, c2)
	if lookup(t, x, "198.18.0.7") != "" || lookup(t, x, "198.18.0.8") != "shop/db" || x.Len() != 1 {
		t.Fatalf("update did not move the address (len %d)", x.Len())
	}
}
