package controller

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// The plan tests need no API server: planWrites is a pure function of the
// compiled state, the objects in the API and the limit.

func testNode(name string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, UID: "uid-" + types.UID(name)}}
}

func ruleSetSpec(groups ...string) v1alpha1.NodeRuleSetSpec {
	return v1alpha1.NodeRuleSetSpec{AddressGroups: groups}
}

func groupSpec(addrs ...string) v1alpha1.AddressGroupSpec {
	return v1alpha1.AddressGroupSpec{Namespace: "x", Addresses: addrs}
}

func curRuleSet(name string, spec v1alpha1.NodeRuleSetSpec) *v1alpha1.NodeRuleSet {
	return &v1alpha1.NodeRuleSet{ObjectMeta: metav1.ObjectMeta{Name: name, UID: "rs-" + types.UID(name), OwnerReferences: ownerOf(testNode(name))}, Spec: spec}
}

func curGroup(name string, spec v1alpha1.AddressGroupSpec, nodes int32) *v1alpha1.AddressGroup {
	return &v1alpha1.AddressGroup{ObjectMeta: metav1.ObjectMeta{Name: name, UID: "ag-" + types.UID(name)}, Spec: spec,
		Status: v1alpha1.AddressGroupStatus{Size: int32(len(spec.Addresses)), Nodes: nodes}}
}

// writes renders a plan's writes as "<kind> <name>" lines, in order.
func writes(p plan) []string {
	var out []string
	for _, w := range p.Writes {
		s := w.Kind.String() + " " + w.Name
		if len(w.NeededBy) > 0 {
			s += " unless " + strings.Join(w.NeededBy, ",") + " fails"
		}
		out = append(out, s)
	}
	return out
}

