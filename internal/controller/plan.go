package controller

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// planInput is what a pass decides its writes from: the names to compare,
// the compiled state, the objects the API holds under those names, and the
// size limit. It is read, never modified.
type planInput struct {
	// RuleSets and Groups are the names to compare.
	RuleSets, Groups []string
	// DesiredRuleSets and DesiredGroups are the compiled specs (a name
	// absent is not desired); the specs are shared and must not change.
	DesiredRuleSets map[string]v1alpha1.NodeRuleSetSpec
	DesiredGroups   map[string]v1alpha1.AddressGroupSpec
	// GroupNodes counts the rule sets referencing each group (the Engine's
	// count), for the groups' status.
	GroupNodes map[string]int32
	// GroupSpans holds each group's span labels (v1alpha1.SpanLabels): the
	// buckets of the nodes whose rule sets reference it.
	GroupSpans map[string]map[string]string
	// OversizedGroups holds the size of every desired group whose spec
	// exceeds the limit (see measureGroups).
	OversizedGroups map[string]int
	// CurRuleSets, CurGroups and Nodes are the API's objects by name; a
	// name absent has no object.
	CurRuleSets map[string]*v1alpha1.NodeRuleSet
	CurGroups   map[string]*v1alpha1.AddressGroup
	Nodes       map[string]*corev1.Node
	// MaxBytes bounds a written spec.
	MaxBytes int
}

// writeKind is what a write does.
type writeKind int

const (
	createGroup writeKind = iota
	updateGroup
	updateGroupStatus
	createRuleSet
	updateRuleSet
	deleteRuleSet
	deleteGroup
)

func (k writeKind) String() string {
	return [...]string{"create AddressGroup", "update AddressGroup", "update AddressGroup status",
		"create NodeRuleSet", "update NodeRuleSet", "delete NodeRuleSet", "delete AddressGroup"}[k]
}

// write is one API write. Object is what is sent: a copy the plan made,
// which the client may decode the response into. Base is the object in
// the API an update is a merge patch from, or that a delete names (by UID).
type write struct {
	Kind   writeKind
	Name   string
	Object client.Object
	Base   client.Object
	// NeededBy, for deleteGroup, names the rule sets being rewritten whose
	// current spec references the group: when one of their writes fails,
	// the group is kept.
	NeededBy []string
}

// notice is a warning Event to record on a Node.
type notice struct {
	Node, Reason, Message string
}

// retry is an output to compare again in the next pass; Err, when set,
// says why the pass could not converge it.
type retry struct {
	Group bool
	Name  string
	Err   error
}

// plan is what a pass does, in order.
type plan struct {
	// Writes, in the order to perform them: groups (specs, then their
	// status) before the rule sets that may reference them, then
	// deletions of rule sets of deleted nodes, then of unreferenced groups.
	Writes []write
	// Targets holds the spec each compared desired rule set is to have in
	// the API; a name compared without one gets none written (its node is
	// not in the cache yet, or its first rule set is too large).
	Targets map[string]v1alpha1.NodeRuleSetSpec
	// RuleSetBytes holds, for each compared rule set, the size of its
	// compiled spec when it exceeds the limit, else 0.
	RuleSetBytes map[string]int
	// Kept names the rule sets that keep their previous spec (the compiled
	// one is above the limit even without any policy's rules).
	Kept map[string]bool
	// Largest is the size of the largest compiled spec compared.
	Largest int
	Notices []notice
	Retries []retry
}

// measureGroups records the size of each of the named groups that exceeds
// the limit in oversized (and forgets those that fit or are gone); it
// returns the groups whose state changed: the rule sets referencing them
// must be compared again, to say so or to stop saying so.
func measureGroups(names []string, desired map[string]v1alpha1.AddressGroupSpec, oversized map[string]int, maxBytes int) (changed []string) {
	for _, name := range names {
		_, was := oversized[name]
		delete(oversized, name)
		if spec, ok := desired[name]; ok {
			if size := specSize(spec); size > maxBytes {
				oversized[name] = size
			}
		}
		if _, is := oversized[name]; is != was {
			changed = append(changed, name)
		}
	}
	return changed
}

