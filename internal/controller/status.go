package controller

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/compiler"
	"github.com/nftguard/nftguard/internal/message"
)

// State carries the outcome of the latest pass from the rule-set
// reconciler to the status reconciler: the spec each node's NodeRuleSet is
// to have, the policies' spans and the generations compiled. Whether a
// node enforces its rule set is read from the stored NodeRuleSet.
type State struct {
	mu          sync.RWMutex
	compiled    bool
	targets     map[string]v1alpha1.NodeRuleSetSpec
	spans       map[string]compiler.PolicySpan
	generations map[string]int64 // policy key -> generation compiled
	notify      chan event.GenericEvent
}

// NewState returns an empty State.
func NewState() *State {
	return &State{notify: make(chan event.GenericEvent, 1)}
}

// publish hands a copy of the pass's outcome to the status reconciler and
// wakes it.
func (s *State) publish(targets map[string]v1alpha1.NodeRuleSetSpec, spans map[string]compiler.PolicySpan, gens map[string]int64) {
	s.mu.Lock()
	s.compiled = true
	s.targets = maps.Clone(targets)
	s.spans = maps.Clone(spans)
	s.generations = maps.Clone(gens)
	s.mu.Unlock()
	select {
	case s.notify <- event.GenericEvent{Object: &v1alpha1.NodeRuleSet{}}:
	default: // a status pass is already due
	}
}

// progress returns a memoizing function giving each node's progress from
// the stored rule sets, for one policy (its key): on a node that leaves
// out some policies' rules, only those are TooLarge.
func (s *State) progress(present map[string]*v1alpha1.NodeRuleSet) func(policy string) func(string) v1alpha1.Progress {
	memo := make(map[[2]string]v1alpha1.Progress, len(s.targets))
	return func(policy string) func(string) v1alpha1.Progress {
		return func(node string) v1alpha1.Progress {
			if p, ok := memo[[2]string{policy, node}]; ok {
				return p
			}
			target, ok := s.targets[node]
			p := nodeProgress(present[node], target, ok, policy)
			memo[[2]string{policy, node}] = p
			return p
		}
	}
}

// StatusReconciler aggregates the agents' NodeRuleSet status into each
// DefaultDeny's status and into Events on NetworkPolicies, so that
// `kubectl get dd` and `kubectl describe networkpolicy` show enforcement.
type StatusReconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
	State    *State
	// ExemptNamespaces are namespaces whose pods no policy isolates: a
	// DefaultDeny's status lists those its selector matches, and each
	// NetworkPolicy in one gets a warning that it is not enforced.
	ExemptNamespaces []string

	// DropCounts, when set, fills in DefaultDeny status drops, at most
	// every DropCountsInterval per DefaultDeny.
	DropCounts         DropCounter
	DropCountsInterval time.Duration

	// reported remembers the last event per NetworkPolicy so each state is
	// reported once.
	reported map[types.NamespacedName]string
	// countedAt is when each DefaultDeny's drops were last refreshed.
	countedAt map[string]time.Time
}

// defaultDropCountsInterval bounds how often a DefaultDeny's status is
// written for its drop counts alone.
const defaultDropCountsInterval = 30 * time.Second

// +kubebuilder:rbac:groups=nftguard.io,resources=defaultdenies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=nftguard.io,resources=noderulesets,verbs=get;list;watch

