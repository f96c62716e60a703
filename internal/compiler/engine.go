package compiler

import (
	"maps"
	"reflect"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// Engine keeps the compiled state of a cluster up to date as objects come,
// change and go, recomputing only what an event can affect: a pod event
// recompiles the pod's node and updates the groups it belongs to; a policy
// event recompiles the nodes of the pods the policy selects, before or after.
// After any sequence of events, Result equals Compile of a snapshot of the
// objects upserted and not deleted since. An Engine copies what it keeps of
// the objects it is given, and is not safe for concurrent use.
type Engine struct {
	ix      *index
	npSpecs map[nsName]*networkingv1.NetworkPolicySpec
	ddSpecs map[string]*v1alpha1.DefaultDenySpec

	nodes     map[string]*nodeResult            // compiled nodes
	groups    map[string]*groupState            // groups some node references
	nsGroups  map[string]map[string]*groupState // fixed namespace -> its groups
	selGroups map[string]*groupState            // groups with a namespace selector
	spans     map[string]map[string]int         // policy key -> node -> selected pods
	policies  map[string]struct{}               // keys of the policies present

	dirtyNodes    map[string]struct{}
	dirtyGroups   map[string]struct{}
	dirtyPolicies map[string]struct{}

	// Current output, and the names changed since Changes last ran.
	outNodes        map[string]v1alpha1.NodeRuleSetSpec
	outGroups       map[string]v1alpha1.AddressGroupSpec
	outPolicies     map[string]PolicySpan
	changedNodes    map[string]struct{}
	changedGroups   map[string]struct{}
	changedPolicies map[string]struct{}
}

// groupState is a referenced group and its members, whose addresses it
// keeps sorted so that a membership change costs no sort.
type groupState struct {
	def     *groupDef
	refs    int
	members map[nsName]*podInfo
	entries []memberEntry // sorted by compareEntries
}

func newGroupState(g *groupDef, members []*podInfo) *groupState {
	st := &groupState{def: g, members: make(map[nsName]*podInfo, len(members))}
	for _, p := range members {
		st.members[p.key] = p
		st.entries = g.appendEntries(st.entries, p)
	}
	slices.SortFunc(st.entries, compareEntries)
	return st
}

// set makes p (nil: nobody) the member of the group under key.
func (st *groupState) set(key nsName, p *podInfo) {
	if old, ok := st.members[key]; ok {
		for _, e := range st.def.appendEntries(nil, old) {
			if i, found := slices.BinarySearchFunc(st.entries, e, compareEntries); found {
				st.entries = slices.Delete(st.entries, i, i+1)
			}
		}
		delete(st.members, key)
	}
	if p == nil {
		return
	}
	st.members[key] = p
	for _, e := range st.def.appendEntries(nil, p) {
		i, _ := slices.BinarySearchFunc(st.entries, e, compareEntries)
		st.entries = slices.Insert(st.entries, i, e)
	}
}

// Delta is what changed since the previous call to Changes. A nil value
// means the object is gone.
type Delta struct {
	NodeRuleSets  map[string]*v1alpha1.NodeRuleSetSpec
	AddressGroups map[string]*v1alpha1.AddressGroupSpec
	Policies      map[string]*PolicySpan
}

// Empty reports whether nothing changed.
func (d *Delta) Empty() bool {
	return len(d.NodeRuleSets) == 0 && len(d.AddressGroups) == 0 && len(d.Policies) == 0
}

// NewEngine returns an Engine for an empty cluster.
func NewEngine() *Engine {
	return &Engine{
		ix:              newIndex(),
		npSpecs:         map[nsName]*networkingv1.NetworkPolicySpec{},
		ddSpecs:         map[string]*v1alpha1.DefaultDenySpec{},
		nodes:           map[string]*nodeResult{},
		groups:          map[string]*groupState{},
		nsGroups:        map[string]map[string]*groupState{},
		selGroups:       map[string]*groupState{},
		spans:           map[string]map[string]int{},
		policies:        map[string]struct{}{},
		dirtyNodes:      map[string]struct{}{},
		dirtyGroups:     map[string]struct{}{},
		dirtyPolicies:   map[string]struct{}{},
		outNodes:        map[string]v1alpha1.NodeRuleSetSpec{},
		outGroups:       map[string]v1alpha1.AddressGroupSpec{},
		outPolicies:     map[string]PolicySpan{},
		changedNodes:    map[string]struct{}{},
		changedGroups:   map[string]struct{}{},
		changedPolicies: map[string]struct{}{},
	}
}

// UpsertPod adds or updates a pod.
func (e *Engine) UpsertPod(p *corev1.Pod) {
	e.setPod(nsName{p.Namespace, p.Name}, newPodInfo(p))
}

// DeletePod removes a pod.
func (e *Engine) DeletePod(namespace, name string) {
	e.setPod(nsName{namespace, name}, nil)
}

func (e *Engine) setPod(key nsName, info *podInfo) {
	old := e.ix.pods[key]
	if old == nil && info == nil {
		return
	}
	if old != nil && info != nil && old.same(info) {
		return
	}
	if old != nil {
		e.dirtyNodes[old.node] = struct{}{}
	}
	e.ix.setPod(key, info)
	if info != nil {
		e.dirtyNodes[info.node] = struct{}{}
	}
	nsLabels := e.ix.nsLabels(key.ns)
	e.forCandidateGroups(key.ns, func(st *groupState) {
		_, was := st.members[key]
		is := info != nil && st.def.matchesNamespace(key.ns, nsLabels) && st.def.matchesPod(info)
		switch {
		case was && !is:
			st.set(key, nil)
		case is && was && sameContribution(st.def, old, info):
			st.members[key] = info
			return
		case is:
			st.set(key, info)
		default:
			return
		}
		e.dirtyGroups[st.def.name] = struct{}{}
	})
}

// sameContribution reports whether two versions of a member pod give a
// group the same addresses or endpoints.
func sameContribution(g *groupDef, a, b *podInfo) bool {
	if !slices.Equal(a.ipStrs, b.ipStrs) {
		return false
	}
	if g.namedPort == nil {
		return true
	}
	pa, _ := a.namedPort(g.namedPort.Name, g.namedPort.Protocol)
	pb, _ := b.namedPort(g.namedPort.Name, g.namedPort.Protocol)
	return pa == pb
}

// forCandidateGroups calls f for every referenced group that can hold pods
// of namespace ns.
func (e *Engine) forCandidateGroups(ns string, f func(*groupState)) {
	for _, st := range e.nsGroups[ns] {
		f(st)
	}
	for _, st := range e.selGroups {
		f(st)
	}
}

// UpsertNamespace adds or updates a namespace.
func (e *Engine) UpsertNamespace(ns *corev1.Namespace) { e.setNamespace(ns.Name, ns) }

// DeleteNamespace removes a namespace. Its pods, if any remain, are then
// matched as if the namespace had only its name label.
func (e *Engine) DeleteNamespace(name string) { e.setNamespace(name, nil) }

func (e *Engine) setNamespace(name string, ns *corev1.Namespace) {
	before := e.ix.nsLabels(name)
	if ns == nil {
		e.ix.deleteNamespace(name)
	} else {
		e.ix.setNamespace(ns)
	}
	after := e.ix.nsLabels(name)
	if maps.Equal(before, after) {
		return
	}
	pods := e.ix.podsByNs[name]
	if len(e.ix.dds) > 0 {
		// DefaultDenies select by namespace labels.
		for _, p := range pods {
			e.dirtyNodes[p.node] = struct{}{}
		}
	}
	for _, st := range e.selGroups {
		if !st.def.nsSel.Matches(before) && !st.def.nsSel.Matches(after) {
			continue
		}
		in := st.def.nsSel.Matches(after)
		for key, p := range pods {
			if in && st.def.matchesPod(p) {
				st.set(key, p)
			} else {
				st.set(key, nil)
			}
		}
		e.dirtyGroups[st.def.name] = struct{}{}
	}
}

// UpsertNode adds a node (its labels and status do not matter).
func (e *Engine) UpsertNode(n *corev1.Node) {
	if _, ok := e.ix.nodes[n.Name]; ok || n.Name == "" {
		return
	}
	e.ix.nodes[n.Name] = struct{}{}
	e.dirtyNodes[n.Name] = struct{}{}
}

// DeleteNode removes a node: its pods stay peers but are no longer targets.
func (e *Engine) DeleteNode(name string) {
	if _, ok := e.ix.nodes[name]; !ok {
		return
	}
	delete(e.ix.nodes, name)
	e.dirtyNodes[name] = struct{}{}
}

// UpsertNetworkPolicy adds or updates a NetworkPolicy.
func (e *Engine) UpsertNetworkPolicy(np *networkingv1.NetworkPolicy) {
	key := nsName{np.Namespace, np.Name}
	if old, ok := e.npSpecs[key]; ok && reflect.DeepEqual(*old, np.Spec) {
		return
	}
	np = np.DeepCopy()
	e.npSpecs[key] = &np.Spec
	e.markSelected(e.ix.nps[key])
	p := e.ix.newNetworkPolicy(np)
	e.ix.setNetworkPolicy(key, p)
	e.markSelected(p)
	e.policies[p.key] = struct{}{}
	e.dirtyPolicies[p.key] = struct{}{}
}

// DeleteNetworkPolicy removes a NetworkPolicy.
func (e *Engine) DeleteNetworkPolicy(namespace, name string) {
	key := nsName{namespace, name}
	old := e.ix.nps[key]
	if old == nil {
		return
	}
	e.markSelected(old)
	e.ix.setNetworkPolicy(key, nil)
	delete(e.npSpecs, key)
	delete(e.policies, old.key)
	e.dirtyPolicies[old.key] = struct{}{}
}

// UpsertDefaultDeny adds or updates a DefaultDeny.
func (e *Engine) UpsertDefaultDeny(dd *v1alpha1.DefaultDeny) {
	if old, ok := e.ddSpecs[dd.Name]; ok && reflect.DeepEqual(*old, dd.Spec) {
		return
	}
	dd = dd.DeepCopy()
	e.ddSpecs[dd.Name] = &dd.Spec
	e.markSelected(e.ix.dds[dd.Name])
	p := e.ix.newDefaultDeny(dd)
	e.ix.setDefaultDeny(dd.Name, p)
	e.markSelected(p)
	e.policies[p.key] = struct{}{}
	e.dirtyPolicies[p.key] = struct{}{}
}

// DeleteDefaultDeny removes a DefaultDeny.
func (e *Engine) DeleteDefaultDeny(name string) {
	old := e.ix.dds[name]
	if old == nil {
		return
	}
	e.markSelected(old)
	e.ix.setDefaultDeny(name, nil)
	delete(e.ddSpecs, name)
	delete(e.policies, old.key)
	e.dirtyPolicies[old.key] = struct{}{}
}

// markSelected marks the nodes of the pods a policy selects.
func (e *Engine) markSelected(p *policy) {
	if p == nil {
		return
	}
	pods := e.ix.pods
	if !p.dd {
		pods = e.ix.podsByNs[p.ns]
	}
	for _, pod := range pods {
		if _, dirty := e.dirtyNodes[pod.node]; !dirty && p.selects(e.ix, pod) {
			e.dirtyNodes[pod.node] = struct{}{}
		}
	}
}

// Changes brings the output up to date and returns what changed since the
// previous call.
func (e *Engine) Changes() *Delta {
	e.recompute()
	d := &Delta{
		NodeRuleSets:  map[string]*v1alpha1.NodeRuleSetSpec{},
		AddressGroups: map[string]*v1alpha1.AddressGroupSpec{},
		Policies:      map[string]*PolicySpan{},
	}
	for name := range e.changedNodes {
		if spec, ok := e.outNodes[name]; ok {
			d.NodeRuleSets[name] = spec.DeepCopy()
		} else {
			d.NodeRuleSets[name] = nil
		}
	}
	for name := range e.changedGroups {
		if spec, ok := e.outGroups[name]; ok {
			d.AddressGroups[name] = spec.DeepCopy()
		} else {
			d.AddressGroups[name] = nil
		}
	}
	for key := range e.changedPolicies {
		if span, ok := e.outPolicies[key]; ok {
			s := PolicySpan{SelectedPods: span.SelectedPods, Nodes: slices.Clone(span.Nodes)}
			d.Policies[key] = &s
		} else {
			d.Policies[key] = nil
		}
	}
	clear(e.changedNodes)
	clear(e.changedGroups)
	clear(e.changedPolicies)
	return d
}

// Result brings the output up to date and returns all of it, as Compile
// would for the current objects. It does not consume the pending Changes.
func (e *Engine) Result() *Result {
	e.recompute()
	res := &Result{
		NodeRuleSets:  make(map[string]v1alpha1.NodeRuleSetSpec, len(e.outNodes)),
		AddressGroups: make(map[string]v1alpha1.AddressGroupSpec, len(e.outGroups)),
		Policies:      make(map[string]PolicySpan, len(e.outPolicies)),
	}
	for name, spec := range e.outNodes {
		res.NodeRuleSets[name] = *spec.DeepCopy()
	}
	for name, spec := range e.outGroups {
		res.AddressGroups[name] = *spec.DeepCopy()
	}
	for key, span := range e.outPolicies {
		res.Policies[key] = PolicySpan{SelectedPods: span.SelectedPods, Nodes: slices.Clone(span.Nodes)}
	}
	return res
}

func (e *Engine) recompute() {
	for node := range e.dirtyNodes {
		e.recomputeNode(node)
	}
	clear(e.dirtyNodes)
	for name := range e.dirtyGroups {
		st := e.groups[name]
		old, had := e.outGroups[name]
		switch {
		case st != nil:
			spec := st.def.specOf(st.entries)
			if !had || !reflect.DeepEqual(old, spec) {
				e.outGroups[name] = spec
				e.changedGroups[name] = struct{}{}
			}
		case had:
			delete(e.outGroups, name)
			e.changedGroups[name] = struct{}{}
		}
	}
	clear(e.dirtyGroups)
	for key := range e.dirtyPolicies {
		old, had := e.outPolicies[key]
		if _, ok := e.policies[key]; !ok {
			delete(e.spans, key)
			if had {
				delete(e.outPolicies, key)
				e.changedPolicies[key] = struct{}{}
			}
			continue
		}
		span := spanOf(e.spans[key])
		if !had || !reflect.DeepEqual(old, span) {
			e.outPolicies[key] = span
			e.changedPolicies[key] = struct{}{}
		}
	}
	clear(e.dirtyPolicies)
}

func (e *Engine) recomputeNode(node string) {
	old := e.nodes[node]
	var cur *nodeResult
	if _, ok := e.ix.nodes[node]; ok {
		cur = e.ix.compileNode(node)
	}
	// Reference the new groups before releasing the old ones, so that a
	// group the node keeps is not dropped and scanned again.
	if cur != nil {
		for _, g := range cur.groups {
			e.ref(g)
		}
	}
	if old != nil {
		for _, g := range old.groups {
			e.unref(g.name)
		}
	}
	var oldCounts, curCounts map[string]int
	if old != nil {
		oldCounts = old.counts
	}
	if cur != nil {
		curCounts = cur.counts
	}
	for key, n := range curCounts {
		if oldCounts[key] != n {
			e.setSpan(key, node, n)
		}
	}
	for key := range oldCounts {
		if _, ok := curCounts[key]; !ok {
			e.setSpan(key, node, 0)
		}
	}
	spec, had := e.outNodes[node]
	if cur == nil {
		delete(e.nodes, node)
		if had {
			delete(e.outNodes, node)
			e.changedNodes[node] = struct{}{}
		}
		return
	}
	e.nodes[node] = cur
	if !had || !reflect.DeepEqual(spec, cur.spec) {
		e.outNodes[node] = cur.spec
		e.changedNodes[node] = struct{}{}
	}
}

func (e *Engine) setSpan(key, node string, n int) {
	e.dirtyPolicies[key] = struct{}{}
	if n == 0 {
		delete(e.spans[key], node)
		return
	}
	if e.spans[key] == nil {
		e.spans[key] = map[string]int{}
	}
	e.spans[key][node] = n
}

func (e *Engine) ref(g *groupDef) {
	if st := e.groups[g.name]; st != nil {
		st.refs++
		return
	}
	st := newGroupState(g, e.ix.scanMembers(g))
	st.refs = 1
	e.groups[g.name] = st
	if g.nsSel == nil {
		if e.nsGroups[g.namespace] == nil {
			e.nsGroups[g.namespace] = map[string]*groupState{}
		}
		e.nsGroups[g.namespace][g.name] = st
	} else {
		e.selGroups[g.name] = st
	}
	e.dirtyGroups[g.name] = struct{}{}
}

func (e *Engine) unref(name string) {
	st := e.groups[name]
	st.refs--
	if st.refs > 0 {
		return
	}
	delete(e.groups, name)
	if st.def.nsSel == nil {
		delete(e.nsGroups[st.def.namespace], name)
		if len(e.nsGroups[st.def.namespace]) == 0 {
			delete(e.nsGroups, st.def.namespace)
		}
	} else {
		delete(e.selGroups, name)
	}
	e.dirtyGroups[name] = struct{}{}
}
