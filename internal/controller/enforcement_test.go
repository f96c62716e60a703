package controller

import (
	"fmt"
	"strings"
	"testing"
	"unicode"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/message"
)

func programmedRuleSet(gen, observed int64, status metav1.ConditionStatus, msg string) *v1alpha1.NodeRuleSet {
	rs := &v1alpha1.NodeRuleSet{}
	rs.Generation = gen
	rs.Spec.AddressGroups = []string{"ag-1"}
	rs.Status.ObservedGeneration = observed
	rs.Status.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionProgrammed, Status: status, Message: msg, ObservedGeneration: observed}}
	return rs
}

func TestNodeProgressAgainstTarget(t *testing.T) {
	target := v1alpha1.NodeRuleSetSpec{AddressGroups: []string{"ag-1"}}
	tooLarge := programmedRuleSet(3, 3, metav1.ConditionTrue, "")
	tooLarge.Spec.Unwritten = &v1alpha1.Unwritten{Reason: v1alpha1.ReasonRuleSetTooLarge, Bytes: 2, Limit: 1}
	degraded := programmedRuleSet(3, 3, metav1.ConditionTrue, "")
	degraded.Spec.Unwritten = &v1alpha1.Unwritten{Reason: v1alpha1.ReasonRuleSetTooLarge, Bytes: 2, Limit: 1, Policies: []string{"NetworkPolicy/big/many"}}
	cases := []struct {
		name     string
		rs       *v1alpha1.NodeRuleSet
		target   v1alpha1.NodeRuleSetSpec
		planned  bool
		want     v1alpha1.NodeState
		enforced bool
		policy   string
	}{
		{"absent", nil, target, true, v1alpha1.NodePending, false, ""},
		{"programmed current generation", programmedRuleSet(3, 3, metav1.ConditionTrue, ""), target, true, v1alpha1.NodeProgrammed, true, ""},
		{"programmed an older generation", programmedRuleSet(4, 3, metav1.ConditionTrue, ""), target, true, v1alpha1.NodePending, false, ""},
		{"spec differs from the planned one", programmedRuleSet(3, 3, metav1.ConditionTrue, ""), v1alpha1.NodeRuleSetSpec{}, true, v1alpha1.NodePending, false, ""},
		{"nothing planned", programmedRuleSet(3, 3, metav1.ConditionTrue, ""), target, false, v1alpha1.NodePending, false, ""},
		{"agent failed", programmedRuleSet(3, 3, metav1.ConditionFalse, "boom"), target, true, v1alpha1.NodeFailed, false, ""},
		{"too large", tooLarge, tooLarge.Spec, true, v1alpha1.NodeTooLarge, false, "NetworkPolicy/small/few"},
		{"rules left out, for the policy left out", degraded, degraded.Spec, true, v1alpha1.NodeTooLarge, false, "NetworkPolicy/big/many"},
		{"rules left out, for another policy", degraded, degraded.Spec, true, v1alpha1.NodeProgrammed, true, "NetworkPolicy/small/few"},
		{"rules left out, for the node", degraded, degraded.Spec, true, v1alpha1.NodeTooLarge, false, ""},
		{"no condition yet", &v1alpha1.NodeRuleSet{Spec: target}, target, true, v1alpha1.NodePending, false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := nodeProgress(c.rs, c.target, c.planned, c.policy); got.State != c.want {
				t.Fatalf("got %+v, want %s", got, c.want)
			}
		})
	}
}