// Reconcile recomputes every DefaultDeny status and NetworkPolicy event.
func (r *StatusReconciler) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	r.State.mu.RLock()
	defer r.State.mu.RUnlock()
	if !r.State.compiled {
		return reconcile.Result{}, nil // the first compile notifies us
	}
	// Rule sets and NetworkPolicies are only read here: list them from the
	// cache without the deep copy of every object (at 1,000 nodes and
	// 75,000 policies, a copy per pass was tens of megabytes).
	var rsList v1alpha1.NodeRuleSetList
	if err := r.Client.List(ctx, &rsList, client.UnsafeDisableDeepCopy); err != nil {
		return reconcile.Result{}, fmt.Errorf("listing NodeRuleSets: %w", err)
	}
	present := map[string]*v1alpha1.NodeRuleSet{}
	for i := range rsList.Items {
		present[rsList.Items[i].Name] = &rsList.Items[i]
	}
	progress := r.State.progress(present)

	var errs []error
	var dds v1alpha1.DefaultDenyList
	if err := r.Client.List(ctx, &dds); err != nil {
		return reconcile.Result{}, fmt.Errorf("listing DefaultDenies: %w", err)
	}
	for i := range dds.Items {
		dd := &dds.Items[i]
		key := v1alpha1.DefaultDenyKey(dd.Name)
		gen, ok := r.State.generations[key]
		if !ok || gen != dd.Generation {
			continue // not compiled yet; the compile that includes it notifies us
		}
		span := r.State.spans[key]
		progress := progress(key)
		want := defaultDenyStatus(dd.Status, v1alpha1.SummarizeProgress(span.Nodes, progress), span.SelectedPods, progress, dd.Generation)
		exempt, err := r.exemptMatches(ctx, dd)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		want.ExemptNamespaces = exempt
		want.Drops = r.drops(key, dd.Status.Drops)
		if errs := dd.Spec.SelectorErrors(); len(errs) > 0 {
			meta.SetStatusCondition(&want.Conditions, metav1.Condition{
				Type: v1alpha1.ConditionEnforced, Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonInvalidSelector,
				ObservedGeneration: dd.Generation,
				Message: message.Bound("Not enforced as written, fix the selector: " + errs.ToAggregate().Error() +
					". Meanwhile an invalid namespaceSelector selects no namespace, an invalid podSelector isolates every pod of the selected namespaces, and an invalid peer selector allows nothing"),
			})
		}
		if equality.Semantic.DeepEqual(dd.Status, want) {
			continue
		}
		patch := client.MergeFrom(dd.DeepCopy())
		dd.Status = want
		if err := r.Client.Status().Patch(ctx, dd, patch); err != nil && !apierrors.IsNotFound(err) {
			writeErrors.WithLabelValues("DefaultDeny").Inc()
			errs = append(errs, fmt.Errorf("updating DefaultDeny %s status: %w", dd.Name, err))
			continue
		}
		objectWrites.WithLabelValues("DefaultDeny", "status").Inc()
	}

	var nps networkingv1.NetworkPolicyList
	if err := r.Client.List(ctx, &nps, client.UnsafeDisableDeepCopy); err != nil {
		return reconcile.Result{}, fmt.Errorf("listing NetworkPolicies: %w", err)
	}
	r.reportPolicies(ctx, nps.Items, progress)

	if len(errs) > 0 {
		return reconcile.Result{}, errs[0]
	}
	if r.DropCounts != nil {
		// Counts change without an event: look again.
		return reconcile.Result{RequeueAfter: r.dropCountsInterval()}, nil
	}
	return reconcile.Result{}, nil
}

func (r *StatusReconciler) dropCountsInterval() time.Duration {
	if r.DropCountsInterval > 0 {
		return r.DropCountsInterval
	}
	return defaultDropCountsInterval
}

// drops returns a DefaultDeny's drop counts: fresh when the last refresh is
// older than the interval (or the counts are none yet), else as they were.
func (r *StatusReconciler) drops(key string, cur *v1alpha1.DropCounts) *v1alpha1.DropCounts {
	if r.DropCounts == nil {
		return cur
	}
	now := time.Now()
	if cur != nil && now.Sub(r.countedAt[key]) < r.dropCountsInterval() {
		return cur
	}
	dropped, audited, since := r.DropCounts(key)
	if r.countedAt == nil {
		r.countedAt = map[string]time.Time{}
	}
	r.countedAt[key] = now
	return &v1alpha1.DropCounts{Dropped: int64(dropped), Audited: int64(audited), Since: metav1.NewTime(since.Truncate(time.Second))}
}

