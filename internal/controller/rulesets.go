package controller

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/compiler"
)

// DefaultMaxObjectBytes bounds the serialized spec of a NodeRuleSet or an
// AddressGroup. etcd refuses requests above 1.5 MiB; the margin leaves room
// for metadata and status.
const DefaultMaxObjectBytes = 1400 * 1024

// clusterRequest is the single work item of the rule-set reconciler: every
// watch event maps to it, so a burst of events is coalesced into one compile.
var clusterRequest = reconcile.Request{NamespacedName: types.NamespacedName{Name: "cluster"}}

// fullResyncPeriod bounds how long a divergence the watches did not report
// can survive: every so often a pass compares every output with the API.
const fullResyncPeriod = 10 * time.Minute

// RuleSetReconciler compiles every NetworkPolicy and DefaultDeny into one
// NodeRuleSet per node and the AddressGroups they reference, and writes only
// the objects whose content changed. Watch events feed an incremental
// compiler.Engine, so a pod event recompiles the pod's node and the groups
// it belongs to, not the cluster. Hand edits to its outputs are undone; rule
// sets of deleted nodes and unreferenced groups are deleted.
type RuleSetReconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
	// State receives each compile's outcome for the status reconciler.
	State *State
	// MaxObjectBytes bounds a written spec (DefaultMaxObjectBytes when 0).
	MaxObjectBytes int
	// MaxGroupEntries bounds the entries of one AddressGroup object: a group
	// with more is written as several, its shards
	// (compiler.DefaultMaxGroupEntries when 0).
	MaxGroupEntries int
	// ExemptNamespaces are namespaces whose pods no policy isolates.
	ExemptNamespaces []string

	coalesced atomic.Int64

	mu     sync.Mutex // guards engine and the pending sets below
	engine *compiler.Engine
	// pendingGens holds the generations of policies seen since the last pass.
	pendingGens map[string]int64
	dirtyRS     map[string]struct{} // outputs to compare again (edited, deleted, failed)
	dirtyAG     map[string]struct{}

	// Owned by the single worker running Reconcile.
	desiredRS map[string]v1alpha1.NodeRuleSetSpec
	desiredAG map[string]v1alpha1.AddressGroupSpec
	// targets holds the spec each node's NodeRuleSet is to have (see
	// plan.Targets), for the status reconciler.
	targets     map[string]v1alpha1.NodeRuleSetSpec
	reach       reach                               // group -> bucket -> references (span labels)
	kept        map[string]v1alpha1.NodeRuleSetSpec // node -> previous spec it keeps (see plan.Kept)
	spans       map[string]compiler.PolicySpan
	gens        map[string]int64
	oversizedRS map[string]int // node -> bytes of its compiled spec, when above the limit
	oversizedAG map[string]int // group -> bytes of its spec, when above the limit
	lastFull    time.Time
	synced      bool // a full pass has succeeded
	hinted      bool // the engine has the shard levels of the groups in the API
}

// +kubebuilder:rbac:groups="",resources=pods;namespaces;nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=nftguard.io,resources=defaultdenies,verbs=get;list;watch
// +kubebuilder:rbac:groups=nftguard.io,resources=noderulesets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=nftguard.io,resources=addressgroups,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=nftguard.io,resources=addressgroups/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile brings the compiled state up to date with the events received
// since the last pass and converges the NodeRuleSets and AddressGroups that
// changed (all of them on the first pass and every fullResyncPeriod).
func (r *RuleSetReconciler) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	logger := log.FromContext(ctx)
	pendingEvents.Set(float64(r.coalesced.Swap(0)))

	var levels map[string]int
	if !r.hinted {
		var err error
		if levels, err = r.shardLevels(ctx); err != nil {
			return reconcile.Result{}, err
		}
		r.hinted = true
	}

	r.mu.Lock()
	if levels != nil {
		r.engine.HintShardLevels(levels)
	}
	start := time.Now()
	delta := r.engine.Changes()
	compileDuration.Observe(time.Since(start).Seconds())
	dirtyRS, dirtyAG := r.dirtyRS, r.dirtyAG
	r.dirtyRS, r.dirtyAG = map[string]struct{}{}, map[string]struct{}{}
	for k, g := range r.pendingGens {
		r.gens[k] = g
	}
	clear(r.pendingGens)
	r.mu.Unlock()

	for name, spec := range delta.NodeRuleSets {
		r.setDesiredRS(name, spec, dirtyAG)
		dirtyRS[name] = struct{}{}
	}
	for name, spec := range delta.AddressGroups {
		if spec == nil {
			delete(r.desiredAG, name)
		} else {
			r.desiredAG[name] = *spec
		}
		dirtyAG[name] = struct{}{}
	}
	for key, span := range delta.Policies {
		if span == nil {
			delete(r.spans, key)
			delete(r.gens, key)
		} else {
			r.spans[key] = *span
		}
	}
	logger.V(1).Info("Compiled changes", "nodes", len(delta.NodeRuleSets), "addressGroups", len(delta.AddressGroups),
		"policies", len(delta.Policies), "duration", time.Since(start))

	full := !r.synced || time.Since(r.lastFull) > fullResyncPeriod
	if full {
		if err := r.markAll(ctx, dirtyRS, dirtyAG); err != nil {
			r.requeue(dirtyRS, dirtyAG)
			return reconcile.Result{}, err
		}
	}
	err := r.converge(ctx, dirtyRS, dirtyAG)
	r.State.publish(r.targets, r.spans, r.gens)
	if err != nil {
		return reconcile.Result{}, err
	}
	if full {
		r.synced, r.lastFull = true, time.Now()
	}
	return reconcile.Result{RequeueAfter: fullResyncPeriod}, nil
}

