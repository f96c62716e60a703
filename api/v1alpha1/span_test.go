package v1alpha1_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
)

// TestSpanSelectorMatchesItsBucketsOnly checks, for every bucket, that a
// node's selector matches a group's span labels exactly when the span holds
// the node's bucket, over random spans, and that the labels and selectors
// are valid Kubernetes labels.
func TestSpanSelectorMatchesItsBucketsOnly(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	// A node name per bucket.
	nodes := map[int]string{}
	for i := 0; len(nodes) < v1alpha1.SpanBuckets; i++ {
		name := fmt.Sprintf("node-%d.example.internal", i)
		if _, ok := nodes[v1alpha1.SpanBucket(name)]; !ok {
			nodes[v1alpha1.SpanBucket(name)] = name
		}
	}
	spans := [][]int{nil, {0}, {255}, {3, 4}}
	all := make([]int, v1alpha1.SpanBuckets)
	for i := range all {
		all[i] = i
	}
	spans = append(spans, all)
	for range 200 {
		var s []int
		for b := range v1alpha1.SpanBuckets {
			if rng.IntN(8) == 0 {
				s = append(s, b)
			}
		}
		spans = append(spans, s)
	}
	for _, span := range spans {
		l := v1alpha1.SpanLabels(span)
		if len(l) > v1alpha1.SpanBuckets/4 {
			t.Fatalf("span of %d buckets has %d labels", len(span), len(l))
		}
		for k, v := range l {
			if errs := validation.IsQualifiedName(k); len(errs) > 0 {
				t.Fatalf("label key %q: %v", k, errs)
			}
			if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
				t.Fatalf("label value %q: %v", v, errs)
			}
			if !v1alpha1.IsSpanLabel(k) {
				t.Fatalf("IsSpanLabel(%q) = false", k)
			}
		}
		for b, node := range nodes {
			sel := v1alpha1.SpanSelector(node)
			if _, err := labels.Parse(sel.String()); err != nil {
				t.Fatalf("selector %q does not parse: %v", sel, err)
			}
			if got, want := sel.Matches(labels.Set(l)), slices.Contains(span, b); got != want {
				t.Fatalf("bucket %d, span %v: selector %s matches labels %v = %v", b, span, sel, l, got)
			}
		}
	}
	if v1alpha1.IsSpanLabel("app.kubernetes.io/managed-by") {
		t.Fatal("IsSpanLabel of another label")
	}
}

// TestSpanBucketsSpread checks that node names hash evenly, for cloud-style
// names and for names that differ only in their last digits: 5,000 nodes
// fill every bucket, none with more than twice the mean, and the nodes
// sharing a bucket with a given node (what a group that node alone uses
// reaches) average near what a uniform hash gives.
func TestSpanBucketsSpread(t *testing.T) {
	const nodes = 5000
	for _, format := range []func(int) string{
		func(i int) string { return fmt.Sprintf("ip-10-0-%d-%d.ec2.internal", i/256, i%256) },
		func(i int) string { return fmt.Sprintf("node-%d", i) },
	} {
		counts := make([]int, v1alpha1.SpanBuckets)
		for i := range nodes {
			counts[v1alpha1.SpanBucket(format(i))]++
		}
		mean := nodes / v1alpha1.SpanBuckets
		for b, c := range counts {
			if c == 0 || c > 2*mean {
				t.Fatalf("%s...: bucket %d holds %d of %d nodes (mean %d)", format(0), b, c, nodes, mean)
			}
		}
		// Of 2,000 nodes, over the first 100, the size of each one's
		// bucket: uniform hashing gives 1 + 1999/256 = 8.8 on average (the
		// low bits of FNV-1a give 11.8 here).
		const fewer = 2000
		clear(counts)
		for i := range fewer {
			counts[v1alpha1.SpanBucket(format(i))]++
		}
		sum := 0
		for i := range 100 {
			sum += counts[v1alpha1.SpanBucket(format(i))]
		}
		if got, want := float64(sum)/100, 1+float64(fewer-1)/v1alpha1.SpanBuckets; got > 1.15*want {
			t.Fatalf("%s...: a node shares its bucket with %.1f nodes on average, want about %.1f", format(0), got, want)
		}
	}
}
