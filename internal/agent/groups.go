package agent

import (
	"sync/atomic"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// StrippedAnnotation marks an AddressGroup in the agent's cache whose
// members were dropped because this node's rule set does not reference it.
const StrippedAnnotation = "nftguard.io/agent-stripped"

// GroupFilter keeps the agent's memory proportional to the groups its own
// rule set references. The API has no way to watch a changing set of names
// with one watch, so AddressGroups are watched by their span labels
// (v1alpha1.SpanSelector): the API server sends the groups referenced from
// the node's span bucket, which holds other nodes too. The cache transform
// drops the members of every group the node itself does not reference; when
// a stripped group becomes referenced, the agent reads it from the API
// once, and the watch keeps it current from then on. A group the rule set
// references that the watch has not delivered (yet) is read from the API.
type GroupFilter struct {
	referenced atomic.Pointer[map[string]struct{}]
}

// SetReferenced records the groups the node's current rule set references.
func (f *GroupFilter) SetReferenced(names []string) {
	m := make(map[string]struct{}, len(names))
	for _, n := range names {
		m[n] = struct{}{}
	}
	f.referenced.Store(&m)
}

// Referenced reports whether the node's rule set references a group. Before
// the first rule set is known every group counts as referenced.
func (f *GroupFilter) Referenced(name string) bool {
	m := f.referenced.Load()
	if m == nil {
		return true
	}
	_, ok := (*m)[name]
	return ok
}

// Transform is the cache transform for AddressGroups.
func (f *GroupFilter) Transform(obj any) (any, error) {
	ag, ok := obj.(*v1alpha1.AddressGroup)
	if !ok || f.Referenced(ag.Name) {
		return obj, nil
	}
	ag.Spec.Addresses, ag.Spec.Endpoints = nil, nil
	ag.ManagedFields = nil
	if ag.Annotations == nil {
		ag.Annotations = map[string]string{}
	}
	ag.Annotations[StrippedAnnotation] = "true"
	return ag, nil
}