// referencing returns, sorted, the rule sets that reference any of groups.
func referencing(ruleSets map[string]v1alpha1.NodeRuleSetSpec, groups []string) []string {
	if len(groups) == 0 {
		return nil
	}
	var out []string
	for name, spec := range ruleSets {
		if slices.ContainsFunc(groups, func(g string) bool { return slices.Contains(spec.AddressGroups, g) }) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// planWrites decides the writes that bring the compared outputs in the API
// to the compiled state:
//   - a group is created or updated when its spec differs, and its status
//     when its size or reference count does; one above the size limit is
//     not written, and every node referencing it gets a warning;
//   - a rule set is created or updated when its spec or owner differs. One
//     above the size limit is not written: its current spec stays, with
//     spec.unwritten saying why, and the groups it references are kept. A
//     rule set referencing groups above the limit is written with
//     spec.unwritten naming them;
//   - the rule set of a node that is gone is deleted, and so is a group
//     nothing desired references, unless a rule set kept or failing to be
//     rewritten still references it.
func planWrites(in planInput) plan {
	p := plan{Targets: map[string]v1alpha1.NodeRuleSetSpec{}, RuleSetBytes: map[string]int{}, Kept: map[string]bool{}}
	groups := slices.Sorted(slices.Values(in.Groups))
	ruleSets := slices.Sorted(slices.Values(in.RuleSets))

	for _, name := range groups {
		spec, ok := in.DesiredGroups[name]
		if !ok {
			continue
		}
		cur := in.CurGroups[name]
		size, over := in.OversizedGroups[name]
		if over {
			for _, node := range referencing(in.DesiredRuleSets, []string{name}) {
				p.Notices = append(p.Notices, notice{Node: node, Reason: v1alpha1.ReasonAddressGroupTooLarge,
					Message: fmt.Sprintf("Address group %s is %d bytes, above the %d-byte object limit; its membership is not updated", name, size, in.MaxBytes)})
			}
			if cur == nil {
				continue
			}
			// Its members stay as written, but its span follows the nodes
			// that need them.
			spec = cur.Spec
		}
		// The span labels are written with the spec (before the rule sets
		// that come to reference the group), so the agents that need the
		// group are watching it by then.
		span := in.GroupSpans[name]
		if cur == nil {
			ag := &v1alpha1.AddressGroup{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: withSpan(managedLabels(), span)}, Spec: *spec.DeepCopy()}
			p.Writes = append(p.Writes, write{Kind: createGroup, Name: name, Object: ag})
			continue // its status is written once the create is in the cache
		}
		if !maps.Equal(spanLabels(cur.Labels), span) || !equality.Semantic.DeepEqual(cur.Spec, spec) {
			ag := cur.DeepCopy()
			ag.Spec = *spec.DeepCopy()
			ag.Labels = withSpan(cur.Labels, span)
			p.Writes = append(p.Writes, write{Kind: updateGroup, Name: name, Object: ag, Base: cur})
		}
		if over {
			continue
		}
		want := v1alpha1.AddressGroupStatus{Size: int32(len(spec.Addresses) + len(spec.Endpoints)), Nodes: in.GroupNodes[name]}
		if cur.Status != want {
			ag := cur.DeepCopy()
			ag.Status = want
			p.Writes = append(p.Writes, write{Kind: updateGroupStatus, Name: name, Object: ag, Base: cur})
		}
	}

	keep := map[string]bool{}          // groups a rule set not rewritten still references
	rewritten := map[string][]string{} // group -> rewritten rule sets whose current spec references it
	var deletions []write
	for _, name := range ruleSets {
		cur := in.CurRuleSets[name]
		node := in.Nodes[name]
		spec, ok := in.DesiredRuleSets[name]
		if !ok {
			p.RuleSetBytes[name] = 0
			// A node the engine has not seen yet keeps its rule set; its
			// event will come.
			if cur != nil && (node == nil || !node.DeletionTimestamp.IsZero()) {
				deletions = append(deletions, write{Kind: deleteRuleSet, Name: name, Base: cur})
			}
			continue
		}
		if node == nil {
			// The engine saw the node; the cache will too. Try again then.
			p.Retries = append(p.Retries, retry{Name: name, Err: fmt.Errorf("node %s is not in the cache yet", name)})
			if cur != nil {
				for _, g := range cur.Spec.AddressGroups {
					keep[g] = true
				}
			}
			continue
		}
		size := specSize(spec)
		p.Largest = max(p.Largest, size)
		p.RuleSetBytes[name] = 0
		var target v1alpha1.NodeRuleSetSpec
		trimmed, left, fits := spec, []string(nil), size <= in.MaxBytes
		if !fits {
			trimmed, left, fits = leaveOutRules(spec, size, in.MaxBytes)
		}
		if fits && len(left) > 0 {
			// Degrade per policy: the largest contributors' rules go, their
			// pods stay isolated without them, every other policy holds.
			p.RuleSetBytes[name] = size
			p.Notices = append(p.Notices, notice{Node: name, Reason: v1alpha1.ReasonRuleSetTooLarge,
				Message: fmt.Sprintf("Compiled rule set is %d bytes, above the %d-byte object limit; the rules of %s are left out, and the pods they select stay isolated without them",
					size, in.MaxBytes, strings.Join(left, ", "))})
			spec = trimmed
		}
		if !fits {
			p.RuleSetBytes[name] = size
			p.Notices = append(p.Notices, notice{Node: name, Reason: v1alpha1.ReasonRuleSetTooLarge,
				Message: fmt.Sprintf("Compiled rule set is %d bytes, above the %d-byte object limit; the node keeps enforcing its previous rule set", size, in.MaxBytes)})
			if cur == nil {
				continue // nothing to keep enforcing: write nothing
			}
			for _, g := range cur.Spec.AddressGroups {
				keep[g] = true
			}
			p.Kept[name] = true
			target = cur.Spec
			target.Unwritten = &v1alpha1.Unwritten{Reason: v1alpha1.ReasonRuleSetTooLarge, Bytes: int64(size), Limit: int64(in.MaxBytes)}
		} else {
			target = spec
			var over []string
			largest := 0
			for _, g := range spec.AddressGroups {
				if size, ok := in.OversizedGroups[g]; ok {
					over = append(over, g)
					largest = max(largest, size)
				}
			}
			switch {
			case len(over) > 0:
				slices.Sort(over)
				target.Unwritten = &v1alpha1.Unwritten{Reason: v1alpha1.ReasonAddressGroupTooLarge,
					Bytes: int64(largest), Limit: int64(in.MaxBytes), AddressGroups: over}
			case len(left) > 0:
				target.Unwritten = &v1alpha1.Unwritten{Reason: v1alpha1.ReasonRuleSetTooLarge,
					Bytes: int64(size), Limit: int64(in.MaxBytes), Policies: left}
			}
		}
		p.Targets[name] = target
		switch {
		case cur == nil:
			rs := &v1alpha1.NodeRuleSet{
				ObjectMeta: metav1.ObjectMeta{Name: name, Labels: managedLabels(), OwnerReferences: ownerOf(node)},
				Spec:       *target.DeepCopy(),
			}
			p.Writes = append(p.Writes, write{Kind: createRuleSet, Name: name, Object: rs})
		case !equality.Semantic.DeepEqual(cur.Spec, target) || !ownedBy(cur, node):
			rs := cur.DeepCopy()
			rs.Spec = *target.DeepCopy()
			if !ownedBy(cur, node) {
				// A node deleted and re-created under the same name gets a new UID.
				rs.OwnerReferences = ownerOf(node)
			}
			p.Writes = append(p.Writes, write{Kind: updateRuleSet, Name: name, Object: rs, Base: cur})
			for _, g := range cur.Spec.AddressGroups {
				rewritten[g] = append(rewritten[g], name)
			}
		}
	}
	p.Writes = append(p.Writes, deletions...)

	for _, name := range groups {
		if _, ok := in.DesiredGroups[name]; ok {
			continue
		}
		if keep[name] {
			p.Retries = append(p.Retries, retry{Group: true, Name: name}) // delete it once no kept rule set needs it
			continue
		}
		if cur := in.CurGroups[name]; cur != nil {
			p.Writes = append(p.Writes, write{Kind: deleteGroup, Name: name, Base: cur, NeededBy: rewritten[name]})
		}
	}
	return p
}

func ownerOf(node *corev1.Node) []metav1.OwnerReference {
	return []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID, Controller: ptr.To(true)}}
}