// shardLevels returns the shard levels of the groups split into shards in
// the API, by group name, so that the engine keeps the shards a previous run
// wrote rather than choosing again (a group between two levels would
// otherwise be rewritten, with every rule set referencing it).
func (r *RuleSetReconciler) shardLevels(ctx context.Context) (map[string]int, error) {
	var list v1alpha1.AddressGroupList
	if err := r.Client.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("listing AddressGroups: %w", err)
	}
	levels := map[string]int{}
	for _, ag := range list.Items {
		if group, level, _, ok := compiler.ParseShardName(ag.Name); ok && level > levels[group] {
			levels[group] = level
		}
	}
	return levels, nil
}

// setDesiredRS records a node's compiled spec (nil: the node is gone),
// marking the groups it referenced and references, whose reference counts
// may have changed, so their status is compared.
func (r *RuleSetReconciler) setDesiredRS(name string, spec *v1alpha1.NodeRuleSetSpec, dirtyAG map[string]struct{}) {
	if old, ok := r.desiredRS[name]; ok {
		r.reach.add(name, &old, -1, dirtyAG)
	}
	if spec == nil {
		delete(r.desiredRS, name)
		return
	}
	r.desiredRS[name] = *spec
	r.reach.add(name, spec, +1, dirtyAG)
}

// markAll adds every existing and desired output to the sets to compare.
func (r *RuleSetReconciler) markAll(ctx context.Context, dirtyRS, dirtyAG map[string]struct{}) error {
	var rsList v1alpha1.NodeRuleSetList
	if err := r.Client.List(ctx, &rsList); err != nil {
		return fmt.Errorf("listing NodeRuleSets: %w", err)
	}
	var agList v1alpha1.AddressGroupList
	if err := r.Client.List(ctx, &agList); err != nil {
		return fmt.Errorf("listing AddressGroups: %w", err)
	}
	for _, rs := range rsList.Items {
		dirtyRS[rs.Name] = struct{}{}
	}
	for _, ag := range agList.Items {
		dirtyAG[ag.Name] = struct{}{}
	}
	for name := range r.desiredRS {
		dirtyRS[name] = struct{}{}
	}
	for name := range r.desiredAG {
		dirtyAG[name] = struct{}{}
	}
	return nil
}

// requeue hands outputs back for the next pass.
func (r *RuleSetReconciler) requeue(rs, ag map[string]struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for n := range rs {
		r.dirtyRS[n] = struct{}{}
	}
	for n := range ag {
		r.dirtyAG[n] = struct{}{}
	}
}

// maxBytes is the size limit of a written spec.
func (r *RuleSetReconciler) maxBytes() int {
	if r.MaxObjectBytes > 0 {
		return r.MaxObjectBytes
	}
	return DefaultMaxObjectBytes
}

// ManagedByLabel marks the objects the controller owns.
const ManagedByLabel = "app.kubernetes.io/managed-by"

