package v1alpha1_test

import (
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
)

// nrs is a NodeRuleSet at generation gen whose agent reports programmed
// generation observed with the given Programmed condition (none if status
// is empty).
func nrs(gen, observed int64, status metav1.ConditionStatus, reason string) *v1alpha1.NodeRuleSet {
	rs := &v1alpha1.NodeRuleSet{}
	rs.Name = "n1"
	rs.Generation = gen
	rs.Status.ObservedGeneration = observed
	if status != "" {
		rs.Status.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionProgrammed, Status: status, Reason: reason,
			Message: "said " + reason, ObservedGeneration: observed}}
	}
	return rs
}

func withUnwritten(rs *v1alpha1.NodeRuleSet, u v1alpha1.Unwritten) *v1alpha1.NodeRuleSet {
	rs.Spec.Unwritten = &u
	return rs
}

func TestNodeProgress(t *testing.T) {
	tooLarge := v1alpha1.Unwritten{Reason: v1alpha1.ReasonRuleSetTooLarge, Bytes: 2000, Limit: 1000}
	groupTooLarge := v1alpha1.Unwritten{Reason: v1alpha1.ReasonAddressGroupTooLarge, Bytes: 3000, Limit: 1000, AddressGroups: []string{"ag-1", "ag-2"}}
	cases := []struct {
		name    string
		rs      *v1alpha1.NodeRuleSet
		desired int64 // 0: the object's generation
		want    v1alpha1.Progress
	}{
		{"no rule set", nil, 0, v1alpha1.Progress{State: v1alpha1.NodePending, Reason: v1alpha1.ReasonProgramming, Message: "no rule set written for the node yet"}},
		{"no report yet", nrs(1, 0, "", ""), 0, v1alpha1.Progress{State: v1alpha1.NodePending, Reason: v1alpha1.ReasonProgramming, Message: "no report from the node's agent yet"}},
		{"programmed", nrs(3, 3, metav1.ConditionTrue, v1alpha1.ReasonProgrammed), 0,
			v1alpha1.Progress{State: v1alpha1.NodeProgrammed, Reason: v1alpha1.ReasonProgrammed, Message: "said Programmed"}},
		{"programmed an older generation", nrs(4, 3, metav1.ConditionTrue, v1alpha1.ReasonProgrammed), 0,
			v1alpha1.Progress{State: v1alpha1.NodePending, Reason: v1alpha1.ReasonProgramming, Message: "programmed generation 3, waiting for 4"}},
		{"programmed, the latest compile not written yet", nrs(3, 3, metav1.ConditionTrue, v1alpha1.ReasonProgrammed), 4,
			v1alpha1.Progress{State: v1alpha1.NodePending, Reason: v1alpha1.ReasonProgramming, Message: "the latest compile is not written to the rule set yet"}},
		{"failed", nrs(3, 2, metav1.ConditionFalse, v1alpha1.ReasonRenderFailed), 0,
			v1alpha1.Progress{State: v1alpha1.NodeFailed, Reason: v1alpha1.ReasonRenderFailed, Message: "said RenderFailed"}},
		{"failed wins over a spec not written yet", nrs(3, 2, metav1.ConditionFalse, v1alpha1.ReasonProgramFailed), 4,
			v1alpha1.Progress{State: v1alpha1.NodeFailed, Reason: v1alpha1.ReasonProgramFailed, Message: "said ProgramFailed"}},
		{"uninstalled", nrs(3, 3, metav1.ConditionFalse, v1alpha1.ReasonUninstalled), 0,
			v1alpha1.Progress{State: v1alpha1.NodeUninstalled, Reason: v1alpha1.ReasonUninstalled, Message: "said Uninstalled"}},
		{"too large wins over programmed", withUnwritten(nrs(3, 3, metav1.ConditionTrue, v1alpha1.ReasonProgrammed), tooLarge), 0,
			v1alpha1.Progress{State: v1alpha1.NodeTooLarge, Reason: v1alpha1.ReasonRuleSetTooLarge,
				Message: "Compiled rule set is 2000 bytes, above the 1000-byte object limit; the node keeps enforcing its previous rule set"}},
		{"too large wins over failed", withUnwritten(nrs(3, 3, metav1.ConditionFalse, v1alpha1.ReasonAddressGroupMissing), groupTooLarge), 0,
			v1alpha1.Progress{State: v1alpha1.NodeTooLarge, Reason: v1alpha1.ReasonAddressGroupTooLarge,
				Message: "Address groups ag-1, ag-2 exceed the 1000-byte object limit (largest 3000 bytes); their membership is not updated"}},
		{"too large wins over uninstalled", withUnwritten(nrs(3, 3, metav1.ConditionFalse, v1alpha1.ReasonUninstalled), tooLarge), 0,
			v1alpha1.Progress{State: v1alpha1.NodeTooLarge, Reason: v1alpha1.ReasonRuleSetTooLarge,
				Message: "Compiled rule set is 2000 bytes, above the 1000-byte object limit; the node keeps enforcing its previous rule set"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			desired := c.desired
			if desired == 0 && c.rs != nil {
				desired = c.rs.Generation
			}
			if got := v1alpha1.NodeProgress(c.rs, desired); got != c.want {
				t.Errorf("NodeProgress = %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestSummarizeProgress(t *testing.T) {
	states := map[string]v1alpha1.NodeState{
		"ok1": v1alpha1.NodeProgrammed, "ok2": v1alpha1.NodeProgrammed,
		"wait": v1alpha1.NodePending, "fail": v1alpha1.NodeFailed,
		"gone": v1alpha1.NodeUninstalled, "big": v1alpha1.NodeTooLarge,
	}
	progress := func(n string) v1alpha1.Progress {
		if s, ok := states[n]; ok {
			return v1alpha1.Progress{State: s}
		}
		return v1alpha1.Progress{} // a node with no state counts as pending
	}
	cases := []struct {
		name     string
		nodes    []string
		state    v1alpha1.PolicyState
		reason   string
		enforced int
		done     bool
	}{
		{"no nodes", nil, v1alpha1.PolicyNoSelectedPods, v1alpha1.ReasonNoSelectedPods, 0, true},
		{"all programmed", []string{"ok2", "ok1"}, v1alpha1.PolicyEnforced, v1alpha1.ReasonEnforced, 2, true},
		{"one pending", []string{"ok1", "wait"}, v1alpha1.PolicyProgramming, v1alpha1.ReasonProgramming, 1, false},
		{"unknown node pending", []string{"ok1", "new"}, v1alpha1.PolicyProgramming, v1alpha1.ReasonProgramming, 1, false},
		{"uninstalled wins over pending", []string{"wait", "gone"}, v1alpha1.PolicyUninstalled, v1alpha1.ReasonUninstalled, 0, false},
		{"failed wins over uninstalled", []string{"gone", "fail", "wait"}, v1alpha1.PolicyFailed, v1alpha1.ReasonProgramFailed, 0, false},
		{"too large wins over failed", []string{"fail", "big", "ok1"}, v1alpha1.PolicyTooLarge, v1alpha1.ReasonRuleSetTooLarge, 1, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := v1alpha1.SummarizeProgress(c.nodes, progress)
			if p.State != c.state || p.Reason != c.reason || p.Enforced != c.enforced || p.Desired != len(c.nodes) || p.Done() != c.done {
				t.Errorf("got %+v (done %v), want %s/%s with %d of %d enforced (done %v)", p, p.Done(), c.state, c.reason, c.enforced, len(c.nodes), c.done)
			}
			listed := len(p.TooLarge) + len(p.Failed) + len(p.Uninstalled) + len(p.Pending)
			if p.Enforced+listed != p.Desired {
				t.Errorf("%d enforced and %d listed of %d nodes: %+v", p.Enforced, listed, p.Desired, p)
			}
		})
	}
	p := v1alpha1.SummarizeProgress([]string{"wait", "new", "fail", "big"}, progress)
	if !slices.Equal(p.Pending, []string{"new", "wait"}) || !slices.Equal(p.Failed, []string{"fail"}) || !slices.Equal(p.TooLarge, []string{"big"}) {
		t.Errorf("node lists %+v", p)
	}
}
