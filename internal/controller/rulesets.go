package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
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
	refs      map[string]int32 // group -> rule sets referencing it
	spans     map[string]compiler.PolicySpan
	gens      map[string]int64
	oversized map[string]int
	lastFull  time.Time
	synced    bool // a full pass has succeeded
	hinted    bool // the engine has the shard levels of the groups in the API
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
	r.State.publish(r.desiredRS, r.spans, r.gens, r.oversized)
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

// setDesiredRS records a node's compiled spec (nil: the node is gone) and
// keeps the group reference counts in step, marking groups whose count
// changed so their status is rewritten.
func (r *RuleSetReconciler) setDesiredRS(name string, spec *v1alpha1.NodeRuleSetSpec, dirtyAG map[string]struct{}) {
	if old, ok := r.desiredRS[name]; ok {
		for _, g := range old.AddressGroups {
			dirtyAG[g] = struct{}{}
			r.refs[g]--
			if r.refs[g] <= 0 {
				delete(r.refs, g)
			}
		}
	}
	if spec == nil {
		delete(r.desiredRS, name)
		return
	}
	r.desiredRS[name] = *spec
	for _, g := range spec.AddressGroups {
		dirtyAG[g] = struct{}{}
		r.refs[g]++
	}
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

// converge writes the given outputs where the API differs from the compiled
// state: groups first (a rule set never references a group that does not
// exist yet), then rule sets, then deletions of rule sets of deleted nodes
// and of groups nothing references.
func (r *RuleSetReconciler) converge(ctx context.Context, dirtyRS, dirtyAG map[string]struct{}) error {
	logger := log.FromContext(ctx)
	failedRS, failedAG := map[string]struct{}{}, map[string]struct{}{}
	var errs []error
	keepGroups := map[string]bool{}

	for _, name := range sortedKeys(dirtyAG) {
		spec, ok := r.desiredAG[name]
		if !ok {
			continue
		}
		delete(r.oversized, "AddressGroup/"+name)
		if size := specSize(spec); size > r.maxBytes() {
			r.oversized["AddressGroup/"+name] = size
			logger.Error(nil, "Address group exceeds the object size limit; not written", "addressGroup", name, "bytes", size, "limit", r.maxBytes())
			r.reportOversizedGroup(ctx, name, size)
			continue
		}
		cur, err := r.getGroup(ctx, name)
		if err == nil {
			err = r.writeGroup(ctx, name, spec, cur)
		}
		if err == nil {
			err = r.writeGroupStatus(ctx, name, spec, r.refs[name])
		}
		if err != nil {
			errs = append(errs, err)
			failedAG[name] = struct{}{}
		}
	}

	largest := 0
	for _, name := range sortedKeys(dirtyRS) {
		cur := &v1alpha1.NodeRuleSet{}
		if err := r.Client.Get(ctx, client.ObjectKey{Name: name}, cur); err != nil {
			if !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("reading NodeRuleSet %s: %w", name, err))
				failedRS[name] = struct{}{}
				continue
			}
			cur = nil
		}
		spec, ok := r.desiredRS[name]
		if !ok {
			if cur != nil {
				if err := r.deleteStaleRuleSet(ctx, cur); err != nil {
					errs = append(errs, err)
					failedRS[name] = struct{}{}
				}
			}
			continue
		}
		node := &corev1.Node{}
		if err := r.Client.Get(ctx, client.ObjectKey{Name: name}, node); err != nil {
			// The engine saw the node; the cache will too. Try again then.
			errs = append(errs, fmt.Errorf("reading Node %s: %w", name, err))
			failedRS[name] = struct{}{}
			continue
		}
		delete(r.oversized, "NodeRuleSet/"+name)
		size := specSize(spec)
		largest = max(largest, size)
		if size > r.maxBytes() {
			r.oversized["NodeRuleSet/"+name] = size
			logger.Error(nil, "Rule set exceeds the object size limit; the node keeps its last rule set", "node", name, "bytes", size, "limit", r.maxBytes())
			r.Recorder.Eventf(node, nil, corev1.EventTypeWarning, v1alpha1.ReasonRuleSetTooLarge, "Compile",
				"Compiled rule set is %d bytes, above the %d-byte object limit; the node keeps enforcing its previous rule set", size, r.maxBytes())
			if cur != nil {
				for _, g := range cur.Spec.AddressGroups {
					keepGroups[g] = true
				}
			}
			continue
		}
		if err := r.writeRuleSet(ctx, node, spec, cur); err != nil {
			errs = append(errs, err)
			failedRS[name] = struct{}{}
			if cur != nil {
				for _, g := range cur.Spec.AddressGroups {
					keepGroups[g] = true
				}
			}
		}
	}
	largestRuleSetBytes.Set(float64(max(largest, r.largestKnown())))
	oversizedObjects.Set(float64(len(r.oversized)))

	for _, name := range sortedKeys(dirtyAG) {
		if _, ok := r.desiredAG[name]; ok {
			continue
		}
		if keepGroups[name] {
			failedAG[name] = struct{}{} // delete it once no stale rule set needs it
			continue
		}
		ag := &v1alpha1.AddressGroup{}
		if err := r.Client.Get(ctx, client.ObjectKey{Name: name}, ag); err != nil {
			if !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("reading AddressGroup %s: %w", name, err))
				failedAG[name] = struct{}{}
			}
			continue
		}
		logger.V(1).Info("Deleting unreferenced address group", "addressGroup", name)
		if err := r.Client.Delete(ctx, ag, client.Preconditions{UID: &ag.UID}); err != nil && !apierrors.IsNotFound(err) {
			writeErrors.WithLabelValues("AddressGroup").Inc()
			errs = append(errs, fmt.Errorf("deleting AddressGroup %s: %w", name, err))
			failedAG[name] = struct{}{}
			continue
		}
		objectWrites.WithLabelValues("AddressGroup", "delete").Inc()
	}

	if len(failedRS)+len(failedAG) > 0 {
		r.requeue(failedRS, failedAG)
	}
	if len(errs) > 0 {
		return fmt.Errorf("converging rule sets: %d writes failed, first: %w", len(errs), errs[0])
	}
	return nil
}