func TestPlanWrites(t *testing.T) {
	big := v1alpha1.NodeRuleSetSpec{Pods: []v1alpha1.LocalPod{{Namespace: "x", Name: strings.Repeat("p", 400)}}, AddressGroups: []string{"ag-new"}}
	const limit = 300
	cases := []struct {
		name    string
		in      planInput
		writes  []string
		retries []string
		notices []string
		targets map[string]*v1alpha1.Unwritten // the Unwritten of each planned target
	}{{
		name: "a new node and its group: the group first",
		in: planInput{
			RuleSets: []string{"n1"}, Groups: []string{"ag-1"},
			DesiredRuleSets: map[string]v1alpha1.NodeRuleSetSpec{"n1": ruleSetSpec("ag-1")},
			DesiredGroups:   map[string]v1alpha1.AddressGroupSpec{"ag-1": groupSpec("198.18.0.1")},
			Nodes:           map[string]*corev1.Node{"n1": testNode("n1")},
		},
		writes:  []string{"create AddressGroup ag-1", "create NodeRuleSet n1"},
		targets: map[string]*v1alpha1.Unwritten{"n1": nil},
	}, {
		name: "nothing changed: nothing written",
		in: planInput{
			RuleSets: []string{"n1"}, Groups: []string{"ag-1"},
			DesiredRuleSets: map[string]v1alpha1.NodeRuleSetSpec{"n1": ruleSetSpec("ag-1")},
			DesiredGroups:   map[string]v1alpha1.AddressGroupSpec{"ag-1": groupSpec("198.18.0.1")},
			GroupNodes:      map[string]int32{"ag-1": 1},
			CurRuleSets:     map[string]*v1alpha1.NodeRuleSet{"n1": curRuleSet("n1", ruleSetSpec("ag-1"))},
			CurGroups:       map[string]*v1alpha1.AddressGroup{"ag-1": curGroup("ag-1", groupSpec("198.18.0.1"), 1)},
			Nodes:           map[string]*corev1.Node{"n1": testNode("n1")},
		},
		targets: map[string]*v1alpha1.Unwritten{"n1": nil},
	}, {
		name: "a member and a reference change: spec, then status",
		in: planInput{
			Groups:        []string{"ag-1"},
			DesiredGroups: map[string]v1alpha1.AddressGroupSpec{"ag-1": groupSpec("198.18.0.1", "198.18.0.2")},
			GroupNodes:    map[string]int32{"ag-1": 2},
			CurGroups:     map[string]*v1alpha1.AddressGroup{"ag-1": curGroup("ag-1", groupSpec("198.18.0.1"), 1)},
		},
		writes: []string{"update AddressGroup ag-1", "update AddressGroup status ag-1"},
	}, {
		name: "a node re-created under its name: the owner is rewritten",
		in: planInput{
			RuleSets:        []string{"n1"},
			DesiredRuleSets: map[string]v1alpha1.NodeRuleSetSpec{"n1": ruleSetSpec()},
			CurRuleSets:     map[string]*v1alpha1.NodeRuleSet{"n1": curRuleSet("n1", ruleSetSpec())},
			Nodes:           map[string]*corev1.Node{"n1": {ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "new"}}},
		},
		writes:  []string{"update NodeRuleSet n1"},
		targets: map[string]*v1alpha1.Unwritten{"n1": nil},
	}, {
		name: "a group no longer referenced is deleted after the rule set that referenced it",
		in: planInput{
			RuleSets: []string{"n1"}, Groups: []string{"ag-old", "ag-1"},
			DesiredRuleSets: map[string]v1alpha1.NodeRuleSetSpec{"n1": ruleSetSpec("ag-1")},
			DesiredGroups:   map[string]v1alpha1.AddressGroupSpec{"ag-1": groupSpec()},
			CurRuleSets:     map[string]*v1alpha1.NodeRuleSet{"n1": curRuleSet("n1", ruleSetSpec("ag-old"))},
			CurGroups:       map[string]*v1alpha1.AddressGroup{"ag-old": curGroup("ag-old", groupSpec(), 1)},
			Nodes:           map[string]*corev1.Node{"n1": testNode("n1")},
		},
		writes:  []string{"create AddressGroup ag-1", "update NodeRuleSet n1", "delete AddressGroup ag-old unless n1 fails"},
		targets: map[string]*v1alpha1.Unwritten{"n1": nil},
	}, {
		name: "the rule set of a deleted node is deleted; one whose node the engine has not seen is kept",
		in: planInput{
			RuleSets:    []string{"gone", "unseen", "never"},
			CurRuleSets: map[string]*v1alpha1.NodeRuleSet{"gone": curRuleSet("gone", ruleSetSpec()), "unseen": curRuleSet("unseen", ruleSetSpec())},
			Nodes:       map[string]*corev1.Node{"unseen": testNode("unseen")},
		},
		writes: []string{"delete NodeRuleSet gone"},
	}, {
		name: "a rule set whose node is not in the cache yet is retried, and keeps its groups",
		in: planInput{
			RuleSets: []string{"n1"}, Groups: []string{"ag-old"},
			DesiredRuleSets: map[string]v1alpha1.NodeRuleSetSpec{"n1": ruleSetSpec()},
			CurRuleSets:     map[string]*v1alpha1.NodeRuleSet{"n1": curRuleSet("n1", ruleSetSpec("ag-old"))},
			CurGroups:       map[string]*v1alpha1.AddressGroup{"ag-old": curGroup("ag-old", groupSpec(), 1)},
		},
		retries: []string{"NodeRuleSet n1: node n1 is not in the cache yet", "AddressGroup ag-old"},
	}, {
		name: "a rule set above the limit keeps its spec, says so, and keeps its groups",
		in: planInput{
			RuleSets: []string{"n1"}, Groups: []string{"ag-old", "ag-new"},
			DesiredRuleSets: map[string]v1alpha1.NodeRuleSetSpec{"n1": big},
			DesiredGroups:   map[string]v1alpha1.AddressGroupSpec{"ag-new": groupSpec()},
			CurRuleSets:     map[string]*v1alpha1.NodeRuleSet{"n1": curRuleSet("n1", ruleSetSpec("ag-old"))},
			CurGroups:       map[string]*v1alpha1.AddressGroup{"ag-old": curGroup("ag-old", groupSpec(), 1)},
			Nodes:           map[string]*corev1.Node{"n1": testNode("n1")},
		},
		writes:  []string{"create AddressGroup ag-new", "update NodeRuleSet n1"},
		retries: []string{"AddressGroup ag-old"},
		notices: []string{"n1 RuleSetTooLarge"},
		targets: map[string]*v1alpha1.Unwritten{"n1": {Reason: v1alpha1.ReasonRuleSetTooLarge, Bytes: int64(specSize(big)), Limit: limit}},
	}, {
		name: "a first rule set above the limit is not written at all",
		in: planInput{
			RuleSets:        []string{"n1"},
			DesiredRuleSets: map[string]v1alpha1.NodeRuleSetSpec{"n1": big},
			Nodes:           map[string]*corev1.Node{"n1": testNode("n1")},
		},
		notices: []string{"n1 RuleSetTooLarge"},
	}, {
		name: "a group above the limit is not written; the rule sets referencing it say so",
		in: planInput{
			RuleSets: []string{"n1"}, Groups: []string{"ag-huge"},
			DesiredRuleSets: map[string]v1alpha1.NodeRuleSetSpec{"n1": ruleSetSpec("ag-1", "ag-huge"), "n2": ruleSetSpec("ag-huge"), "n3": ruleSetSpec("ag-1")},
			DesiredGroups:   map[string]v1alpha1.AddressGroupSpec{"ag-huge": groupSpec()},
			OversizedGroups: map[string]int{"ag-huge": 999},
			Nodes:           map[string]*corev1.Node{"n1": testNode("n1")},
		},
		writes:  []string{"create NodeRuleSet n1"},
		notices: []string{"n1 AddressGroupTooLarge", "n2 AddressGroupTooLarge"},
		targets: map[string]*v1alpha1.Unwritten{"n1": {Reason: v1alpha1.ReasonAddressGroupTooLarge, Bytes: 999, Limit: limit, AddressGroups: []string{"ag-huge"}}},
	}, {
		name: "a rule set whose groups fit again stops saying so",
		in: planInput{
			RuleSets:        []string{"n1"},
			DesiredRuleSets: map[string]v1alpha1.NodeRuleSetSpec{"n1": ruleSetSpec("ag-1")},
			CurRuleSets: map[string]*v1alpha1.NodeRuleSet{"n1": curRuleSet("n1", v1alpha1.NodeRuleSetSpec{AddressGroups: []string{"ag-1"},
				Unwritten: &v1alpha1.Unwritten{Reason: v1alpha1.ReasonAddressGroupTooLarge, AddressGroups: []string{"ag-1"}}})},
			Nodes: map[string]*corev1.Node{"n1": testNode("n1")},
		},
		writes:  []string{"update NodeRuleSet n1"},
		targets: map[string]*v1alpha1.Unwritten{"n1": nil},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.in.MaxBytes = limit
			p := planWrites(c.in)
			if got := writes(p); !slices.Equal(got, c.writes) {
				t.Errorf("writes\n  %q\nwant\n  %q", got, c.writes)
			}
			var retries, notices []string
			for _, r := range p.Retries {
				s := "NodeRuleSet " + r.Name
				if r.Group {
					s = "AddressGroup " + r.Name
				}
				if r.Err != nil {
					s += ": " + r.Err.Error()
				}
				retries = append(retries, s)
			}
			for _, n := range p.Notices {
				notices = append(notices, n.Node+" "+n.Reason)
			}
			if !slices.Equal(retries, c.retries) {
				t.Errorf("retries %q, want %q", retries, c.retries)
			}
			if !slices.Equal(notices, c.notices) {
				t.Errorf("notices %q, want %q", notices, c.notices)
			}
			if len(p.Targets) != len(c.targets) {
				t.Errorf("targets for %d rule sets, want %d: %+v", len(p.Targets), len(c.targets), p.Targets)
			}
			for name, want := range c.targets {
				got, ok := p.Targets[name]
				if !ok || fmt.Sprint(got.Unwritten) != fmt.Sprint(want) {
					t.Errorf("target of %s: unwritten %+v, want %+v", name, got.Unwritten, want)
				}
			}
			// A planned rule set write sends its target.
			for _, w := range p.Writes {
				if rs, ok := w.Object.(*v1alpha1.NodeRuleSet); ok && fmt.Sprint(rs.Spec.Unwritten) != fmt.Sprint(p.Targets[w.Name].Unwritten) {
					t.Errorf("write of %s sends unwritten %+v, target %+v", w.Name, rs.Spec.Unwritten, p.Targets[w.Name].Unwritten)
				}
			}
		})
	}
}

