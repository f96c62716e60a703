package controller

import (
	"context"
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/message"
)

// converge brings the given outputs in the API to the compiled state: it
// reads what the API holds under their names, plans the writes
// (planWrites) and performs them. Outputs it could not converge are handed
// back for the next pass.
func (r *RuleSetReconciler) converge(ctx context.Context, dirtyRS, dirtyAG map[string]struct{}) error {
	// A group whose size crosses the limit changes what the rule sets
	// referencing it say (spec.unwritten): compare them too.
	flipped := measureGroups(sortedKeys(dirtyAG), r.desiredAG, r.oversizedAG, r.maxBytes())
	for _, name := range referencing(r.desiredRS, flipped) {
		dirtyRS[name] = struct{}{}
	}
	r.mu.Lock()
	groupNodes := make(map[string]int32, len(dirtyAG))
	for name := range dirtyAG {
		groupNodes[name] = int32(r.engine.GroupReferences(name))
	}
	r.mu.Unlock()
	groupSpans := make(map[string]map[string]string, len(dirtyAG))
	for name := range dirtyAG {
		groupSpans[name] = v1alpha1.SpanLabels(r.reach.buckets(name))
	}

	in, retryRS, retryAG, errs := r.read(ctx, dirtyRS, dirtyAG)
	in.DesiredRuleSets, in.DesiredGroups = r.desiredRS, r.desiredAG
	in.GroupNodes, in.GroupSpans, in.OversizedGroups, in.MaxBytes = groupNodes, groupSpans, r.oversizedAG, r.maxBytes()
	p := planWrites(in)
	errs = append(errs, r.execute(ctx, p, retryRS, retryAG)...)

	unkept := map[string]struct{}{}
	for _, name := range in.RuleSets {
		t, ok := p.Targets[name]
		if ok {
			r.targets[name] = t
		} else {
			delete(r.targets, name)
		}
		// A node keeping its previous spec still needs that spec's groups:
		// they stay in its span until it stops keeping it.
		if old, was := r.kept[name]; was {
			r.reach.add(name, &old, -1, unkept)
			delete(r.kept, name)
		}
		if p.Kept[name] {
			r.kept[name] = t
			r.reach.add(name, &t, +1, nil)
		}
	}
	if len(unkept) > 0 {
		r.requeue(nil, unkept) // their spans shrink in the next pass
	}
	for name, size := range p.RuleSetBytes {
		if size > 0 {
			r.oversizedRS[name] = size
		} else {
			delete(r.oversizedRS, name)
		}
	}
	largest := p.Largest
	for _, size := range r.oversizedRS {
		largest = max(largest, size)
	}
	largestRuleSetBytes.Set(float64(largest))
	oversizedObjects.Set(float64(len(r.oversizedRS) + len(r.oversizedAG)))

	if len(retryRS)+len(retryAG) > 0 {
		r.requeue(retryRS, retryAG)
	}
	if len(errs) > 0 {
		return fmt.Errorf("converging rule sets: %d writes failed, first: %w", len(errs), errs[0])
	}
	return nil
}

// get reads the cluster-scoped object name of a kind from the cache into
// obj; found is false when it does not exist.
func (r *RuleSetReconciler) get(ctx context.Context, kind, name string, obj client.Object) (found bool, err error) {
	switch err := r.Client.Get(ctx, client.ObjectKey{Name: name}, obj); {
	case apierrors.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("reading %s %s: %w", kind, name, err)
	}
	return true, nil
}

// read gets from the cache the objects a plan compares: the rule sets and
// groups named, and the nodes of the rule sets. A name whose read fails is
// left out of the plan and returned to be compared again.
func (r *RuleSetReconciler) read(ctx context.Context, dirtyRS, dirtyAG map[string]struct{}) (in planInput, retryRS, retryAG map[string]struct{}, errs []error) {
	retryRS, retryAG = map[string]struct{}{}, map[string]struct{}{}
	in.CurRuleSets = map[string]*v1alpha1.NodeRuleSet{}
	in.CurGroups = map[string]*v1alpha1.AddressGroup{}
	in.Nodes = map[string]*corev1.Node{}
	for _, name := range sortedKeys(dirtyAG) {
		ag := &v1alpha1.AddressGroup{}
		found, err := r.get(ctx, "AddressGroup", name, ag)
		if err != nil {
			errs = append(errs, err)
			retryAG[name] = struct{}{}
			continue
		}
		if found {
			in.CurGroups[name] = ag
		}
		in.Groups = append(in.Groups, name)
	}
	for _, name := range sortedKeys(dirtyRS) {
		rs := &v1alpha1.NodeRuleSet{}
		found, err := r.get(ctx, "NodeRuleSet", name, rs)
		if err != nil {
			errs = append(errs, err)
			retryRS[name] = struct{}{}
			continue
		}
		if _, desired := r.desiredRS[name]; !found && !desired {
			in.RuleSets = append(in.RuleSets, name)
			continue
		}
		node := &corev1.Node{}
		nodeFound, err := r.get(ctx, "Node", name, node)
		if err != nil {
			errs = append(errs, err)
			retryRS[name] = struct{}{}
			continue
		}
		if found {
			in.CurRuleSets[name] = rs
		}
		if nodeFound {
			in.Nodes[name] = node
		}
		in.RuleSets = append(in.RuleSets, name)
	}
	return in, retryRS, retryAG, errs
}

