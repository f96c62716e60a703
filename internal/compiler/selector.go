package compiler

import (
	"cmp"
	"maps"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// canonicalSelector returns a copy of s in one form for the common
// spellings of the same selector: values sorted and deduplicated, "key In
// (v)" written as the label key=v, expressions sorted and deduplicated.
// nil stays nil; an empty selector becomes {}.
func canonicalSelector(s *metav1.LabelSelector) *metav1.LabelSelector {
	if s == nil {
		return nil
	}
	out := &metav1.LabelSelector{}
	if len(s.MatchLabels) > 0 {
		out.MatchLabels = maps.Clone(s.MatchLabels)
	}
	exprs := make([]metav1.LabelSelectorRequirement, 0, len(s.MatchExpressions))
	for _, e := range s.MatchExpressions {
		c := metav1.LabelSelectorRequirement{Key: e.Key, Operator: e.Operator}
		if len(e.Values) > 0 {
			c.Values = slices.Compact(slices.Sorted(slices.Values(e.Values)))
		}
		exprs = append(exprs, c)
	}
	slices.SortFunc(exprs, compareRequirements)
	for _, c := range exprs {
		if c.Operator == metav1.LabelSelectorOpIn && len(c.Values) == 1 {
			v, ok := out.MatchLabels[c.Key]
			if !ok {
				if out.MatchLabels == nil {
					out.MatchLabels = map[string]string{}
				}
				out.MatchLabels[c.Key] = c.Values[0]
				continue
			}
			if v == c.Values[0] {
				continue
			}
		}
		out.MatchExpressions = append(out.MatchExpressions, c)
	}
	out.MatchExpressions = slices.CompactFunc(out.MatchExpressions, func(a, b metav1.LabelSelectorRequirement) bool {
		return compareRequirements(a, b) == 0
	})
	return out
}

func compareRequirements(a, b metav1.LabelSelectorRequirement) int {
	return cmp.Or(
		cmp.Compare(a.Key, b.Key),
		cmp.Compare(a.Operator, b.Operator),
		slices.Compare(a.Values, b.Values),
	)
}

// emptySelector reports whether s selects everything ({}).
func emptySelector(s *metav1.LabelSelector) bool {
	return s != nil && len(s.MatchLabels) == 0 && len(s.MatchExpressions) == 0
}

// selector returns the labels.Selector of s (which must not be nil). An
// invalid selector selects nothing.
func (ix *index) selector(s *metav1.LabelSelector) labels.Selector {
	sel, _ := ix.selectorOK(s)
	return sel
}

// cachedSelector is a converted selector, and whether s was valid.
type cachedSelector struct {
	sel labels.Selector
	ok  bool
}

// selectorOK is selector, and whether s is valid.
func (ix *index) selectorOK(s *metav1.LabelSelector) (labels.Selector, bool) {
	ix.buf = appendCanonicalSelectorJSON(ix.buf[:0], s)
	if c, ok := ix.selectors[string(ix.buf)]; ok {
		return c.sel, c.ok
	}
	key := string(ix.buf)
	c := cachedSelector{ok: true}
	var err error
	if c.sel, err = metav1.LabelSelectorAsSelector(canonicalSelector(s)); err != nil {
		c = cachedSelector{sel: labels.Nothing()}
	}
	ix.selectors[key] = c
	return c.sel, c.ok
}