func TestPlanKeepsTheSpecOfARuleSetTooLarge(t *testing.T) {
	old := ruleSetSpec("ag-old")
	big := v1alpha1.NodeRuleSetSpec{Pods: []v1alpha1.LocalPod{{Namespace: "x", Name: strings.Repeat("p", 400)}}}
	p := planWrites(planInput{
		RuleSets: []string{"n1"}, MaxBytes: 300,
		DesiredRuleSets: map[string]v1alpha1.NodeRuleSetSpec{"n1": big},
		CurRuleSets:     map[string]*v1alpha1.NodeRuleSet{"n1": curRuleSet("n1", old)},
		Nodes:           map[string]*corev1.Node{"n1": testNode("n1")},
	})
	rs := p.Writes[0].Object.(*v1alpha1.NodeRuleSet)
	if len(rs.Spec.Pods) != 0 || !slices.Equal(rs.Spec.AddressGroups, old.AddressGroups) {
		t.Errorf("wrote spec %+v, want the previous one with unwritten set", rs.Spec)
	}
	if p.RuleSetBytes["n1"] != specSize(big) || p.Largest != specSize(big) {
		t.Errorf("sizes %v, largest %d, want %d", p.RuleSetBytes, p.Largest, specSize(big))
	}
}

func TestMeasureGroups(t *testing.T) {
	desired := map[string]v1alpha1.AddressGroupSpec{
		"small": groupSpec("198.18.0.1"),
		"huge":  groupSpec(strings.Split(strings.Repeat("198.18.0.1,", 40), ",")...),
	}
	oversized := map[string]int{"gone": 500, "shrunk": 500}
	changed := measureGroups([]string{"gone", "huge", "shrunk", "small"}, desired, oversized, 300)
	if !slices.Equal(changed, []string{"gone", "huge", "shrunk"}) {
		t.Errorf("changed %q", changed)
	}
	if len(oversized) != 1 || oversized["huge"] != specSize(desired["huge"]) {
		t.Errorf("oversized %v", oversized)
	}
	if changed := measureGroups([]string{"huge"}, desired, oversized, 300); len(changed) != 0 {
		t.Errorf("measuring again changed %q", changed)
	}
	if got := referencing(map[string]v1alpha1.NodeRuleSetSpec{"b": ruleSetSpec("huge"), "a": ruleSetSpec("x", "huge"), "c": ruleSetSpec("x")}, []string{"huge"}); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("referencing %q", got)
	}
}