func TestEnforcedCondition(t *testing.T) {
	nodes := map[string]v1alpha1.Progress{
		"ok":      {State: v1alpha1.NodeProgrammed},
		"pending": {State: v1alpha1.NodePending},
		"failed":  {State: v1alpha1.NodeFailed, Reason: v1alpha1.ReasonProgramFailed, Message: "no table"},
		"gone":    {State: v1alpha1.NodeUninstalled, Reason: v1alpha1.ReasonUninstalled},
		"big":     {State: v1alpha1.NodeTooLarge, Reason: v1alpha1.ReasonRuleSetTooLarge, Message: "rules left out"},
	}
	progress := func(n string) v1alpha1.Progress { return nodes[n] }
	cases := []struct {
		name    string
		span    []string
		status  metav1.ConditionStatus
		reason  string
		message string
		counts  string
		event   string // the NetworkPolicy Event's type, "" for none
	}{
		{"all enforced", []string{"ok"}, metav1.ConditionTrue, v1alpha1.ReasonEnforced, "Programmed on all 1 nodes hosting its 2 pods", "1/1", corev1.EventTypeNormal},
		{"nothing selected", nil, metav1.ConditionTrue, v1alpha1.ReasonNoSelectedPods, "Selects no pods", "0/0", ""},
		{"waiting", []string{"ok", "pending"}, metav1.ConditionFalse, v1alpha1.ReasonProgramming, "Programmed on 1 of 2 nodes; waiting for pending", "1/2", ""},
		{"uninstalled wins over waiting", []string{"pending", "gone"}, metav1.ConditionFalse, v1alpha1.ReasonUninstalled, "Uninstalled on 1 of 2 nodes, which filter no traffic: gone", "0/2", corev1.EventTypeWarning},
		{"failure wins over uninstalled", []string{"gone", "failed"}, metav1.ConditionFalse, v1alpha1.ReasonProgramFailed, "Agent failed to program 1 of 2 nodes: failed: no table", "0/2", corev1.EventTypeWarning},
		{"too large wins", []string{"failed", "big"}, metav1.ConditionFalse, v1alpha1.ReasonRuleSetTooLarge, "Not fully enforced on 1 of 2 nodes: big: rules left out", "0/2", corev1.EventTypeWarning},
		{"unknown node counts as pending", []string{"unknown"}, metav1.ConditionFalse, v1alpha1.ReasonProgramming, "Programmed on 0 of 1 nodes; waiting for unknown", "0/1", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := v1alpha1.SummarizeProgress(c.span, progress)
			st := defaultDenyStatus(v1alpha1.DefaultDenyStatus{}, p, 2, progress, 7)
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
			typ, _, ok := policyEvent(p, 2, progress, 7)
			if ok != (c.event != "") || typ != c.event {
				t.Errorf("event %q (%v), want %q", typ, ok, c.event)
			}
		})
	}
}

func TestListTruncates(t *testing.T) {
	if got := list([]string{"a", "b", "c", "d", "e", "f", "g"}); got != "a, b, c, d, e and 2 more" {
		t.Fatalf("list = %q", got)
	}
}

// TestMessagesBounded: agents' messages (the kernel's error text among
// them) reach DefaultDeny status and Events in users' namespaces bounded
// and without control characters.
func TestMessagesBounded(t *testing.T) {
	long := "netlink: \x1b[31mEPERM\x1b[0m\n" + strings.Repeat("table inet nftguard: ", 300)
	var span []string
	for i := range 7 {
		span = append(span, fmt.Sprintf("node-%d", i))
	}
	progress := func(string) v1alpha1.Progress {
		return v1alpha1.Progress{State: v1alpha1.NodeFailed, Reason: v1alpha1.ReasonProgramFailed, Message: long}
	}
	p := v1alpha1.SummarizeProgress(span, progress)
	st := defaultDenyStatus(v1alpha1.DefaultDenyStatus{}, p, 2, progress, 1)
	_, note, _ := policyEvent(p, 2, progress, 1)
	for what, msg := range map[string]string{"condition": st.Conditions[0].Message, "event": note} {
		if len(msg) > message.Max {
			t.Errorf("%s message is %d bytes, want at most %d", what, len(msg), message.Max)
		}
		if i := strings.IndexFunc(msg, unicode.IsControl); i >= 0 {
			t.Errorf("%s message has a control character at %d: %q", what, i, msg)
		}
		if !strings.Contains(msg, "node-0: netlink: [31mEPERM") {
			t.Errorf("%s message lost the first node's error: %q", what, msg[:min(len(msg), 200)])
		}
	}
}