// reportOversizedGroup records a warning on every node whose rule set
// references a group too large to write: those nodes keep the group's last
// written members, or cannot program the rule set if it was never written.
func (r *RuleSetReconciler) reportOversizedGroup(ctx context.Context, group string, size int) {
	for name, spec := range r.desiredRS {
		if !slices.Contains(spec.AddressGroups, group) {
			continue
		}
		node := &corev1.Node{}
		if err := r.Client.Get(ctx, client.ObjectKey{Name: name}, node); err != nil {
			continue
		}
		r.Recorder.Eventf(node, nil, corev1.EventTypeWarning, v1alpha1.ReasonAddressGroupTooLarge, "Compile",
			"Address group %s is %d bytes, above the %d-byte object limit; its membership is not updated", group, size, r.maxBytes())
	}
}

// largestKnown is the largest desired rule set recorded as oversized.
func (r *RuleSetReconciler) largestKnown() int {
	n := 0
	for k, v := range r.oversized {
		if strings.HasPrefix(k, "NodeRuleSet/") {
			n = max(n, v)
		}
	}
	return n
}

// deleteStaleRuleSet deletes the rule set of a node that no longer exists.
// The owner reference lets the garbage collector do this too; doing it here
// makes it independent of it.
func (r *RuleSetReconciler) deleteStaleRuleSet(ctx context.Context, rs *v1alpha1.NodeRuleSet) error {
	node := &corev1.Node{}
	err := r.Client.Get(ctx, client.ObjectKey{Name: rs.Name}, node)
	if err == nil && node.DeletionTimestamp.IsZero() {
		return nil // the engine has not seen this node yet; its event will come
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("reading Node %s: %w", rs.Name, err)
	}
	log.FromContext(ctx).Info("Deleting rule set of a deleted node", "node", rs.Name)
	if err := r.Client.Delete(ctx, rs, client.Preconditions{UID: &rs.UID}); err != nil && !apierrors.IsNotFound(err) {
		writeErrors.WithLabelValues("NodeRuleSet").Inc()
		return fmt.Errorf("deleting NodeRuleSet %s: %w", rs.Name, err)
	}
	objectWrites.WithLabelValues("NodeRuleSet", "delete").Inc()
	return nil
}

func (r *RuleSetReconciler) getGroup(ctx context.Context, name string) (*v1alpha1.AddressGroup, error) {
	ag := &v1alpha1.AddressGroup{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: name}, ag); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("reading AddressGroup %s: %w", name, err)
	}
	return ag, nil
}

func (r *RuleSetReconciler) maxBytes() int {
	if r.MaxObjectBytes > 0 {
		return r.MaxObjectBytes
	}
	return DefaultMaxObjectBytes
}

func specSize(spec any) int {
	b, err := json.Marshal(spec)
	if err != nil {
		return 0
	}
	return len(b)
}

// writeGroup and writeRuleSet give the client a copy of the spec: the client
// decodes the API server's response into the object it is given, reusing its
// slices, maps and pointers, and the desired specs are shared with the
// compiler.Engine, which must not see them change.
func (r *RuleSetReconciler) writeGroup(ctx context.Context, name string, spec v1alpha1.AddressGroupSpec, cur *v1alpha1.AddressGroup) error {
	if cur == nil {
		ag := &v1alpha1.AddressGroup{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: managedLabels()}, Spec: *spec.DeepCopy()}
		if err := r.Client.Create(ctx, ag); err != nil && !apierrors.IsAlreadyExists(err) {
			writeErrors.WithLabelValues("AddressGroup").Inc()
			return fmt.Errorf("creating AddressGroup %s: %w", name, err)
		}
		objectWrites.WithLabelValues("AddressGroup", "create").Inc()
		return nil
	}
	if equality.Semantic.DeepEqual(cur.Spec, spec) {
		return nil
	}
	// A merge patch without a resource version: the controller is the only
	// writer of specs, and its own status writes must not make it retry.
	ag := cur.DeepCopy()
	ag.Spec = *spec.DeepCopy()
	if err := r.Client.Patch(ctx, ag, client.MergeFrom(cur)); err != nil {
		writeErrors.WithLabelValues("AddressGroup").Inc()
		return fmt.Errorf("updating AddressGroup %s: %w", name, err)
	}
	objectWrites.WithLabelValues("AddressGroup", "update").Inc()
	return nil
}

