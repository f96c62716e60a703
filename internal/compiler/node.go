package compiler

import (
	"cmp"
	"maps"
	"slices"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// nodeResult is the compiled state of one node.
type nodeResult struct {
	spec   v1alpha1.NodeRuleSetSpec
	groups []*groupDef    // the groups the rules reference, sorted by name
	counts map[string]int // policy key -> local pods it selects
}

// compileNode compiles the rule set of a node from its eligible pods.
func (ix *index) compileNode(node string) *nodeResult {
	out := &nodeResult{counts: map[string]int{}}
	pods := slices.SortedFunc(maps.Values(ix.podsByNode[node]), func(a, b *podInfo) int {
		return compareNsNames(a.key, b.key)
	})
	rules := map[string]*compiledRule{}
	rulePolicies := map[string][]string{}
	for _, p := range pods {
		sel := ix.selecting(p)
		for _, pol := range sel {
			out.counts[pol.key]++
		}
		lp := v1alpha1.LocalPod{Namespace: p.key.ns, Name: p.key.name, IPs: slices.Clone(p.ipStrs)}
		for d := range 2 {
			iso := ix.isolation(p, sel, d, rules, rulePolicies)
			if d == ingress {
				lp.Ingress = iso
			} else {
				lp.Egress = iso
			}
		}
		out.spec.Pods = append(out.spec.Pods, lp)
	}
	groups := map[string]*groupDef{}
	for _, id := range slices.Sorted(maps.Keys(rules)) {
		cr := rules[id]
		r := cr.rule.DeepCopy()
		r.Policies = slices.Compact(slices.Sorted(slices.Values(rulePolicies[id])))
		out.spec.Rules = append(out.spec.Rules, *r)
		for _, g := range cr.groups {
			groups[g.name] = g
		}
	}
	out.groups = slices.SortedFunc(maps.Values(groups), func(a, b *groupDef) int { return cmp.Compare(a.name, b.name) })
	for _, g := range out.groups {
		out.spec.AddressGroups = append(out.spec.AddressGroups, g.name)
	}
	return out
}

// isolation returns a pod's isolation in direction d given the policies
// selecting it (sorted by key), and records the rules it references.
func (ix *index) isolation(p *podInfo, sel []*policy, d int, rules map[string]*compiledRule, rulePolicies map[string][]string) *v1alpha1.Isolation {
	var enforce, audit []*policy
	for _, pol := range sel {
		switch {
		case !pol.types[d]:
		case pol.audit:
			audit = append(audit, pol)
		default:
			enforce = append(enforce, pol)
		}
	}
	chosen, mode := enforce, v1alpha1.IsolationEnforce
	if len(chosen) == 0 {
		// Audit only reports what enforcement would drop; with enforcement
		// in place it has nothing to add.
		chosen, mode = audit, v1alpha1.IsolationAudit
	}
	if len(chosen) == 0 {
		return nil
	}
	iso := &v1alpha1.Isolation{Mode: mode}
	var ids []string
	for _, pol := range chosen {
		iso.Policies = append(iso.Policies, pol.key)
		for _, rt := range pol.template(ix, p.key.ns).rules[d] {
			for _, cr := range rt.rulesFor(p) {
				ids = append(ids, cr.id)
				rules[cr.id] = cr
				rulePolicies[cr.id] = append(rulePolicies[cr.id], pol.key)
			}
		}
	}
	if len(ids) > 0 {
		iso.Rules = slices.Compact(slices.Sorted(slices.Values(ids)))
	}
	return iso
}