// TestPlanLeavesOutTheRulesOfTheLargestPolicy: a rule set above the limit
// because of one policy's many ipBlocks is written without that policy's
// rules (its pods stay isolated, without them) and with every other
// policy's, instead of freezing the node.
func TestPlanLeavesOutTheRulesOfTheLargestPolicy(t *testing.T) {
	const big, small, both = "NetworkPolicy/big/many", "NetworkPolicy/small/few", "NetworkPolicy/small/shared"
	var peers []v1alpha1.Peer
	for i := range 200 {
		peers = append(peers, v1alpha1.Peer{IPBlock: &v1alpha1.IPBlock{CIDR: fmt.Sprintf("198.18.%d.%d/32", i/250, i%250)}})
	}
	spec := v1alpha1.NodeRuleSetSpec{
		Pods: []v1alpha1.LocalPod{
			{Namespace: "big", Name: "a", UID: "u1", Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Policies: []string{big}, Rules: []string{"r-big", "r-both"}}},
			{Namespace: "small", Name: "b", UID: "u2", Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Policies: []string{both, small}, Rules: []string{"r-both", "r-small"}}},
		},
		Rules: []v1alpha1.Rule{
			{ID: "r-big", Direction: v1alpha1.DirectionIngress, Peers: peers, Policies: []string{big}},
			{ID: "r-both", Direction: v1alpha1.DirectionIngress, Peers: []v1alpha1.Peer{{AddressGroup: "ag-shared"}}, Policies: []string{big, both}},
			{ID: "r-small", Direction: v1alpha1.DirectionIngress, Peers: []v1alpha1.Peer{{AddressGroup: "ag-small"}}, Policies: []string{small}},
		},
		AddressGroups: []string{"ag-shared", "ag-small"},
	}
	maxBytes := specSize(spec) / 2
	p := planWrites(planInput{
		RuleSets: []string{"n1"}, MaxBytes: maxBytes,
		DesiredRuleSets: map[string]v1alpha1.NodeRuleSetSpec{"n1": spec},
		CurRuleSets:     map[string]*v1alpha1.NodeRuleSet{"n1": curRuleSet("n1", ruleSetSpec("ag-old"))},
		Nodes:           map[string]*corev1.Node{"n1": testNode("n1")},
	})
	if len(p.Writes) != 1 {
		t.Fatalf("writes %+v", p.Writes)
	}
	got := p.Writes[0].Object.(*v1alpha1.NodeRuleSet).Spec
	if size := specSize(got); size > maxBytes {
		t.Errorf("wrote %d bytes, above the %d-byte limit", size, maxBytes)
	}
	want := &v1alpha1.Unwritten{Reason: v1alpha1.ReasonRuleSetTooLarge, Bytes: int64(specSize(spec)), Limit: int64(maxBytes), Policies: []string{big}}
	if !equality.Semantic.DeepEqual(got.Unwritten, want) {
		t.Errorf("unwritten %+v, want %+v", got.Unwritten, want)
	}
	var ids []string
	for _, r := range got.Rules {
		ids = append(ids, r.ID)
	}
	if !slices.Equal(ids, []string{"r-both", "r-small"}) {
		t.Errorf("rules %v, want the shared one and the small policy's", ids)
	}
	if !slices.Equal(got.AddressGroups, spec.AddressGroups) {
		t.Errorf("groups %v", got.AddressGroups)
	}
	a, b := got.Pods[0].Ingress, got.Pods[1].Ingress
	if a == nil || !slices.Equal(a.Policies, []string{big}) || !slices.Equal(a.Rules, []string{"r-both"}) {
		t.Errorf("big/a isolation %+v: want still isolated by its policy, without r-big", a)
	}
	if b == nil || !slices.Equal(b.Rules, []string{"r-both", "r-small"}) {
		t.Errorf("small/b isolation %+v: want unchanged", b)
	}
	if len(p.Notices) != 1 || !strings.Contains(p.Notices[0].Message, big) {
		t.Errorf("notices %+v, want one naming %s", p.Notices, big)
	}
	if p.RuleSetBytes["n1"] != specSize(spec) {
		t.Errorf("sizes %v", p.RuleSetBytes)
	}

	// Leaving out every rule is not enough: the previous spec stays.
	p = planWrites(planInput{
		RuleSets: []string{"n1"}, MaxBytes: 100,
		DesiredRuleSets: map[string]v1alpha1.NodeRuleSetSpec{"n1": spec},
		CurRuleSets:     map[string]*v1alpha1.NodeRuleSet{"n1": curRuleSet("n1", ruleSetSpec("ag-old"))},
		Nodes:           map[string]*corev1.Node{"n1": testNode("n1")},
	})
	if got := p.Writes[0].Object.(*v1alpha1.NodeRuleSet).Spec; !slices.Equal(got.AddressGroups, []string{"ag-old"}) || got.Unwritten == nil || len(got.Unwritten.Policies) != 0 {
		t.Errorf("wrote %+v, want the previous spec with unwritten and no policies", got)
	}
}