// execute performs a plan's writes in order, records its notices as
// Events on the nodes, and adds to retryRS and retryAG the outputs to
// compare again. A failed write does not stop the others; a group is not
// deleted while a rule set whose rewrite failed may still reference it.
func (r *RuleSetReconciler) execute(ctx context.Context, p plan, retryRS, retryAG map[string]struct{}) []error {
	logger := log.FromContext(ctx)
	for _, n := range p.Notices {
		logger.Error(nil, "Compiled output exceeds the object size limit; not written", "node", n.Node, "reason", n.Reason, "detail", n.Message)
		node := &corev1.Node{}
		if err := r.Client.Get(ctx, client.ObjectKey{Name: n.Node}, node); err != nil {
			continue // the node is going away: nobody to tell
		}
		r.Recorder.Eventf(node, nil, corev1.EventTypeWarning, n.Reason, "Compile", "%s", message.Bound(n.Message))
	}
	var errs []error
	failedRS, failedAG := map[string]bool{}, map[string]bool{}
	for _, w := range p.Writes {
		switch {
		case w.Kind == updateGroupStatus && failedAG[w.Name]:
			continue // compared again with the group
		case w.Kind == deleteGroup && slices.ContainsFunc(w.NeededBy, func(rs string) bool { return failedRS[rs] }):
			retryAG[w.Name] = struct{}{} // delete it once no stale rule set needs it
			continue
		}
		if err := r.perform(ctx, w); err != nil {
			errs = append(errs, err)
			switch w.Kind {
			case createRuleSet, updateRuleSet, deleteRuleSet:
				failedRS[w.Name] = true
				retryRS[w.Name] = struct{}{}
			default:
				failedAG[w.Name] = true
				retryAG[w.Name] = struct{}{}
			}
		}
	}
	for _, rt := range p.Retries {
		if rt.Group {
			retryAG[rt.Name] = struct{}{}
		} else {
			retryRS[rt.Name] = struct{}{}
		}
		if rt.Err != nil {
			errs = append(errs, rt.Err)
		}
	}
	if len(failedRS)+len(failedAG) > 0 {
		logger.V(1).Info("Writes failed; comparing them again in the next pass",
			"ruleSets", slices.Sorted(maps.Keys(failedRS)), "addressGroups", slices.Sorted(maps.Keys(failedAG)))
	}
	return errs
}

// perform does one write, counting it in the metrics. Creating what
// exists already and deleting what is gone are not failures: the watch
// brings the object back for comparison.
func (r *RuleSetReconciler) perform(ctx context.Context, w write) error {
	kind := "AddressGroup"
	if w.Kind == createRuleSet || w.Kind == updateRuleSet || w.Kind == deleteRuleSet {
		kind = "NodeRuleSet"
	}
	logger := log.FromContext(ctx)
	var op string
	var err error
	switch w.Kind {
	case createGroup, createRuleSet:
		op = "create"
		if err = r.Client.Create(ctx, w.Object); apierrors.IsAlreadyExists(err) {
			err = nil
		}
	case updateGroup, updateRuleSet:
		// A merge patch without a resource version: the controller is the
		// only writer of specs, and the agents write status all the time,
		// so an optimistic update from the cache would keep conflicting.
		op = "update"
		err = r.Client.Patch(ctx, w.Object, client.MergeFrom(w.Base))
	case updateGroupStatus:
		op = "status"
		if err = r.Client.Status().Patch(ctx, w.Object, client.MergeFrom(w.Base)); apierrors.IsNotFound(err) {
			err = nil
		}
	case deleteRuleSet, deleteGroup:
		op = "delete"
		if w.Kind == deleteRuleSet {
			logger.Info("Deleting rule set of a deleted node", "node", w.Name)
		} else {
			logger.V(1).Info("Deleting unreferenced address group", "addressGroup", w.Name)
		}
		uid := w.Base.GetUID()
		if err = r.Client.Delete(ctx, w.Base, client.Preconditions{UID: &uid}); apierrors.IsNotFound(err) {
			err = nil
		}
	}
	if err != nil {
		writeErrors.WithLabelValues(kind).Inc()
		return fmt.Errorf("%s %s: %w", w.Kind, w.Name, err)
	}
	objectWrites.WithLabelValues(kind, op).Inc()
	return nil
}
