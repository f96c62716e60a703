package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
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

// RuleSetReconciler compiles every NetworkPolicy and DefaultDeny into one
// NodeRuleSet per node and the AddressGroups they reference, and writes only
// the objects whose content changed. Hand edits to its outputs are undone;
// rule sets of deleted nodes and unreferenced groups are deleted.
type RuleSetReconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
	// State receives each compile's outcome for the status reconciler.
	State *State
	// MaxObjectBytes bounds a written spec (DefaultMaxObjectBytes when 0).
	MaxObjectBytes int

	coalesced atomic.Int64
}

// +kubebuilder:rbac:groups="",resources=pods;namespaces;nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=nftguard.io,resources=defaultdenies,verbs=get;list;watch
// +kubebuilder:rbac:groups=nftguard.io,resources=noderulesets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=nftguard.io,resources=addressgroups,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=nftguard.io,resources=addressgroups/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile compiles the cluster and converges the NodeRuleSets and
// AddressGroups on the result.
func (r *RuleSetReconciler) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	logger := log.FromContext(ctx)
	pendingEvents.Set(float64(r.coalesced.Swap(0)))

	snap, err := r.snapshot(ctx)
	if err != nil {
		return reconcile.Result{}, err
	}
	start := time.Now()
	res := compiler.Compile(snap)
	compileDuration.Observe(time.Since(start).Seconds())
	logger.V(1).Info("Compiled rule sets", "nodes", len(res.NodeRuleSets), "addressGroups", len(res.AddressGroups), "duration", time.Since(start))

	var existingRS v1alpha1.NodeRuleSetList
	if err := r.Client.List(ctx, &existingRS); err != nil {
		return reconcile.Result{}, fmt.Errorf("listing NodeRuleSets: %w", err)
	}
	var existingAG v1alpha1.AddressGroupList
	if err := r.Client.List(ctx, &existingAG); err != nil {
		return reconcile.Result{}, fmt.Errorf("listing AddressGroups: %w", err)
	}
	nodes := map[string]*corev1.Node{}
	for _, n := range snap.Nodes {
		nodes[n.Name] = n
	}

	oversized := map[string]int{}
	var errs []error

	// Groups first, so no rule set ever references a group that does not exist yet.
	currentAG := map[string]*v1alpha1.AddressGroup{}
	for i := range existingAG.Items {
		currentAG[existingAG.Items[i].Name] = &existingAG.Items[i]
	}
	for _, name := range sortedKeys(res.AddressGroups) {
		spec := res.AddressGroups[name]
		if size := specSize(spec); size > r.maxBytes() {
			oversized["AddressGroup/"+name] = size
			logger.Error(nil, "Address group exceeds the object size limit; not written", "addressGroup", name, "bytes", size, "limit", r.maxBytes())
			continue
		}
		if err := r.writeGroup(ctx, name, spec, currentAG[name]); err != nil {
			errs = append(errs, err)
		}
	}

	// Rule sets next.
	currentRS := map[string]*v1alpha1.NodeRuleSet{}
	for i := range existingRS.Items {
		currentRS[existingRS.Items[i].Name] = &existingRS.Items[i]
	}
	keepGroups := map[string]bool{}
	largest := 0
	for _, node := range sortedKeys(res.NodeRuleSets) {
		spec := res.NodeRuleSets[node]
		size := specSize(spec)
		largest = max(largest, size)
		if size > r.maxBytes() {
			oversized["NodeRuleSet/"+node] = size
			logger.Error(nil, "Rule set exceeds the object size limit; the node keeps its last rule set", "node", node, "bytes", size, "limit", r.maxBytes())
			r.Recorder.Eventf(nodes[node], nil, corev1.EventTypeWarning, "RuleSetTooLarge", "Compile",
				"Compiled rule set is %d bytes, above the %d-byte object limit; the node keeps enforcing its previous rule set", size, r.maxBytes())
			if cur := currentRS[node]; cur != nil {
				for _, g := range cur.Spec.AddressGroups {
					keepGroups[g] = true
				}
			}
			continue
		}
		if err := r.writeRuleSet(ctx, nodes[node], spec, currentRS[node]); err != nil {
			errs = append(errs, err)
			if cur := currentRS[node]; cur != nil {
				for _, g := range cur.Spec.AddressGroups {
					keepGroups[g] = true
				}
			}
		}
	}
	largestRuleSetBytes.Set(float64(largest))
	oversizedObjects.Set(float64(len(oversized)))

	// Rule sets of nodes that no longer exist. The owner reference lets the
	// garbage collector do this too; doing it here makes it independent of it.
	for name, rs := range currentRS {
		if _, ok := res.NodeRuleSets[name]; ok {
			continue
		}
		logger.Info("Deleting rule set of a deleted node", "node", name)
		if err := r.Client.Delete(ctx, rs, client.Preconditions{UID: &rs.UID}); err != nil && !apierrors.IsNotFound(err) {
			writeErrors.WithLabelValues("NodeRuleSet").Inc()
			errs = append(errs, fmt.Errorf("deleting NodeRuleSet %s: %w", name, err))
			continue
		}
		objectWrites.WithLabelValues("NodeRuleSet", "delete").Inc()
	}

	// Groups nothing references any more, last.
	refs := map[string]int32{}
	for _, spec := range res.NodeRuleSets {
		for _, g := range spec.AddressGroups {
			refs[g]++
		}
	}
	for name, ag := range currentAG {
		if _, ok := res.AddressGroups[name]; ok || keepGroups[name] {
			continue
		}
		logger.V(1).Info("Deleting unreferenced address group", "addressGroup", name)
		if err := r.Client.Delete(ctx, ag, client.Preconditions{UID: &ag.UID}); err != nil && !apierrors.IsNotFound(err) {
			writeErrors.WithLabelValues("AddressGroup").Inc()
			errs = append(errs, fmt.Errorf("deleting AddressGroup %s: %w", name, err))
			continue
		}
		objectWrites.WithLabelValues("AddressGroup", "delete").Inc()
	}
	for name, spec := range res.AddressGroups {
		if _, over := oversized["AddressGroup/"+name]; over {
			continue
		}
		if err := r.writeGroupStatus(ctx, name, spec, refs[name]); err != nil {
			errs = append(errs, err)
		}
	}

	r.State.publish(res, snap, oversized)
	if len(errs) > 0 {
		return reconcile.Result{}, fmt.Errorf("converging rule sets: %d writes failed, first: %w", len(errs), errs[0])
	}
	return reconcile.Result{}, nil
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

