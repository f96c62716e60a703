package v1alpha1

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NodeState is how far a node is with the rule set it should enforce.
type NodeState string

const (
	// NodeProgrammed: the agent programmed the wanted rule set.
	NodeProgrammed NodeState = "Programmed"
	// NodePending: the wanted rule set is not written yet, or its agent has
	// not reported it programmed yet.
	NodePending NodeState = "Pending"
	// NodeFailed: the agent reports Programmed=False; its previous rule set
	// stays in force.
	NodeFailed NodeState = "Failed"
	// NodeUninstalled: the agent deleted its table for uninstall; the node
	// filters no traffic.
	NodeUninstalled NodeState = "Uninstalled"
	// NodeTooLarge: the controller could not write the node's latest
	// compile (spec.unwritten); the node enforces an older one.
	NodeTooLarge NodeState = "TooLarge"
)

// Progress is a node's state, with the reason and message that explain it.
type Progress struct {
	State NodeState
	// Reason is the reason of the agent's Programmed condition or of the
	// controller's spec.unwritten, or ReasonProgramming while pending.
	Reason  string
	Message string
}

// NodeProgress says how far a node is with the rule set the controller
// wants it to enforce, from the stored NodeRuleSet alone (nil: none written
// yet). desiredGeneration is the generation of the object that holds the
// wanted spec: pass nrs.Generation when the spec it holds is the wanted one;
// a greater value means the wanted spec is not written yet.
//
// The states take precedence in this order: TooLarge (the controller's
// record in the spec overrides whatever the agent reports about the older
// rule set it holds), Failed, Uninstalled, Pending; a node is Programmed
// only when none applies.
func NodeProgress(nrs *NodeRuleSet, desiredGeneration int64) Progress {
	return NodeProgressOf(nrs, desiredGeneration, "")
}

// NodeProgressOf is NodeProgress for one policy (its key, as in
// Isolation.policies; "" for the node as a whole). On a node whose rule
// set leaves out the rules of some policies (spec.unwritten.policies),
// only those are TooLarge there: every other policy's progress is the
// agent's.
func NodeProgressOf(nrs *NodeRuleSet, desiredGeneration int64, policy string) Progress {
	if nrs == nil {
		return Progress{State: NodePending, Reason: ReasonProgramming, Message: "no rule set written for the node yet"}
	}
	if u := nrs.Spec.Unwritten; u != nil && (policy == "" || len(u.Policies) == 0 || slices.Contains(u.Policies, policy)) {
		return Progress{State: NodeTooLarge, Reason: u.Reason, Message: u.Describe()}
	}
	if l := nrs.Status.LeftOut; l != nil && nrs.Status.ObservedGeneration == nrs.Generation && desiredGeneration <= nrs.Generation &&
		(policy == "" || slices.Contains(l.Policies, policy)) {
		return Progress{State: NodeFailed, Reason: l.Reason, Message: l.Describe()}
	}
	c := meta.FindStatusCondition(nrs.Status.Conditions, ConditionProgrammed)
	switch {
	case c == nil:
		return Progress{State: NodePending, Reason: ReasonProgramming, Message: "no report from the node's agent yet"}
	case c.Status == metav1.ConditionFalse && c.Reason == ReasonUninstalled:
		return Progress{State: NodeUninstalled, Reason: c.Reason, Message: c.Message}
	case c.Status == metav1.ConditionFalse:
		return Progress{State: NodeFailed, Reason: c.Reason, Message: c.Message}
	case desiredGeneration > nrs.Generation:
		return Progress{State: NodePending, Reason: ReasonProgramming, Message: "the latest compile is not written to the rule set yet"}
	case c.Status == metav1.ConditionTrue && c.ObservedGeneration == nrs.Generation && nrs.Status.ObservedGeneration == nrs.Generation:
		return Progress{State: NodeProgrammed, Reason: c.Reason, Message: c.Message}
	}
	return Progress{State: NodePending, Reason: ReasonProgramming,
		Message: fmt.Sprintf("programmed generation %d, waiting for %d", nrs.Status.ObservedGeneration, nrs.Generation)}
}

