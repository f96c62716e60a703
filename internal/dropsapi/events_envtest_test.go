package dropsapi_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/dropsapi"
	"github.com/nftguard/nftguard/internal/dropsapi/dropsapitest"
	"github.com/nftguard/nftguard/internal/dropsapi/wire"
	"github.com/nftguard/nftguard/internal/testenv"
)

// TestPolicyEvents records Events on the policies that dropped or audited
// packets, through a real API server: one per policy per interval with the
// interval's counts, the policies with the most packets first up to the
// cap (the rest wait), none for a deleted policy or a quiet interval.
func TestPolicyEvents(t *testing.T) {
	cfg := testenv.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cs := kubernetes.NewForConfigOrDie(cfg)
	cl, err := client.New(cfg, client.Options{Scheme: scheme.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}))
	web := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"}}
	other := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "other"}}
	baseline := &v1alpha1.DefaultDeny{ObjectMeta: metav1.ObjectMeta{Name: "baseline"}, Spec: v1alpha1.DefaultDenySpec{Mode: v1alpha1.ModeAudit}}
	for _, o := range []client.Object{web, other, baseline} {
		must(cl.Create(ctx, o))
	}

	store := dropsapi.NewStore(dropsapi.StoreConfig{})
	pe := &dropsapi.PolicyEvents{Store: store, Client: cl, Events: cs.EventsV1(), Instance: "replica-0",
		Interval: time.Minute, Max: 2, Log: testr.New(t)}

	var seq uint64
	push := func(policy string, action audit.Action, dir audit.Direction, packets uint64) {
		ev := audit.Event{Time: time.Now(), Action: action, Direction: dir, Protocol: audit.ProtocolTCP,
			Src: audit.Endpoint{IP: netip.MustParseAddr("198.18.0.1"), Port: 40000},
			Dst: audit.Endpoint{IP: netip.MustParseAddr("198.18.0.2"), Port: 80}, Policies: []string{policy}, Count: packets}
		seq = store.Push("node-1", &wire.PushRequest{Stream: "s", First: seq, Lines: []audit.Event{ev}})
	}
	push("NetworkPolicy/shop/web", audit.ActionDrop, audit.Ingress, 30)
	push("NetworkPolicy/shop/web", audit.ActionDrop, audit.Egress, 4)
	push("NetworkPolicy/shop/other", audit.ActionDrop, audit.Ingress, 10)
	push("NetworkPolicy/shop/gone", audit.ActionDrop, audit.Ingress, 100)
	push("DefaultDeny/baseline", audit.ActionAudit, audit.Ingress, 5)

	// The deleted policy has the most packets but nothing to attach them
	// to; of the others, the two with the most go first.
	if n := pe.Record(ctx); n != 2 {
		t.Fatalf("first interval recorded %d Events, want 2", n)
	}
	webEv := waitEvent(t, cs, "shop", "web", 1)
	if webEv.Reason != dropsapi.ReasonPacketsDropped || webEv.Type != corev1.EventTypeWarning || webEv.Regarding.UID != web.UID ||
		!strings.Contains(webEv.Note, "Dropped 34 packets within 1m0s (ingress 30, egress 4)") ||
		!strings.Contains(webEv.Note, "kubectl nftguard drops -n shop --policy NetworkPolicy/shop/web") {
		t.Fatalf("web's Event: %s %s %s regarding %v", webEv.Type, webEv.Reason, webEv.Note, webEv.Regarding)
	}
	if ev := waitEvent(t, cs, "shop", "other", 1); !strings.Contains(ev.Note, "Dropped 10 packets") {
		t.Fatalf("other's Event: %s", ev.Note)
	}
	if got := countEvents(t, cs, "default", "baseline"); got != 0 {
		t.Fatalf("baseline got %d Events past the cap", got)
	}

	// The deferred policy goes next; a quiet interval records nothing.
	if n := pe.Record(ctx); n != 1 {
		t.Fatalf("second interval recorded %d Events, want 1 (the deferred audit)", n)
	}
	ddEv := waitEvent(t, cs, "default", "baseline", 1)
	if ddEv.Reason != dropsapi.ReasonPacketsAudited || ddEv.Type != corev1.EventTypeNormal || ddEv.Regarding.Kind != "DefaultDeny" ||
		!strings.Contains(ddEv.Note, "Audited 5 packets") || !strings.Contains(ddEv.Note, "drops -A --policy DefaultDeny/baseline --action audit") {
		t.Fatalf("baseline's Event: %s %s %s regarding %v", ddEv.Type, ddEv.Reason, ddEv.Note, ddEv.Regarding)
	}
	if n := pe.Record(ctx); n != 0 {
		t.Fatalf("a quiet interval recorded %d Events", n)
	}

	// New drops: the next Event counts only them.
	push("NetworkPolicy/shop/web", audit.ActionDrop, audit.Ingress, 7)
	if n := pe.Record(ctx); n != 1 {
		t.Fatalf("third interval recorded %d Events, want 1", n)
	}
	var found bool
	dropsapitest.WaitFor(t, func() bool {
		for _, ev := range listEvents(t, cs, "shop", "web") {
			found = found || strings.Contains(ev.Note, "Dropped 7 packets within 1m0s (ingress 7, egress 0)")
		}
		return found
	}, "web's second Event")
}

func listEvents(t *testing.T, cs kubernetes.Interface, ns, name string) []eventsv1.Event {
	t.Helper()
	l, err := cs.EventsV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "regarding.name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

func countEvents(t *testing.T, cs kubernetes.Interface, ns, name string) int {
	return len(listEvents(t, cs, ns, name))
}

func waitEvent(t *testing.T, cs kubernetes.Interface, ns, name string, n int) eventsv1.Event {
	t.Helper()
	var got []eventsv1.Event
	dropsapitest.WaitFor(t, func() bool { got = listEvents(t, cs, ns, name); return len(got) >= n }, "an Event on "+ns+"/"+name)
	return got[n-1]
}