func managedLabels() map[string]string {
	return map[string]string{ManagedByLabel: "nftguard-controller"}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// SetupWithManager registers the reconciler. Watch events feed the engine
// and map to the single cluster request; pod updates that cannot change the
// compiled output are filtered out before they reach it.
func (r *RuleSetReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.State == nil {
		return fmt.Errorf("RuleSetReconciler needs a State")
	}
	r.engine = compiler.NewEngineWith(compiler.Options{MaxGroupEntries: r.MaxGroupEntries, ExemptNamespaces: r.ExemptNamespaces})
	r.pendingGens = map[string]int64{}
	r.dirtyRS, r.dirtyAG = map[string]struct{}{}, map[string]struct{}{}
	r.desiredRS = map[string]v1alpha1.NodeRuleSetSpec{}
	r.desiredAG = map[string]v1alpha1.AddressGroupSpec{}
	r.targets = map[string]v1alpha1.NodeRuleSetSpec{}
	r.reach = reach{}
	r.kept = map[string]v1alpha1.NodeRuleSetSpec{}
	r.spans = map[string]compiler.PolicySpan{}
	r.gens = map[string]int64{}
	r.oversizedRS = map[string]int{}
	r.oversizedAG = map[string]int{}

	pods := r.feed(func(o client.Object) {
		r.engine.UpsertPod(o.(*corev1.Pod))
	}, func(o client.Object) { r.engine.DeletePod(o.GetNamespace(), o.GetName()) })
	namespaces := r.feed(func(o client.Object) {
		r.engine.UpsertNamespace(o.(*corev1.Namespace))
	}, func(o client.Object) { r.engine.DeleteNamespace(o.GetName()) })
	nodes := r.feed(func(o client.Object) {
		if !o.GetDeletionTimestamp().IsZero() {
			r.engine.DeleteNode(o.GetName())
			return
		}
		r.engine.UpsertNode(o.(*corev1.Node))
	}, func(o client.Object) { r.engine.DeleteNode(o.GetName()) })
	nps := r.feed(func(o client.Object) {
		r.engine.UpsertNetworkPolicy(o.(*networkingv1.NetworkPolicy))
		r.pendingGens[v1alpha1.NetworkPolicyKey(o.GetNamespace(), o.GetName())] = o.GetGeneration()
	}, func(o client.Object) { r.engine.DeleteNetworkPolicy(o.GetNamespace(), o.GetName()) })
	dds := r.feed(func(o client.Object) {
		if !o.GetDeletionTimestamp().IsZero() {
			r.engine.DeleteDefaultDeny(o.GetName())
			return
		}
		r.engine.UpsertDefaultDeny(o.(*v1alpha1.DefaultDeny))
		r.pendingGens[v1alpha1.DefaultDenyKey(o.GetName())] = o.GetGeneration()
	}, func(o client.Object) { r.engine.DeleteDefaultDeny(o.GetName()) })
	ruleSets := r.feed(func(o client.Object) { r.dirtyRS[o.GetName()] = struct{}{} },
		func(o client.Object) { r.dirtyRS[o.GetName()] = struct{}{} })
	groups := r.feed(func(o client.Object) { r.dirtyAG[o.GetName()] = struct{}{} },
		func(o client.Object) { r.dirtyAG[o.GetName()] = struct{}{} })

	return ctrl.NewControllerManagedBy(mgr).
		Named("rulesets").
		WithOptions(controller.Options{MaxConcurrentReconciles: 1}).
		Watches(&corev1.Pod{}, pods, builder.WithPredicates(podChanged)).
		Watches(&corev1.Namespace{}, namespaces, builder.WithPredicates(predicate.LabelChangedPredicate{})).
		Watches(&corev1.Node{}, nodes, builder.WithPredicates(nodeChanged)).
		Watches(&networkingv1.NetworkPolicy{}, nps, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&v1alpha1.DefaultDeny{}, dds, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// Spec edits (hand edits to repair) and deletions of the outputs.
		Watches(&v1alpha1.NodeRuleSet{}, ruleSets, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&v1alpha1.AddressGroup{}, groups, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Complete(r)
}

// feed returns an event handler that applies watch events to the engine
// (under the lock) and enqueues the cluster request.
func (r *RuleSetReconciler) feed(upsert, remove func(client.Object)) handler.EventHandler {
	apply := func(f func(client.Object), o client.Object, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		r.mu.Lock()
		f(o)
		r.mu.Unlock()
		r.coalesced.Add(1)
		q.Add(clusterRequest)
	}
	return handler.Funcs{
		CreateFunc: func(_ context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			apply(upsert, e.Object, q)
		},
		UpdateFunc: func(_ context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			apply(upsert, e.ObjectNew, q)
		},
		DeleteFunc: func(_ context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			apply(remove, e.Object, q)
		},
	}
}

// podChanged passes pod events that can change what the compiler produces.
var podChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		o, ok1 := e.ObjectOld.(*corev1.Pod)
		n, ok2 := e.ObjectNew.(*corev1.Pod)
		if !ok1 || !ok2 {
			return true
		}
		return !equality.Semantic.DeepEqual(o.Labels, n.Labels) ||
			o.Spec.NodeName != n.Spec.NodeName ||
			o.Spec.HostNetwork != n.Spec.HostNetwork ||
			o.Status.Phase != n.Status.Phase ||
			o.Status.PodIP != n.Status.PodIP ||
			!equality.Semantic.DeepEqual(o.Status.PodIPs, n.Status.PodIPs) ||
			!equality.Semantic.DeepEqual(containerPorts(o), containerPorts(n))
	},
}

func containerPorts(p *corev1.Pod) []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, c := range p.Spec.InitContainers {
		out = append(out, c.Ports...)
	}
	for _, c := range p.Spec.Containers {
		out = append(out, c.Ports...)
	}
	return out
}

// nodeChanged passes node creation and deletion, the start of a deletion,
// and changes of the node's pod CIDRs (its rule set carries them).
var nodeChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		if e.ObjectOld.GetDeletionTimestamp().IsZero() != e.ObjectNew.GetDeletionTimestamp().IsZero() ||
			e.ObjectOld.GetUID() != e.ObjectNew.GetUID() {
			return true
		}
		o, ok1 := e.ObjectOld.(*corev1.Node)
		n, ok2 := e.ObjectNew.(*corev1.Node)
		return !ok1 || !ok2 || o.Spec.PodCIDR != n.Spec.PodCIDR || !slices.Equal(o.Spec.PodCIDRs, n.Spec.PodCIDRs)
	},
}
