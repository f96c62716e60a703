package controller

import (
	"fmt"
	"maps"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// twoInBucket returns two node names of one bucket and one of another.
func twoInBucket() (a, b, other string) {
	a = "node-0"
	for i := 1; b == "" || other == ""; i++ {
		n := fmt.Sprintf("node-%d", i)
		switch same := v1alpha1.SpanBucket(n) == v1alpha1.SpanBucket(a); {
		case same && b == "":
			b = n
		case !same && other == "":
			other = n
		}
	}
	return a, b, other
}

// TestReachCountsPerBucket checks that a group reaches a bucket while any
// spec of a node in it references the group, and no longer after the last.
func TestReachCountsPerBucket(t *testing.T) {
	a, b, other := twoInBucket()
	r := reach{}
	dirty := map[string]struct{}{}
	sa, sb, so := ruleSetSpec("ag-1", "ag-2"), ruleSetSpec("ag-1"), ruleSetSpec("ag-2")
	r.add(a, &sa, +1, dirty)
	r.add(b, &sb, +1, dirty)
	r.add(other, &so, +1, dirty)
	if !maps.Equal(dirty, map[string]struct{}{"ag-1": {}, "ag-2": {}}) {
		t.Fatalf("dirty = %v", dirty)
	}
	ab, ob := v1alpha1.SpanBucket(a), v1alpha1.SpanBucket(other)
	if got := r.buckets("ag-1"); !slices.Equal(got, []int{ab}) {
		t.Fatalf("ag-1 reaches %v, want [%d]", got, ab)
	}
	if got := r.buckets("ag-2"); !slices.Equal(got, slices.Sorted(slices.Values([]int{ab, ob}))) {
		t.Fatalf("ag-2 reaches %v, want %d and %d", got, ab, ob)
	}
	r.add(a, &sa, -1, nil)
	if got := r.buckets("ag-1"); !slices.Equal(got, []int{ab}) {
		t.Fatalf("ag-1 after %s left: reaches %v, want [%d] (%s still references it)", a, got, ab, b)
	}
	if got := r.buckets("ag-2"); !slices.Equal(got, []int{ob}) {
		t.Fatalf("ag-2 after %s left: reaches %v, want [%d]", a, got, ob)
	}
	r.add(b, &sb, -1, nil)
	r.add(other, &so, -1, nil)
	if len(r) != 0 {
		t.Fatalf("reach after every node left: %v", r)
	}
}

// TestPlanWritesSpanLabels checks that the plan writes a group's span
// labels: on create, when only the span changed (keeping other labels and
// dropping stale span labels), and for a group too large to write, whose
// members stay as they are; an unchanged span writes nothing.
func TestPlanWritesSpanLabels(t *testing.T) {
	spanA, spanB := v1alpha1.SpanLabels([]int{7}), v1alpha1.SpanLabels([]int{7, 200})
	withLabels := func(ag *v1alpha1.AddressGroup, l map[string]string) *v1alpha1.AddressGroup {
		ag.Labels = l
		return ag
	}
	cur := withLabels(curGroup("ag-1", groupSpec("198.18.0.1"), 1), withSpan(managedLabels(), spanA))
	big := withLabels(curGroup("ag-big", groupSpec("198.18.0.9"), 1), managedLabels())
	in := planInput{
		Groups: []string{"ag-1", "ag-big", "ag-new", "ag-same"},
		DesiredGroups: map[string]v1alpha1.AddressGroupSpec{"ag-1": groupSpec("198.18.0.1"), "ag-big": groupSpec("198.18.0.10"),
			"ag-new": groupSpec("198.18.0.2"), "ag-same": groupSpec("198.18.0.3")},
		GroupNodes:      map[string]int32{"ag-1": 1, "ag-big": 1, "ag-same": 1},
		GroupSpans:      map[string]map[string]string{"ag-1": spanB, "ag-big": spanA, "ag-new": spanA, "ag-same": spanA},
		OversizedGroups: map[string]int{"ag-big": 1 << 20},
		CurGroups: map[string]*v1alpha1.AddressGroup{"ag-1": cur, "ag-big": big,
			"ag-same": withLabels(curGroup("ag-same", groupSpec("198.18.0.3"), 1), withSpan(managedLabels(), spanA))},
		Nodes:    map[string]*corev1.Node{},
		MaxBytes: 1 << 10,
	}
	p := planWrites(in)
	if got, want := writes(p), []string{"update AddressGroup ag-1", "update AddressGroup ag-big", "create AddressGroup ag-new"}; !slices.Equal(got, want) {
		t.Fatalf("writes = %q, want %q", got, want)
	}
	for _, w := range p.Writes {
		ag := w.Object.(*v1alpha1.AddressGroup)
		want := withSpan(managedLabels(), in.GroupSpans[w.Name])
		if !maps.Equal(ag.Labels, want) {
			t.Errorf("%s: labels %v, want %v", w.Name, ag.Labels, want)
		}
		if w.Name == "ag-big" && !equality.Semantic.DeepEqual(ag.Spec, big.Spec) {
			t.Errorf("ag-big: a group above the limit had its spec rewritten to %v", ag.Spec)
		}
	}
	// The update drops the span label the group no longer has.
	in.GroupSpans["ag-1"] = v1alpha1.SpanLabels([]int{200})
	p = planWrites(in)
	if got := p.Writes[0].Object.GetLabels(); !maps.Equal(got, withSpan(managedLabels(), in.GroupSpans["ag-1"])) {
		t.Fatalf("ag-1 relabelled to %v", got)
	}
}
