package controller

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/compiler"
)

// NodeState is how far one node's agent is with the rule set the controller
// last compiled for it.
type NodeState struct {
	// Current: the NodeRuleSet in the API holds the compiled spec.
	Current bool
	// Programmed: the agent reports Programmed=True for the object's generation.
	Programmed bool
	// Failed: the agent reports Programmed=False; Message says why.
	Failed  bool
	Message string
	// TooLarge: the compiled rule set, or a group it references, exceeds the
	// object size limit and was not written.
	TooLarge bool
}

// Enforced is true when the node enforces exactly what was compiled.
func (s NodeState) Enforced() bool { return s.Current && s.Programmed && !s.TooLarge }

// nodeStateOf derives a node's state from its NodeRuleSet (nil if absent).
func nodeStateOf(rs *v1alpha1.NodeRuleSet, desired v1alpha1.NodeRuleSetSpec, tooLarge bool) NodeState {
	if rs == nil {
		return NodeState{TooLarge: tooLarge}
	}
	st := NodeState{
		Current:  equality.Semantic.DeepEqual(rs.Spec, desired),
		TooLarge: tooLarge,
	}
	cond := meta.FindStatusCondition(rs.Status.Conditions, v1alpha1.ConditionProgrammed)
	if cond == nil {
		return st
	}
	switch cond.Status {
	case metav1.ConditionTrue:
		st.Programmed = rs.Status.ObservedGeneration == rs.Generation && cond.ObservedGeneration == rs.Generation
	case metav1.ConditionFalse:
		st.Failed = true
		st.Message = cond.Message
	}
	return st
}

// Enforcement aggregates the nodes a policy spans.
type Enforcement struct {
	SelectedPods int
	Desired      int
	Enforced     int
	// Failed holds "node: message" for each node whose agent failed.
	Failed []string
	// TooLarge lists the nodes whose rule set exceeds the size limit.
	TooLarge []string
	// Pending lists the nodes still programming.
	Pending []string
}

// aggregate sums the states of the nodes in a policy's span.
func aggregate(span compiler.PolicySpan, nodes map[string]NodeState) Enforcement {
	e := Enforcement{SelectedPods: span.SelectedPods, Desired: len(span.Nodes)}
	for _, n := range span.Nodes {
		st := nodes[n]
		switch {
		case st.TooLarge:
			e.TooLarge = append(e.TooLarge, n)
		case st.Enforced():
			e.Enforced++
		case st.Failed:
			e.Failed = append(e.Failed, n+": "+st.Message)
		default:
			e.Pending = append(e.Pending, n)
		}
	}
	slices.Sort(e.Failed)
	slices.Sort(e.TooLarge)
	slices.Sort(e.Pending)
	return e
}

// enforcedCondition is the Enforced condition for an aggregate.
func enforcedCondition(e Enforcement, generation int64) metav1.Condition {
	c := metav1.Condition{Type: v1alpha1.ConditionEnforced, ObservedGeneration: generation}
	switch {
	case len(e.TooLarge) > 0:
		c.Status, c.Reason = metav1.ConditionFalse, v1alpha1.ReasonRuleSetTooLarge
		c.Message = fmt.Sprintf("Rule set or one of its address groups exceeds the object size limit on %s; those nodes keep their previous rules", list(e.TooLarge))
	case len(e.Failed) > 0:
		c.Status, c.Reason = metav1.ConditionFalse, v1alpha1.ReasonProgramFailed
		c.Message = fmt.Sprintf("Agent failed to program %d of %d nodes: %s", len(e.Failed), e.Desired, list(e.Failed))
	case e.Desired == 0:
		c.Status, c.Reason = metav1.ConditionTrue, v1alpha1.ReasonNoSelectedPods
		c.Message = "Selects no pods"
	case e.Enforced < e.Desired:
		c.Status, c.Reason = metav1.ConditionFalse, v1alpha1.ReasonProgramming
		c.Message = fmt.Sprintf("Programmed on %d of %d nodes; waiting for %s", e.Enforced, e.Desired, list(e.Pending))
	default:
		c.Status, c.Reason = metav1.ConditionTrue, v1alpha1.ReasonEnforced
		c.Message = fmt.Sprintf("Programmed on all %d nodes hosting its %d pods", e.Desired, e.SelectedPods)
	}
	return c
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
func defaultDenyStatus(old v1alpha1.DefaultDenyStatus, e Enforcement, generation int64) v1alpha1.DefaultDenyStatus {
	st := v1alpha1.DefaultDenyStatus{
		ObservedGeneration: generation,
		SelectedPods:       int32(e.SelectedPods),
		DesiredNodes:       int32(e.Desired),
		EnforcedNodes:      int32(e.Enforced),
		Enforcement:        fmt.Sprintf("%d/%d", e.Enforced, e.Desired),
		Conditions:         slices.Clone(old.Conditions),
	}
	meta.SetStatusCondition(&st.Conditions, enforcedCondition(e, generation))
	return st
}
