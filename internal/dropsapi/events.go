package dropsapi

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	eventsv1client "k8s.io/client-go/kubernetes/typed/events/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/message"
)

// Reasons of the Events PolicyEvents records.
const (
	ReasonPacketsDropped = "PacketsDropped"
	ReasonPacketsAudited = "PacketsAudited"
)

// Defaults of PolicyEvents.
const (
	DefaultEventInterval = time.Minute
	DefaultEventMax      = 50
)

// PolicyTotal is what one policy's isolation dropped and audited, by
// direction.
type PolicyTotal struct {
	DroppedIngress, DroppedEgress, AuditedIngress, AuditedEgress uint64
}

func (t PolicyTotal) minus(o PolicyTotal) PolicyTotal {
	return PolicyTotal{t.DroppedIngress - o.DroppedIngress, t.DroppedEgress - o.DroppedEgress,
		t.AuditedIngress - o.AuditedIngress, t.AuditedEgress - o.AuditedEgress}
}

func (t PolicyTotal) sum() uint64 {
	return t.DroppedIngress + t.DroppedEgress + t.AuditedIngress + t.AuditedEgress
}

// PolicyTotals returns the packets counted per policy since the store
// began (packets of pods no known policy isolates are left out).
func (s *Store) PolicyTotals() map[string]PolicyTotal {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]PolicyTotal{}
	for k, v := range s.counts {
		if k.policy == "" {
			continue
		}
		t := out[k.policy]
		switch {
		case k.action == audit.ActionDrop && k.direction == audit.Ingress:
			t.DroppedIngress += v
		case k.action == audit.ActionDrop:
			t.DroppedEgress += v
		case k.action == audit.ActionAudit && k.direction == audit.Ingress:
			t.AuditedIngress += v
		case k.action == audit.ActionAudit:
			t.AuditedEgress += v
		}
		out[k.policy] = t
	}
	return out
}

// PolicyEvents records, every Interval, one Event on each NetworkPolicy or
// DefaultDeny whose isolation dropped or audited packets since its last
// Event: Warning PacketsDropped, or Normal PacketsAudited when it only
// audited. Each interval's Event is a new one with that interval's counts
// (an event recorder would fold them into a series that keeps the first
// note, and a note cannot be updated). At most Max Events per interval, the policies with the most
// packets first; the others keep their packets for a later interval. It
// runs on the leader only (every replica holds every drop). The counts
// start when it does: drops before this replica led are not reported.
type PolicyEvents struct {
	Store *Store
	// Client reads the policies (the manager's cache); Events writes.
	Client client.Reader
	Events eventsv1client.EventsGetter
	// Instance names this replica in the Events (reportingInstance).
	Instance string
	Interval time.Duration
	Max      int
	Log      logr.Logger

	reported map[string]PolicyTotal
}

// NeedLeaderElection is true: one replica records Events.
func (p *PolicyEvents) NeedLeaderElection() bool { return true }

// Start records Events until ctx ends.
func (p *PolicyEvents) Start(ctx context.Context) error {
	p.reported = p.Store.PolicyTotals()
	t := time.NewTicker(cmp.Or(p.Interval, DefaultEventInterval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			p.Record(ctx)
		}
	}
}