// Describe says, in one sentence, what was not written and what the node
// enforces meanwhile.
func (u *Unwritten) Describe() string {
	if u.Reason == ReasonAddressGroupTooLarge {
		return fmt.Sprintf("Address groups %s exceed the %d-byte object limit (largest %d bytes); their membership is not updated",
			strings.Join(u.AddressGroups, ", "), u.Limit, u.Bytes)
	}
	if len(u.Policies) > 0 {
		return fmt.Sprintf("Compiled rule set is %d bytes, above the %d-byte object limit; the rules of %s are left out, and the pods they select stay isolated without them",
			u.Bytes, u.Limit, strings.Join(u.Policies, ", "))
	}
	return fmt.Sprintf("Compiled rule set is %d bytes, above the %d-byte object limit; the node keeps enforcing its previous rule set", u.Bytes, u.Limit)
}

// Describe says, in one sentence, what the agent left out.
func (l *LeftOut) Describe() string {
	return fmt.Sprintf("Address groups %s do not exist; the rules of %s that reference them are left out, and the pods they select stay isolated without them",
		strings.Join(l.AddressGroups, ", "), strings.Join(l.Policies, ", "))
}

// PolicyState sums up a policy's progress on the nodes it spans.
type PolicyState string

const (
	// PolicyEnforced: every node the policy spans programmed it.
	PolicyEnforced PolicyState = "Enforced"
	// PolicyNoSelectedPods: the policy spans no node.
	PolicyNoSelectedPods PolicyState = "NoSelectedPods"
	// PolicyProgramming: some node is pending.
	PolicyProgramming PolicyState = "Programming"
	// PolicyFailed: some node's agent failed.
	PolicyFailed PolicyState = "Failed"
	// PolicyUninstalled: some node is uninstalled.
	PolicyUninstalled PolicyState = "Uninstalled"
	// PolicyTooLarge: some node's latest compile is not written.
	PolicyTooLarge PolicyState = "TooLarge"
)

// PolicyProgress is the progress of one policy on the nodes it spans.
type PolicyProgress struct {
	State PolicyState
	// Reason is the reason of the DefaultDeny Enforced condition and of the
	// NetworkPolicy Event for State.
	Reason string
	// Desired counts the nodes the policy spans, Enforced those Programmed.
	Desired, Enforced int
	// The nodes in each other state, sorted.
	TooLarge, Failed, Uninstalled, Pending []string
}

// policyReasons maps each policy state to its reason.
var policyReasons = map[PolicyState]string{
	PolicyEnforced:       ReasonEnforced,
	PolicyNoSelectedPods: ReasonNoSelectedPods,
	PolicyProgramming:    ReasonProgramming,
	PolicyFailed:         ReasonProgramFailed,
	PolicyUninstalled:    ReasonUninstalled,
	PolicyTooLarge:       ReasonRuleSetTooLarge,
}

// SummarizeProgress sums up the progress of the nodes a policy spans, as
// progress reports each. The policy's state is the first that applies:
// TooLarge, Failed, Uninstalled (some node in that state), NoSelectedPods
// (no node), Programming (some node pending), else Enforced.
func SummarizeProgress(nodes []string, progress func(node string) Progress) PolicyProgress {
	p := PolicyProgress{Desired: len(nodes)}
	for _, n := range nodes {
		switch progress(n).State {
		case NodeProgrammed:
			p.Enforced++
		case NodeTooLarge:
			p.TooLarge = append(p.TooLarge, n)
		case NodeFailed:
			p.Failed = append(p.Failed, n)
		case NodeUninstalled:
			p.Uninstalled = append(p.Uninstalled, n)
		default:
			p.Pending = append(p.Pending, n)
		}
	}
	for _, l := range [][]string{p.TooLarge, p.Failed, p.Uninstalled, p.Pending} {
		slices.Sort(l)
	}
	switch {
	case len(p.TooLarge) > 0:
		p.State = PolicyTooLarge
	case len(p.Failed) > 0:
		p.State = PolicyFailed
	case len(p.Uninstalled) > 0:
		p.State = PolicyUninstalled
	case p.Desired == 0:
		p.State = PolicyNoSelectedPods
	case len(p.Pending) > 0:
		p.State = PolicyProgramming
	default:
		p.State = PolicyEnforced
	}
	p.Reason = policyReasons[p.State]
	return p
}

// Done reports whether the state is final: Enforced or NoSelectedPods (the
// Enforced condition is True).
func (p PolicyProgress) Done() bool {
	return p.State == PolicyEnforced || p.State == PolicyNoSelectedPods
}
