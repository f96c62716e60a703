package compiler

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// Snapshot is the cluster state Compile reads. The objects are only read,
// never modified; the order of each slice does not matter.
type Snapshot struct {
	Pods            []*corev1.Pod
	Namespaces      []*corev1.Namespace
	Nodes           []*corev1.Node
	NetworkPolicies []*networkingv1.NetworkPolicy
	DefaultDenies   []*v1alpha1.DefaultDeny
}

// Result is the desired state compiled from a Snapshot.
//
// A group holding more entries than Options.MaxGroupEntries is split into
// shards (see ShardName): AddressGroups holds each shard under its own name,
// and the rule sets reference every shard of the group where they would
// reference the group.
type Result struct {
	// NodeRuleSets holds one spec per node of the snapshot, keyed by node
	// name; a node without eligible pods has an empty spec.
	NodeRuleSets map[string]v1alpha1.NodeRuleSetSpec `json:"nodeRuleSets"`
	// AddressGroups holds every group (or shard) some rule set references,
	// and only those, keyed by name.
	AddressGroups map[string]v1alpha1.AddressGroupSpec `json:"addressGroups"`
	// Policies holds the span of every policy of the snapshot, keyed by
	// "NetworkPolicy/<namespace>/<name>" or "DefaultDeny/<name>".
	Policies map[string]PolicySpan `json:"policies"`
}

// PolicySpan is where a policy applies: the eligible pods it selects on the
// nodes of the snapshot.
type PolicySpan struct {
	SelectedPods int `json:"selectedPods"`
	// Nodes are the nodes hosting a selected pod, sorted.
	Nodes []string `json:"nodes,omitempty"`
}

// Compile compiles a snapshot into the rule set of every node, the address
// groups they reference and the span of every policy. The result does not
// depend on the order of the snapshot's slices and shares no memory with it
// but strings, which cannot be modified.
func Compile(s *Snapshot) *Result { return CompileWith(s, Options{}) }

// CompileWith is Compile with options.
func CompileWith(s *Snapshot, o Options) *Result {
	ix := newIndex(o)
	if s != nil {
		ix.load(s)
	}
	res := &Result{
		NodeRuleSets:  make(map[string]v1alpha1.NodeRuleSetSpec, len(ix.nodes)),
		AddressGroups: map[string]v1alpha1.AddressGroupSpec{},
		Policies:      make(map[string]PolicySpan, len(ix.nps)+len(ix.dds)),
	}
	spans := map[string]*PolicySpan{}
	groups := map[string]*groupDef{}
	compiled := make(map[string]*nodeResult, len(ix.nodes))
	for node := range ix.nodes {
		out := ix.compileNode(node)
		compiled[node] = out
		for _, g := range out.groups {
			groups[g.name] = g
		}
		for key, n := range out.counts {
			if n <= 0 {
				continue
			}
			sp := spans[key]
			if sp == nil {
				sp = &PolicySpan{}
				spans[key] = sp
			}
			sp.SelectedPods += n
			sp.Nodes = append(sp.Nodes, node)
		}
	}
	levels := make(map[string]int, len(groups))
	for name, g := range groups {
		prev, hasPrev := o.ShardLevels[name]
		level, shards := ix.groupShards(g, prev, hasPrev, o.maxEntries())
		levels[name] = level
		for i, sh := range shards {
			res.AddressGroups[ShardName(name, level, i)] = *sh
		}
	}
	level := func(g *groupDef) int { return levels[g.name] }
	for node, out := range compiled {
		res.NodeRuleSets[node] = *expandNode(&out.spec, out.groups, level)
	}
	span := func(key string) PolicySpan {
		sp := spans[key]
		if sp == nil {
			return PolicySpan{}
		}
		slices.Sort(sp.Nodes)
		return *sp
	}
	for _, p := range ix.nps {
		res.Policies[p.key] = span(p.key)
	}
	for _, p := range ix.dds {
		res.Policies[p.key] = span(p.key)
	}
	return res
}

// spanOf sums a policy's per-node counts of selected pods.
func spanOf(perNode map[string]int) PolicySpan {
	var s PolicySpan
	for node, n := range perNode {
		if n > 0 {
			s.SelectedPods += n
			s.Nodes = append(s.Nodes, node)
		}
	}
	slices.Sort(s.Nodes)
	return s
}