// Record records the Events of one interval and returns how many.
func (p *PolicyEvents) Record(ctx context.Context) int {
	if p.reported == nil {
		p.reported = map[string]PolicyTotal{}
	}
	type pending struct {
		policy   string
		total, d PolicyTotal
	}
	var due []pending
	for policy, total := range p.Store.PolicyTotals() {
		if d := total.minus(p.reported[policy]); d.sum() > 0 {
			due = append(due, pending{policy, total, d})
		}
	}
	slices.SortFunc(due, func(a, b pending) int {
		return cmp.Or(cmp.Compare(b.d.sum(), a.d.sum()), strings.Compare(a.policy, b.policy))
	})
	limit, recorded := cmp.Or(p.Max, DefaultEventMax), 0
	for _, e := range due {
		if recorded == limit {
			p.Log.V(1).Info("Policy drop Events deferred to the next interval", "policies", len(due)-recorded)
			break
		}
		obj, err := p.policy(ctx, e.policy)
		switch {
		case apierrors.IsNotFound(err):
			p.reported[e.policy] = e.total // deleted: nothing to attach it to
			continue
		case err != nil:
			p.Log.Error(err, "Cannot read the policy for its drop Event", "policy", e.policy)
			continue
		}
		if err := p.event(ctx, obj, e.policy, e.d); err != nil {
			p.Log.Error(err, "Cannot record the policy's drop Event", "policy", e.policy)
			continue
		}
		p.reported[e.policy] = e.total
		recorded++
	}
	return recorded
}

func (p *PolicyEvents) policy(ctx context.Context, policy string) (client.Object, error) {
	kind, rest, _ := strings.Cut(policy, "/")
	switch kind {
	case "NetworkPolicy":
		ns, name, ok := strings.Cut(rest, "/")
		if !ok {
			break
		}
		np := &networkingv1.NetworkPolicy{}
		return np, p.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, np)
	case "DefaultDeny":
		dd := &v1alpha1.DefaultDeny{}
		return dd, p.Client.Get(ctx, client.ObjectKey{Name: rest}, dd)
	}
	return nil, fmt.Errorf("policy %q is neither NetworkPolicy/<namespace>/<name> nor DefaultDeny/<name>", policy)
}

func (p *PolicyEvents) event(ctx context.Context, obj client.Object, policy string, d PolicyTotal) error {
	interval := cmp.Or(p.Interval, DefaultEventInterval)
	where := " -A"
	if ns := obj.GetNamespace(); ns != "" {
		where = " -n " + ns
	}
	hint := fmt.Sprintf("kubectl nftguard drops%s --policy %s", where, policy)
	typ, reason, action := corev1.EventTypeWarning, ReasonPacketsDropped, "Drop"
	var note string
	if dropped := d.DroppedIngress + d.DroppedEgress; dropped > 0 {
		note = fmt.Sprintf("Dropped %d packets within %s (ingress %d, egress %d)", dropped, interval, d.DroppedIngress, d.DroppedEgress)
		if audited := d.AuditedIngress + d.AuditedEgress; audited > 0 {
			note += fmt.Sprintf(", audited %d", audited)
		}
		note += "; see " + hint
	} else {
		typ, reason, action = corev1.EventTypeNormal, ReasonPacketsAudited, "Audit"
		note = fmt.Sprintf("Audited %d packets within %s that enforcement would drop (ingress %d, egress %d); see %s --action audit",
			d.AuditedIngress+d.AuditedEgress, interval, d.AuditedIngress, d.AuditedEgress, hint)
	}
	gvk := networkingv1.SchemeGroupVersion.WithKind("NetworkPolicy")
	if _, ok := obj.(*v1alpha1.DefaultDeny); ok {
		gvk = v1alpha1.GroupVersion.WithKind("DefaultDeny")
	}
	ns := cmp.Or(obj.GetNamespace(), metav1.NamespaceDefault) // as recorders do for cluster-scoped objects
	now := time.Now()
	ev := &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", obj.GetName(), now.UnixNano()), Namespace: ns},
		EventTime:  metav1.NewMicroTime(now), ReportingController: "nftguard.io/drops", ReportingInstance: p.Instance,
		Action: action, Reason: reason, Type: typ, Note: message.Bound(note),
		Regarding: corev1.ObjectReference{Kind: gvk.Kind, APIVersion: gvk.GroupVersion().String(), Namespace: obj.GetNamespace(),
			Name: obj.GetName(), UID: obj.GetUID(), ResourceVersion: obj.GetResourceVersion()},
	}
	_, err := p.Events.Events(ns).Create(ctx, ev, metav1.CreateOptions{})
	return err
}
