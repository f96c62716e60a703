package compiler

import (
	"cmp"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// nodeResult is the compiled state of one node.
type nodeResult struct {
	spec   v1alpha1.NodeRuleSetSpec
	groups []*groupDef    // the groups the rules reference, sorted by name
	counts map[string]int // policy key -> local pods it selects
}

// compileNode compiles the rule set of a node from its eligible pods.
//
// The isolations of the pods, and the lists in them and in the rules, are
// carved from a few arrays per node (their capacities clipped) rather than
// allocated one by one: nothing modifies a compiled spec. They are built in
// scratch space the index keeps from node to node, then copied to arrays of
// the right size.
func (ix *index) compileNode(node string) *nodeResult {
	out := &nodeResult{counts: map[string]int{}}
	out.spec.PodCIDRs = ix.nodes[node]
	nb := ix.nodeScratch()
	local := ix.podsByNode[node]
	pods := nb.pods[:0]
	for _, p := range local {
		pods = append(pods, p)
	}
	slices.SortFunc(pods, func(a, b *podInfo) int { return compareNsNames(a.key, b.key) })
	nb.pods = pods
	var sel []*policy
	for _, p := range pods {
		sel = ix.selecting(sel[:0], p)
		for _, pol := range sel {
			out.counts[pol.key]++
		}
		off := len(nb.strs)
		nb.strs = append(nb.strs, p.ipStrs...)
		nb.local = append(nb.local, localBuild{
			ips:     span{off, len(p.ipStrs)},
			ingress: nb.isolation(p, sel, ingress),
			egress:  nb.isolation(p, sel, egress),
		})
	}
	// The arrays of the spec, of the right sizes.
	strs := slices.Clone(nb.strs)
	list := func(s span) []string { return strs[s.off : s.off+s.n : s.off+s.n] }
	var isos []v1alpha1.Isolation
	if len(nb.isos) > 0 {
		isos = make([]v1alpha1.Isolation, len(nb.isos))
	}
	for i, ib := range nb.isos {
		isos[i] = v1alpha1.Isolation{Mode: ib.mode, Policies: list(ib.policies)}
		if ib.rules.n > 0 {
			isos[i].Rules = list(ib.rules)
		}
	}
	if len(pods) > 0 {
		out.spec.Pods = make([]v1alpha1.LocalPod, len(pods))
	}
	for i, p := range pods {
		lb := nb.local[i]
		lp := &out.spec.Pods[i]
		*lp = v1alpha1.LocalPod{Namespace: p.key.ns, Name: p.key.name, UID: p.uid}
		if lb.ips.n > 0 {
			lp.IPs = list(lb.ips)
		}
		if lb.ingress >= 0 {
			lp.Ingress = &isos[lb.ingress]
		}
		if lb.egress >= 0 {
			lp.Egress = &isos[lb.egress]
		}
	}

	// The rules, sorted by id, with their policies sorted and without
	// duplicates.
	slices.SortFunc(nb.pairs, func(a, b rulePolicy) int { return cmp.Or(cmp.Compare(a.rule, b.rule), cmp.Compare(a.policy, b.policy)) })
	nb.pairs = slices.Compact(nb.pairs)
	policies := make([]string, len(nb.pairs))
	start := slices.Grow(nb.start[:0], len(nb.uses)+1)[:len(nb.uses)+1] // rule -> its first pair
	clear(start)
	for i, rp := range nb.pairs {
		policies[i] = rp.policy
		start[rp.rule+1]++
	}
	for i := range nb.uses {
		start[i+1] += start[i]
	}
	nb.start = start
	slices.SortFunc(nb.uses, func(a, b ruleUse) int { return cmp.Compare(a.cr.id, b.cr.id) })
	nPeers, nPorts := 0, 0
	for _, u := range nb.uses {
		nPeers += len(u.cr.rule.Peers)
		nPorts += len(u.cr.rule.Ports)
	}
	peers := make([]v1alpha1.Peer, 0, nPeers)
	ports := make([]v1alpha1.Port, 0, nPorts)
	if len(nb.uses) > 0 {
		out.spec.Rules = make([]v1alpha1.Rule, len(nb.uses))
	}
	groups := nb.groups
	for i, u := range nb.uses {
		cr := &u.cr.rule
		r := &out.spec.Rules[i]
		r.ID, r.Direction = cr.ID, cr.Direction
		if cr.Peers != nil {
			off := len(peers)
			for _, pe := range cr.Peers {
				peers = append(peers, v1alpha1.Peer{AddressGroup: pe.AddressGroup, IPBlock: pe.IPBlock.DeepCopy()})
			}
			r.Peers = peers[off:len(peers):len(peers)]
		}
		if cr.Ports != nil {
			off := len(ports)
			ports = append(ports, cr.Ports...)
			r.Ports = ports[off:len(ports):len(ports)]
		}
		r.Policies = policies[start[u.index]:start[u.index+1]:start[u.index+1]]
		for _, g := range u.cr.groups {
			groups[g.name] = g
		}
	}
	if len(groups) > 0 {
		out.groups = make([]*groupDef, 0, len(groups))
		out.spec.AddressGroups = make([]string, 0, len(groups))
	}
	for _, g := range groups {
		out.groups = append(out.groups, g)
	}
	slices.SortFunc(out.groups, func(a, b *groupDef) int { return cmp.Compare(a.name, b.name) })
	for _, g := range out.groups {
		out.spec.AddressGroups = append(out.spec.AddressGroups, g.name)
	}
	return out
}

// nodeBuilder is compileNode's scratch space, kept by the index from node
// to node.
type nodeBuilder struct {
	ix     *index
	pods   []*podInfo
	local  []localBuild // per pod, in order
	isos   []isoBuild
	strs   []string       // the lists of the pods and their isolations
	rules  map[string]int // rule id -> its first index in uses
	uses   []ruleUse
	pairs  []rulePolicy
	start  []int
	groups map[string]*groupDef
}

// nodeScratch returns the index's nodeBuilder, emptied.
func (ix *index) nodeScratch() *nodeBuilder {
	nb := ix.nb
	if nb == nil {
		nb = &nodeBuilder{ix: ix, rules: map[string]int{}, groups: map[string]*groupDef{}}
		ix.nb = nb
	}
	clear(nb.pods)
	clear(nb.strs)
	clear(nb.uses)
	clear(nb.pairs)
	clear(nb.rules)
	clear(nb.groups)
	nb.pods, nb.local, nb.isos, nb.strs, nb.uses, nb.pairs = nb.pods[:0], nb.local[:0], nb.isos[:0], nb.strs[:0], nb.uses[:0], nb.pairs[:0]
	return nb
}

// span is a list in nodeBuilder.strs.
type span struct{ off, n int }

type localBuild struct {
	ips             span
	ingress, egress int // index in isos; -1: none
}

type isoBuild struct {
	mode            v1alpha1.IsolationMode
	policies, rules span
}

// ruleUse is a rule of a node, and the last policy recorded giving it.
type ruleUse struct {
	cr    *compiledRule
	index int // in the order of first use, which rulePolicy refers to
	last  string
}

// rulePolicy records that a policy gives a local pod the rule of index rule.
type rulePolicy struct {
	rule   int
	policy string
}

// isolation records a pod's isolation in direction d given the policies
// selecting it (sorted by key), and the rules it references. It returns
// the isolation's index in isos, or -1 for none.
func (nb *nodeBuilder) isolation(p *podInfo, sel []*policy, d int) int {
	// Audit only reports what enforcement would drop; with enforcement in
	// place it has nothing to add.
	n, audit := 0, true
	for _, pol := range sel {
		switch {
		case !pol.types[d]:
		case pol.audit:
			if audit {
				n++
			}
		case audit:
			audit, n = false, 1
		default:
			n++
		}
	}
	if n == 0 {
		return -1
	}
	ib := isoBuild{mode: v1alpha1.IsolationEnforce}
	if audit {
		ib.mode = v1alpha1.IsolationAudit
	}
	from := len(nb.strs)
	for _, pol := range sel {
		if pol.types[d] && pol.audit == audit {
			nb.strs = append(nb.strs, pol.key)
		}
	}
	ib.policies = span{from, len(nb.strs) - from}
	from = len(nb.strs)
	for _, pol := range sel {
		if !pol.types[d] || pol.audit != audit {
			continue
		}
		for _, rt := range pol.template(nb.ix, p.key.ns).rules[d] {
			for _, cr := range rt.rulesFor(nb.ix, p) {
				nb.strs = append(nb.strs, cr.id)
				i, ok := nb.rules[cr.id]
				if !ok {
					i = len(nb.uses)
					nb.rules[cr.id] = i
					nb.uses = append(nb.uses, ruleUse{cr: cr, index: i})
				}
				if u := &nb.uses[i]; u.last != pol.key {
					u.last = pol.key
					nb.pairs = append(nb.pairs, rulePolicy{i, pol.key})
				}
			}
		}
	}
	if ids := nb.strs[from:]; len(ids) > 0 {
		slices.Sort(ids)
		ids = slices.Compact(ids)
		nb.strs = nb.strs[:from+len(ids)]
		ib.rules = span{from, len(ids)}
	}
	nb.isos = append(nb.isos, ib)
	return len(nb.isos) - 1
}

// equalNodeSpecs reports whether two rule sets are equal, as reflect.DeepEqual
// would (a nil and an empty list differ) but without its allocations.
func equalNodeSpecs(a, b *v1alpha1.NodeRuleSetSpec) bool {
	return equalList(a.Pods, b.Pods, equalLocalPods) &&
		equalList(a.Rules, b.Rules, equalRules) &&
		equalStrings(a.AddressGroups, b.AddressGroups) && equalStrings(a.PodCIDRs, b.PodCIDRs) &&
		equalPtr(a.Unwritten, b.Unwritten, func(x, y *v1alpha1.Unwritten) bool {
			return x.Reason == y.Reason && x.Bytes == y.Bytes && x.Limit == y.Limit && equalStrings(x.AddressGroups, y.AddressGroups)
		})
}

func equalLocalPods(a, b *v1alpha1.LocalPod) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && a.UID == b.UID && equalStrings(a.IPs, b.IPs) &&
		equalPtr(a.Ingress, b.Ingress, equalIsolations) && equalPtr(a.Egress, b.Egress, equalIsolations)
}

