package v1alpha1

import "slices"

// WithoutRules is the spec without the rules drop selects: the pods keep
// their isolation (policies and mode) and lose only the ids of those rules,
// so they fail closed for what the rules allowed, and addressGroups keeps
// only the groups the remaining rules reference. The spec is not changed.
func (s NodeRuleSetSpec) WithoutRules(drop func(Rule) bool) NodeRuleSetSpec {
	out := s
	out.Rules = nil
	kept := map[string]bool{}
	groups := map[string]bool{}
	for _, r := range s.Rules {
		if drop(r) {
			continue
		}
		out.Rules = append(out.Rules, r)
		kept[r.ID] = true
		for _, pe := range r.Peers {
			if pe.AddressGroup != "" {
				groups[pe.AddressGroup] = true
			}
		}
	}
	out.AddressGroups = slices.DeleteFunc(slices.Clone(s.AddressGroups), func(g string) bool { return !groups[g] })
	if len(out.AddressGroups) == 0 {
		out.AddressGroups = nil
	}
	out.Pods = make([]LocalPod, len(s.Pods))
	for i, p := range s.Pods {
		p.Ingress, p.Egress = p.Ingress.keeping(kept), p.Egress.keeping(kept)
		out.Pods[i] = p
	}
	return out
}

// keeping is the isolation with only the rule ids in kept.
func (iso *Isolation) keeping(kept map[string]bool) *Isolation {
	if iso == nil {
		return nil
	}
	out := *iso
	out.Rules = slices.DeleteFunc(slices.Clone(iso.Rules), func(id string) bool { return !kept[id] })
	if len(out.Rules) == 0 {
		out.Rules = nil
	}
	return &out
}
