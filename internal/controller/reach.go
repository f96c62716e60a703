package controller

import (
	"maps"
	"slices"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// reach counts, per AddressGroup and span bucket (v1alpha1.SpanBucket),
// the references to the group from the nodes of that bucket: from each
// node's compiled spec and, for a node that keeps its previous rule set
// (plan.Kept), from that spec too. The group's span labels name the buckets
// with a count, so a node's agent receives every group either spec
// references.
type reach map[string]map[int]int32

// add counts the groups of a spec of node by delta (+1 or -1).
func (r reach) add(node string, spec *v1alpha1.NodeRuleSetSpec, delta int32, dirty map[string]struct{}) {
	b := v1alpha1.SpanBucket(node)
	for _, g := range spec.AddressGroups {
		m := r[g]
		if m == nil {
			m = map[int]int32{}
			r[g] = m
		}
		if m[b] += delta; m[b] <= 0 {
			delete(m, b)
		}
		if len(m) == 0 {
			delete(r, g)
		}
		if dirty != nil {
			dirty[g] = struct{}{}
		}
	}
}

// buckets returns the buckets a group reaches, sorted.
func (r reach) buckets(group string) []int {
	return slices.Sorted(maps.Keys(r[group]))
}

// spanLabels returns the span labels of a group's object as written.
func spanLabels(l map[string]string) map[string]string {
	var out map[string]string
	for k, v := range l {
		if v1alpha1.IsSpanLabel(k) {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}

// withSpan returns labels with its span labels replaced by span's.
func withSpan(l, span map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range l {
		if !v1alpha1.IsSpanLabel(k) {
			out[k] = v
		}
	}
	maps.Copy(out, span)
	return out
}