// snapshot reads the compiler's input from the informer cache.
func (r *RuleSetReconciler) snapshot(ctx context.Context) (*compiler.Snapshot, error) {
	var (
		pods  corev1.PodList
		nss   corev1.NamespaceList
		nodes corev1.NodeList
		nps   networkingv1.NetworkPolicyList
		dds   v1alpha1.DefaultDenyList
	)
	for _, l := range []client.ObjectList{&pods, &nss, &nodes, &nps, &dds} {
		if err := r.Client.List(ctx, l); err != nil {
			return nil, fmt.Errorf("listing %T: %w", l, err)
		}
	}
	s := &compiler.Snapshot{}
	for i := range pods.Items {
		s.Pods = append(s.Pods, &pods.Items[i])
	}
	for i := range nss.Items {
		s.Namespaces = append(s.Namespaces, &nss.Items[i])
	}
	for i := range nodes.Items {
		if nodes.Items[i].DeletionTimestamp.IsZero() {
			s.Nodes = append(s.Nodes, &nodes.Items[i])
		}
	}
	for i := range nps.Items {
		s.NetworkPolicies = append(s.NetworkPolicies, &nps.Items[i])
	}
	for i := range dds.Items {
		if dds.Items[i].DeletionTimestamp.IsZero() {
			s.DefaultDenies = append(s.DefaultDenies, &dds.Items[i])
		}
	}
	return s, nil
}

func (r *RuleSetReconciler) writeGroup(ctx context.Context, name string, spec v1alpha1.AddressGroupSpec, cur *v1alpha1.AddressGroup) error {
	if cur == nil {
		ag := &v1alpha1.AddressGroup{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: managedLabels()}, Spec: spec}
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
	ag := cur.DeepCopy()
	ag.Spec = spec
	if err := r.Client.Update(ctx, ag); err != nil {
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
			Spec: spec,
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
	rs.Spec = spec
	if !ownedBy(cur, node) {
		// A node deleted and re-created under the same name gets a new UID.
		rs.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID, Controller: ptr.To(true)}}
	}
	if err := r.Client.Update(ctx, rs); err != nil {
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

// SetupWithManager registers the reconciler. Every input maps to the single
// cluster request; pod updates that cannot change the compiled output are
// filtered out before they reach the queue.
func (r *RuleSetReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.State == nil {
		return fmt.Errorf("RuleSetReconciler needs a State")
	}
	all := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		r.coalesced.Add(1)
		return []reconcile.Request{clusterRequest}
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("rulesets").
		WithOptions(controller.Options{MaxConcurrentReconciles: 1}).
		Watches(&corev1.Pod{}, all, builder.WithPredicates(podChanged)).
		Watches(&corev1.Namespace{}, all, builder.WithPredicates(predicate.LabelChangedPredicate{})).
		Watches(&corev1.Node{}, all, builder.WithPredicates(nodeChanged)).
		Watches(&networkingv1.NetworkPolicy{}, all, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&v1alpha1.DefaultDeny{}, all, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// Spec edits (hand edits to repair) and deletions of our outputs.
		Watches(&v1alpha1.NodeRuleSet{}, all, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&v1alpha1.AddressGroup{}, all, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Complete(r)
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