func ownedBy(rs *v1alpha1.NodeRuleSet, node *corev1.Node) bool {
	return slices.ContainsFunc(rs.OwnerReferences, func(o metav1.OwnerReference) bool {
		return o.Kind == "Node" && o.UID == node.UID
	})
}

// leaveOutRules fits a rule set above the size limit by leaving out the
// rules of the policies that contribute the most bytes, as few policies as
// needed, largest first (ties by name). A rule goes only when every policy
// it comes from is left out; the pods keep their isolation and lose the
// ids of the rules that went, so they fail closed for what those policies
// allowed, and no other policy changes. It returns the trimmed spec and the
// policies left out, sorted (the spec's unwritten records them); fits is false when even leaving out every
// rule does not fit (the pods alone are too many).
func leaveOutRules(spec v1alpha1.NodeRuleSetSpec, size, maxBytes int) (trimmed v1alpha1.NodeRuleSetSpec, left []string, fits bool) {
	sizes := make([]int, len(spec.Rules))
	weight := map[string]int{}
	for i, r := range spec.Rules {
		sizes[i] = specSize(r) + 1 // and its comma
		for _, pol := range r.Policies {
			weight[pol] += sizes[i]
		}
	}
	order := slices.Collect(maps.Keys(weight))
	slices.SortFunc(order, func(a, b string) int { return cmp.Or(cmp.Compare(weight[b], weight[a]), cmp.Compare(a, b)) })
	gone := map[string]bool{}
	estimate := size
	for _, pol := range order {
		gone[pol] = true
		left = append(left, pol)
		dropped := 0
		for i, r := range spec.Rules {
			if slices.Contains(r.Policies, pol) && !slices.ContainsFunc(r.Policies, func(q string) bool { return !gone[q] }) {
				dropped += sizes[i]
			}
		}
		if estimate -= dropped; estimate > maxBytes {
			continue // removing the group references saves a little more; not enough
		}
		trimmed = spec.WithoutRules(func(r v1alpha1.Rule) bool {
			return !slices.ContainsFunc(r.Policies, func(q string) bool { return !gone[q] })
		})
		names := slices.Sorted(slices.Values(left))
		// Measured with the record of what was left out, which it carries.
		trimmed.Unwritten = &v1alpha1.Unwritten{Reason: v1alpha1.ReasonRuleSetTooLarge, Bytes: int64(size), Limit: int64(maxBytes), Policies: names}
		if specSize(trimmed) <= maxBytes {
			return trimmed, names, true
		}
	}
	return spec, nil, false
}

func specSize(spec any) int {
	b, err := json.Marshal(spec)
	if err != nil {
		return 0
	}
	return len(b)
}