// reportPolicies records an Event on each NetworkPolicy whose enforcement
// changed: Enforced once every node it spans programmed it, a warning when a
// node failed, is uninstalled or its rule set is too large.
func (r *StatusReconciler) reportPolicies(ctx context.Context, nps []networkingv1.NetworkPolicy, progressOf func(string) func(string) v1alpha1.Progress) {
	if r.reported == nil {
		r.reported = map[types.NamespacedName]string{}
	}
	seen := map[types.NamespacedName]bool{}
	for i := range nps {
		np := &nps[i]
		id := types.NamespacedName{Namespace: np.Namespace, Name: np.Name}
		seen[id] = true
		key := v1alpha1.NetworkPolicyKey(np.Namespace, np.Name)
		if gen, ok := r.State.generations[key]; !ok || gen != np.Generation {
			continue
		}
		if slices.Contains(r.ExemptNamespaces, np.Namespace) {
			state := "NotEnforced|" + fmt.Sprint(np.Generation)
			if r.reported[id] != state {
				r.reported[id] = state
				r.Recorder.Eventf(np, nil, corev1.EventTypeWarning, v1alpha1.ReasonNotEnforced, "Enforce",
					"Not enforced: namespace %s is nftguard's own, whose pods no policy isolates, so that no policy can cut nftguard off the API server", np.Namespace)
			}
			continue
		}
		span := r.State.spans[key]
		progress := progressOf(key)
		p := v1alpha1.SummarizeProgress(span.Nodes, progress)
		typ, note, ok := policyEvent(p, span.SelectedPods, progress, np.Generation)
		if !ok {
			continue // nothing selected, or still programming: nothing new to say
		}
		reason := p.Reason
		state := strings.Join([]string{reason, fmt.Sprint(np.Generation), note}, "|")
		if r.reported[id] == state {
			continue
		}
		r.reported[id] = state
		r.Recorder.Eventf(np, nil, typ, reason, "Enforce", "%s", note)
		log.FromContext(ctx).V(1).Info("Reported NetworkPolicy enforcement", "networkPolicy", id, "reason", reason)
	}
	for id := range r.reported {
		if !seen[id] {
			delete(r.reported, id)
		}
	}
}

// exemptMatches returns the exempt namespaces a DefaultDeny's namespace
// selector matches, sorted; a namespace that does not exist matches by its
// name label alone.
func (r *StatusReconciler) exemptMatches(ctx context.Context, dd *v1alpha1.DefaultDeny) ([]string, error) {
	if len(r.ExemptNamespaces) == 0 {
		return nil, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(dd.Spec.NamespaceSelector.ToMeta())
	if err != nil {
		return nil, nil // admission rejects such selectors; it selects nothing
	}
	var out []string
	for _, name := range r.ExemptNamespaces {
		set := labels.Set{corev1.LabelMetadataName: name}
		ns := &corev1.Namespace{}
		if err := r.Client.Get(ctx, client.ObjectKey{Name: name}, ns); err == nil {
			for k, v := range ns.Labels {
				set[k] = v
			}
			set[corev1.LabelMetadataName] = name
		} else if !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("reading namespace %s: %w", name, err)
		}
		if sel.Matches(set) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out, nil
}

// SetupWithManager registers the reconciler: it runs after each compile and
// whenever an agent reports status or a DefaultDeny changes.
func (r *StatusReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.State == nil {
		return fmt.Errorf("StatusReconciler needs a State")
	}
	statusRequest := reconcile.Request{NamespacedName: types.NamespacedName{Name: "status"}}
	one := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{statusRequest}
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("status").
		WithOptions(controller.Options{MaxConcurrentReconciles: 1}).
		Watches(&v1alpha1.NodeRuleSet{}, one).
		Watches(&v1alpha1.DefaultDeny{}, one).
		WatchesRawSource(source.Channel(r.State.notify, handler.EnqueueRequestsFromMapFunc(
			func(context.Context, client.Object) []reconcile.Request { return []reconcile.Request{statusRequest} }))).
		Complete(r)
}
