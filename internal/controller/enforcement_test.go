package controller

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/compiler"
)

func programmedRuleSet(gen, observed int64, status metav1.ConditionStatus, msg string) *v1alpha1.NodeRuleSet {
	rs := &v1alpha1.NodeRuleSet{}
	rs.Generation = gen
	rs.Spec.AddressGroups = []string{"ag-1"}
	rs.Status.ObservedGeneration = observed
	rs.Status.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionProgrammed, Status: status, Message: msg, ObservedGeneration: observed}}
	return rs
}

func TestNodeStateOf(t *testing.T) {
	desired := v1alpha1.NodeRuleSetSpec{AddressGroups: []string{"ag-1"}}
	cases := []struct {
		name     string
		rs       *v1alpha1.NodeRuleSet
		desired  v1alpha1.NodeRuleSetSpec
		tooLarge bool
		enforced bool
		failed   bool
	}{
		{"absent", nil, desired, false, false, false},
		{"programmed current generation", programmedRuleSet(3, 3, metav1.ConditionTrue, ""), desired, false, true, false},
		{"programmed an older generation", programmedRuleSet(4, 3, metav1.ConditionTrue, ""), desired, false, false, false},
		{"spec differs from the compiled one", programmedRuleSet(3, 3, metav1.ConditionTrue, ""), v1alpha1.NodeRuleSetSpec{}, false, false, false},
		{"agent failed", programmedRuleSet(3, 3, metav1.ConditionFalse, "boom"), desired, false, false, true},
		{"too large", programmedRuleSet(3, 3, metav1.ConditionTrue, ""), desired, true, false, false},
		{"no condition yet", &v1alpha1.NodeRuleSet{Spec: desired}, desired, false, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := nodeStateOf(c.rs, c.desired, c.tooLarge)
			if st.Enforced() != c.enforced || st.Failed != c.failed {
				t.Fatalf("got %+v: enforced %v failed %v, want enforced %v failed %v", st, st.Enforced(), st.Failed, c.enforced, c.failed)
			}
		})
	}
}

func TestEnforcedCondition(t *testing.T) {
	nodes := map[string]NodeState{
		"ok":      {Current: true, Programmed: true},
		"pending": {Current: true},
		"failed":  {Failed: true, Message: "no table"},
		"big":     {TooLarge: true, Current: true, Programmed: true},
	}
	cases := []struct {
		name    string
		span    []string
		status  metav1.ConditionStatus
		reason  string
		message string
		counts  string
	}{
		{"all enforced", []string{"ok"}, metav1.ConditionTrue, v1alpha1.ReasonEnforced, "Programmed on all 1 nodes hosting its 2 pods", "1/1"},
		{"nothing selected", nil, metav1.ConditionTrue, v1alpha1.ReasonNoSelectedPods, "Selects no pods", "0/0"},
		{"waiting", []string{"ok", "pending"}, metav1.ConditionFalse, v1alpha1.ReasonProgramming, "Programmed on 1 of 2 nodes; waiting for pending", "1/2"},
		{"failure wins over waiting", []string{"pending", "failed"}, metav1.ConditionFalse, v1alpha1.ReasonProgramFailed, "Agent failed to program 1 of 2 nodes: failed: no table", "0/2"},
		{"too large wins", []string{"failed", "big"}, metav1.ConditionFalse, v1alpha1.ReasonRuleSetTooLarge, "Rule set or one of its address groups exceeds the object size limit on big; those nodes keep their previous rules", "0/2"},
		{"unknown node counts as pending", []string{"gone"}, metav1.ConditionFalse, v1alpha1.ReasonProgramming, "Programmed on 0 of 1 nodes; waiting for gone", "0/1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := aggregate(compiler.PolicySpan{SelectedPods: 2, Nodes: c.span}, nodes)
			st := defaultDenyStatus(v1alpha1.DefaultDenyStatus{}, e, 7)
			if st.Enforcement != c.counts || st.ObservedGeneration != 7 {
				t.Errorf("status %+v, want enforcement %s at generation 7", st, c.counts)
			}
			if len(st.Conditions) != 1 {
				t.Fatalf("conditions %+v", st.Conditions)
			}
			got := st.Conditions[0]
			if got.Status != c.status || got.Reason != c.reason || got.Message != c.message || got.ObservedGeneration != 7 {
				t.Errorf("condition %s/%s %q, want %s/%s %q", got.Status, got.Reason, got.Message, c.status, c.reason, c.message)
			}
		})
	}
}

func TestListTruncates(t *testing.T) {
	if got := list([]string{"a", "b", "c", "d", "e", "f", "g"}); got != "a, b, c, d, e and 2 more" {
		t.Fatalf("list = %q", got)
	}
}