func (r *RuleSetReconciler) writeGroupStatus(ctx context.Context, name string, spec v1alpha1.AddressGroupSpec, nodes int32) error {
	var cur v1alpha1.AddressGroup
	if err := r.Client.Get(ctx, client.ObjectKey{Name: name}, &cur); err != nil {
		if apierrors.IsNotFound(err) {
			return nil // the create is not in the cache yet; its watch event brings us back
		}
		return fmt.Errorf("reading AddressGroup %s: %w", name, err)
	}
	want := v1alpha1.AddressGroupStatus{Size: int32(len(spec.Addresses) + len(spec.Endpoints)), Nodes: nodes}
	if cur.Status == want {
		return nil
	}
	patch := client.MergeFrom(cur.DeepCopy())
	cur.Status = want
	if err := r.Client.Status().Patch(ctx, &cur, patch); err != nil && !apierrors.IsNotFound(err) {
		writeErrors.WithLabelValues("AddressGroup").Inc()
		return fmt.Errorf("updating AddressGroup %s status: %w", name, err)
	}
	objectWrites.WithLabelValues("AddressGroup", "status").Inc()
	return nil
}

func (r *RuleSetReconciler) writeRuleSet(ctx context.Context, node *corev1.Node, spec v1alpha1.NodeRuleSetSpec, cur *v1alpha1.NodeRuleSet) error {
	if cur == nil {
		rs := &v1alpha1.NodeRuleSet{
			ObjectMeta: metav1.ObjectMeta{
				Name:   node.Name,
				Labels: managedLabels(),
				OwnerReferences: []metav1.OwnerReference{{
					APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID,
					Controller: ptr.To(true),
				}},
			},
			Spec: *spec.DeepCopy(),
		}
		if err := r.Client.Create(ctx, rs); err != nil && !apierrors.IsAlreadyExists(err) {
			writeErrors.WithLabelValues("NodeRuleSet").Inc()
			return fmt.Errorf("creating NodeRuleSet %s: %w", node.Name, err)
		}
		objectWrites.WithLabelValues("NodeRuleSet", "create").Inc()
		return nil
	}
	if equality.Semantic.DeepEqual(cur.Spec, spec) && ownedBy(cur, node) {
		return nil
	}
	rs := cur.DeepCopy()
	rs.Spec = *spec.DeepCopy()
	if !ownedBy(cur, node) {
		// A node deleted and re-created under the same name gets a new UID.
		rs.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID, Controller: ptr.To(true)}}
	}
	// A merge patch without a resource version: the controller is the only
	// writer of specs, and the agent writes status all the time, so an
	// optimistic update from the cache would keep conflicting.
	if err := r.Client.Patch(ctx, rs, client.MergeFrom(cur)); err != nil {
		writeErrors.WithLabelValues("NodeRuleSet").Inc()
		return fmt.Errorf("updating NodeRuleSet %s: %w", node.Name, err)
	}
	objectWrites.WithLabelValues("NodeRuleSet", "update").Inc()
	return nil
}

func ownedBy(rs *v1alpha1.NodeRuleSet, node *corev1.Node) bool {
	return slices.ContainsFunc(rs.OwnerReferences, func(o metav1.OwnerReference) bool {
		return o.Kind == "Node" && o.UID == node.UID
	})
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
	r.engine = compiler.NewEngineWith(compiler.Options{MaxGroupEntries: r.MaxGroupEntries})
	r.pendingGens = map[string]int64{}
	r.dirtyRS, r.dirtyAG = map[string]struct{}{}, map[string]struct{}{}
	r.desiredRS = map[string]v1alpha1.NodeRuleSetSpec{}
	r.desiredAG = map[string]v1alpha1.AddressGroupSpec{}
	r.refs = map[string]int32{}
	r.spans = map[string]compiler.PolicySpan{}
	r.gens = map[string]int64{}
	r.oversized = map[string]int{}

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

// nodeChanged passes node creation and deletion, and the start of a deletion.
var nodeChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		return e.ObjectOld.GetDeletionTimestamp().IsZero() != e.ObjectNew.GetDeletionTimestamp().IsZero() ||
			e.ObjectOld.GetUID() != e.ObjectNew.GetUID()
	},
}
