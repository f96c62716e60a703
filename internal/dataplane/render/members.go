package render

import (
	"cmp"
	"slices"
	"strings"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// Most renders of an agent follow a pod event elsewhere in the cluster: the
// rule set is the one last rendered and only the members of some address
// groups changed. Rendering it whole would compare every pod and rule with
// the last render's to find them unchanged; renderMembers instead starts
// from the last render and renders again only the changed groups' sets and,
// in the identity layout, the identities their members move between. What
// it returns is equal to Render's (TestMembersMatchRender).

// lastRender is what renderMembers starts from: the last render that went
// through all of the rule set, with a copy of what it read of the rule set
// (its renderer's rules point into the copy) and of which groups were
// given, and whether each is a named-port group.
type lastRender struct {
	spec  v1alpha1.NodeRuleSetSpec
	named map[string]bool
	r     *renderer
	table *model.Table
}

// remember keeps a render that went through all of the rule set for the
// renders of the same rule set that follow.
func (m *Renderer) remember(r *renderer, spec *v1alpha1.NodeRuleSetSpec, groups map[string]v1alpha1.AddressGroupSpec, t *model.Table) {
	l := &lastRender{spec: copySpec(spec), named: make(map[string]bool, len(groups)), r: r, table: t}
	for name, g := range groups {
		l.named[name] = g.NamedPort != nil
	}
	// The renderer reads the rules again: from the copy, which nobody
	// else can change.
	for i := range r.infos {
		r.infos[i].rule = &l.spec.Rules[i]
	}
	m.last = l
}

// renderMembers renders the rule set from the last render when only the
// members of its address groups changed, and returns nil when it cannot:
// when the rule set or which groups are given changed, a named-port group
// changed, a group's members now need other sets or rule lines (a family's
// first member or last, a first CIDR), or something fails (Render then
// reports what, as it always does).
func (m *Renderer) renderMembers(spec *v1alpha1.NodeRuleSetSpec, groups map[string]v1alpha1.AddressGroupSpec) *model.Table {
	l := m.last
	if l == nil || len(groups) != len(l.named) || !equalSpec(&l.spec, spec) {
		return nil
	}
	var setGroups []string   // groups with sets of their own or in the shared sets
	var idGroups [2][]string // groups in the identities, per direction
	for name, g := range groups {
		named, ok := l.named[name]
		if !ok || named != (g.NamedPort != nil) {
			return nil
		}
		if gm := m.groups[name]; gm != nil && !equalGroup(&gm.spec, &g) {
			if named {
				return nil
			}
			setGroups = append(setGroups, name)
		}
		for dir, st := range m.ids {
			if st == nil || named {
				continue
			}
			if ps := st.sets["g/"+name]; ps != nil && !equalGroup(ps.group, &g) {
				idGroups[dir] = append(idGroups[dir], name)
			}
		}
	}
	if len(setGroups) == 0 && len(idGroups[0]) == 0 && len(idGroups[1]) == 0 {
		return l.table
	}
	// The renderer of the last render holds all that depends on the rule
	// set alone; from here on it renders these groups.
	r := l.r
	r.groups = groups
	var touched []string // names of the sets that may have changed
	var shards [2][shards]bool
	for _, name := range setGroups {
		old := m.groups[name]
		for i := range old.tagged {
			if len(old.tagged[i]) > 0 {
				k := shard(old.tag)
				// A copy: the shared set's memo holds the list it was
				// built from.
				r.tagged[i][k] = slices.DeleteFunc(slices.Clone(r.tagged[i][k]), func(gm *groupMemo) bool { return gm == old })
				shards[i][k] = true
			}
		}
		delete(r.groupSets, name)
		refs, err := r.groupSet(name)
		if err != nil || refs.names != old.names {
			return nil
		}
		gm := m.groups[name]
		if !slices.EqualFunc(gm.sets, old.sets, func(a, b *model.Set) bool { return a.Name == b.Name }) {
			return nil
		}
		for _, s := range gm.sets {
			touched = append(touched, s.Name)
		}
	}
	for i, fam := range []model.Family{model.IPv4, model.IPv6} {
		for k := range shards[i] {
			if shards[i][k] {
				r.sharedSet(i, fam, k)
				touched = append(touched, sharedSetNames[i][k])
			}
		}
	}
	chains := l.table.Chains
	for dir, only := range idGroups {
		if len(only) == 0 {
			continue
		}
		st := m.ids[dir]
		oldChains := st.chains
		// The sets of what pods allow identities may come and go.
		for _, names := range [][2]string{identityMaps[dir], identityRangeMaps[dir], identityPortSets[dir], identityAllSets[dir]} {
			for _, name := range names {
				delete(r.sets, name)
				touched = append(touched, name)
			}
		}
		idChains, err := r.directionIdentities(dir, r.flatDirs(dir), only)
		if err != nil {
			return nil
		}
		if !slices.Equal(idChains, oldChains) {
			chains = replaceChains(chains, r.nbase, oldChains, idChains)
		}
	}
	t := &model.Table{Chains: chains, Sets: slices.Clone(l.table.Sets)}
	for _, name := range touched {
		s := r.sets[name]
		j, found := slices.BinarySearchFunc(t.Sets, name, func(s *model.Set, name string) int { return cmp.Compare(s.Name, name) })
		switch {
		case found && s != nil:
			t.Sets[j] = s
		case found:
			t.Sets = slices.Delete(t.Sets, j, j+1)
		case s != nil:
			t.Sets = slices.Insert(t.Sets, j, s)
		}
	}
	m.members++
	l.table = t
	return t
}

// replaceChains returns the chains of a table (base chains first, the rest
// by name) with the chains in old replaced by those in new.
func replaceChains(chains []*model.Chain, nbase int, old, new []*model.Chain) []*model.Chain {
	gone := make(map[*model.Chain]bool, len(old))
	for _, c := range old {
		gone[c] = true
	}
	added := slices.SortedFunc(slices.Values(new), func(a, b *model.Chain) int { return strings.Compare(a.Name, b.Name) })
	out := make([]*model.Chain, 0, len(chains)-len(old)+len(new))
	out = append(out, chains[:nbase]...)
	for _, c := range chains[nbase:] {
		if gone[c] {
			continue
		}
		for len(added) > 0 && added[0].Name < c.Name {
			out = append(out, added[0])
			added = added[1:]
		}
		out = append(out, c)
	}
	return append(out, added...)
}

// equalSpec reports whether two rule sets are the same in what rendering
// reads of them.
func equalSpec(a, b *v1alpha1.NodeRuleSetSpec) bool {
	if !slices.Equal(a.PodCIDRs, b.PodCIDRs) || len(a.Rules) != len(b.Rules) || len(a.Pods) != len(b.Pods) {
		return false
	}
	for i := range a.Rules {
		if !equalRule(&a.Rules[i], &b.Rules[i]) {
			return false
		}
	}
	for i := range a.Pods {
		if !equalPod(&a.Pods[i], &b.Pods[i]) {
			return false
		}
	}
	return true
}

// copySpec copies what rendering reads of a rule set (equalSpec), the
// rules' ports and peers in one allocation each.
func copySpec(s *v1alpha1.NodeRuleSetSpec) v1alpha1.NodeRuleSetSpec {
	out := v1alpha1.NodeRuleSetSpec{PodCIDRs: slices.Clone(s.PodCIDRs), Rules: make([]v1alpha1.Rule, len(s.Rules)), Pods: make([]v1alpha1.LocalPod, len(s.Pods))}
	nports, npeers := 0, 0
	for i := range s.Rules {
		nports += len(s.Rules[i].Ports)
		npeers += len(s.Rules[i].Peers)
	}
	ports := make([]v1alpha1.Port, 0, nports)
	peers := make([]v1alpha1.Peer, 0, npeers)
	for i := range s.Rules {
		ru := &s.Rules[i]
		p, q := len(ports), len(peers)
		ports = append(ports, ru.Ports...)
		for _, peer := range ru.Peers {
			if peer.IPBlock != nil {
				peer.IPBlock = &v1alpha1.IPBlock{CIDR: peer.IPBlock.CIDR, Except: slices.Clone(peer.IPBlock.Except)}
			}
			peers = append(peers, peer)
		}
		out.Rules[i] = v1alpha1.Rule{ID: ru.ID, Direction: ru.Direction, Ports: ports[p:len(ports):len(ports)], Peers: peers[q:len(peers):len(peers)]}
	}
	for i, pod := range s.Pods {
		out.Pods[i] = copyPod(pod)
	}
	return out
}