func equalIsolations(a, b *v1alpha1.Isolation) bool {
	return a.Mode == b.Mode && equalStrings(a.Policies, b.Policies) && equalStrings(a.Rules, b.Rules)
}

func equalRules(a, b *v1alpha1.Rule) bool {
	return a.ID == b.ID && a.Direction == b.Direction && equalList(a.Peers, b.Peers, equalPeers) &&
		equalList(a.Ports, b.Ports, func(x, y *v1alpha1.Port) bool { return *x == *y }) &&
		equalStrings(a.Policies, b.Policies)
}

func equalPeers(a, b *v1alpha1.Peer) bool {
	return a.AddressGroup == b.AddressGroup && equalPtr(a.IPBlock, b.IPBlock, func(x, y *v1alpha1.IPBlock) bool {
		return x.CIDR == y.CIDR && equalStrings(x.Except, y.Except)
	})
}

func equalStrings(a, b []string) bool { return (a == nil) == (b == nil) && slices.Equal(a, b) }

func equalList[T any](a, b []T, eq func(x, y *T) bool) bool {
	if (a == nil) != (b == nil) || len(a) != len(b) {
		return false
	}
	for i := range a {
		if !eq(&a[i], &b[i]) {
			return false
		}
	}
	return true
}

func equalPtr[T any](a, b *T, eq func(x, y *T) bool) bool {
	if a == nil || b == nil {
		return a == b
	}
	return eq(a, b)
}

// podCIDRs returns a node's pod CIDRs in canonical form (network address,
// no zone), in the node's order, without invalid or repeated ones.
func podCIDRs(n *corev1.Node) []string {
	var out []string
	for _, s := range n.Spec.PodCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			continue
		}
		c := p.Masked().String()
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	if len(out) == 0 && n.Spec.PodCIDR != "" {
		if p, err := netip.ParsePrefix(n.Spec.PodCIDR); err == nil {
			out = append(out, p.Masked().String())
		}
	}
	return out
}
