package controller

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/message"
)

// nodeProgress is a node's progress with the rule set the controller last
// planned for it (target; ok false when it planned none): the stored
// NodeRuleSet (nil if absent) holds the wanted spec when its spec equals
// the target, else the wanted spec is not written yet. policy is the
// policy whose progress it is (v1alpha1.NodeProgressOf).
func nodeProgress(rs *v1alpha1.NodeRuleSet, target v1alpha1.NodeRuleSetSpec, ok bool, policy string) v1alpha1.Progress {
	if rs == nil {
		return v1alpha1.NodeProgress(nil, 0)
	}
	want := rs.Generation
	if !ok || !equality.Semantic.DeepEqual(rs.Spec, target) {
		want++
	}
	return v1alpha1.NodeProgressOf(rs, want, policy)
}

// enforcedCondition is the Enforced condition of a DefaultDeny whose nodes
// are as p says; progress gives each node's progress, for the messages.
func enforcedCondition(p v1alpha1.PolicyProgress, selectedPods int, progress func(string) v1alpha1.Progress, generation int64) metav1.Condition {
	c := metav1.Condition{Type: v1alpha1.ConditionEnforced, ObservedGeneration: generation, Reason: p.Reason, Status: metav1.ConditionFalse}
	if p.Done() {
		c.Status = metav1.ConditionTrue
	}
	switch p.State {
	case v1alpha1.PolicyTooLarge:
		c.Message = fmt.Sprintf("Not fully enforced on %d of %d nodes: %s", len(p.TooLarge), p.Desired, list(details(p.TooLarge, progress)))
	case v1alpha1.PolicyFailed:
		c.Message = fmt.Sprintf("Agent failed to program %d of %d nodes: %s", len(p.Failed), p.Desired, list(details(p.Failed, progress)))
	case v1alpha1.PolicyUninstalled:
		c.Message = fmt.Sprintf("Uninstalled on %d of %d nodes, which filter no traffic: %s", len(p.Uninstalled), p.Desired, list(p.Uninstalled))
	case v1alpha1.PolicyNoSelectedPods:
		c.Message = "Selects no pods"
	case v1alpha1.PolicyProgramming:
		c.Message = fmt.Sprintf("Programmed on %d of %d nodes; waiting for %s", p.Enforced, p.Desired, list(p.Pending))
	default:
		c.Message = fmt.Sprintf("Programmed on all %d nodes hosting its %d pods", p.Desired, selectedPods)
	}
	return c
}

// policyEvent is the Event to record on a NetworkPolicy whose nodes are as
// p says; ok is false when there is nothing to say (it selects nothing, or
// is still programming).
func policyEvent(p v1alpha1.PolicyProgress, selectedPods int, progress func(string) v1alpha1.Progress, generation int64) (typ, note string, ok bool) {
	typ, note, ok = policyEventNote(p, selectedPods, progress, generation)
	return typ, message.Bound(note), ok
}

func policyEventNote(p v1alpha1.PolicyProgress, selectedPods int, progress func(string) v1alpha1.Progress, generation int64) (typ, note string, ok bool) {
	switch p.State {
	case v1alpha1.PolicyTooLarge:
		return corev1.EventTypeWarning, fmt.Sprintf("Not enforced on %d of %d nodes: %s", len(p.TooLarge), p.Desired, list(details(p.TooLarge, progress))), true
	case v1alpha1.PolicyFailed:
		return corev1.EventTypeWarning, fmt.Sprintf("Not enforced on %d of %d nodes: %s", len(p.Failed), p.Desired, list(details(p.Failed, progress))), true
	case v1alpha1.PolicyUninstalled:
		return corev1.EventTypeWarning, fmt.Sprintf("Not enforced on %d of %d nodes: uninstalled on %s, which filter no traffic", len(p.Uninstalled), p.Desired, list(p.Uninstalled)), true
	case v1alpha1.PolicyEnforced:
		return corev1.EventTypeNormal, fmt.Sprintf("Enforced on all %d nodes hosting its %d selected pods (generation %d)", p.Desired, selectedPods, generation), true
	}
	return "", "", false
}

// detailMax bounds each node's message in a list of details: an agent's
// message can hold the kernel's error text.
const detailMax = 160

// details lists nodes as "node: message".
func details(nodes []string, progress func(string) v1alpha1.Progress) []string {
	out := make([]string, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, n+": "+message.BoundTo(progress(n).Message, detailMax))
	}
	return out
}

// list joins at most five items, saying how many more there are.
func list(items []string) string {
	const most = 5
	if len(items) <= most {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:most], ", "), len(items)-most)
}

// defaultDenyStatus is the status a DefaultDeny should have.
func defaultDenyStatus(old v1alpha1.DefaultDenyStatus, p v1alpha1.PolicyProgress, selectedPods int, progress func(string) v1alpha1.Progress, generation int64) v1alpha1.DefaultDenyStatus {
	st := v1alpha1.DefaultDenyStatus{
		ObservedGeneration: generation,
		SelectedPods:       int32(selectedPods),
		DesiredNodes:       int32(p.Desired),
		EnforcedNodes:      int32(p.Enforced),
		Enforcement:        fmt.Sprintf("%d/%d", p.Enforced, p.Desired),
		Conditions:         slices.Clone(old.Conditions),
	}
	c := enforcedCondition(p, selectedPods, progress, generation)
	c.Message = message.Bound(c.Message)
	meta.SetStatusCondition(&st.Conditions, c)
	return st
}
