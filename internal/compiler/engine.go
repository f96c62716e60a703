package compiler

import (
	"cmp"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sort"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// Engine keeps the compiled state of a cluster up to date as objects come,
// change and go, recomputing only what an event can affect: a pod event
// recompiles the pod's node and updates the groups it belongs to; a policy
// event recompiles the nodes of the pods the policy selects, before or after.
// After any sequence of events, Result equals Compile of a snapshot of the
// objects upserted and not deleted since (CompileWith, given the Engine's
// options and, for the groups split into shards, its ShardLevels). An Engine
// copies what it keeps of the objects it is given, and is not safe for
// concurrent use.
type Engine struct {
	ix         *index
	maxEntries int            // Options.MaxGroupEntries
	hints      map[string]int // Options.ShardLevels not used yet

	npSpecs map[nsName]*networkingv1.NetworkPolicySpec
	ddSpecs map[string]*v1alpha1.DefaultDenySpec

	nodes  map[string]*nodeResult // compiled nodes
	groups map[string]*groupState // groups some node references
	// The referenced groups by the namespaces whose pods they can hold:
	// nsGroups by their fixed namespace, pinnedGroups (namespace selectors
	// naming their namespaces) by each name, and otherGroups (every other
	// namespace selector), which can hold pods of any namespace.
	nsGroups     map[string]map[string]*groupState
	pinnedGroups map[string]map[string]*groupState
	otherGroups  map[string]*groupState
	spans        map[string]map[string]int // policy key -> node -> selected pods
	policies     map[string]struct{}       // keys of the policies present

	dirtyNodes    map[string]struct{}
	dirtyGroups   map[string]struct{}
	dirtyPolicies map[string]struct{}
	// The compiled nodes whose output may differ from their compiled spec
	// with the groups' current shards.
	expandNodes map[string]struct{}

	// Current output, and the names changed since Changes last ran. The
	// specs are never modified once stored: a change stores a new one, so
	// that they can be handed out without copies.
	outNodes        map[string]*v1alpha1.NodeRuleSetSpec
	outGroups       map[string]*v1alpha1.AddressGroupSpec
	outPolicies     map[string]*PolicySpan
	outLevels       map[string]int // group name -> shard level of its output
	changedNodes    map[string]struct{}
	changedGroups   map[string]struct{}
	changedPolicies map[string]struct{}
}

// groupState is a referenced group. Its members are the pods matching its
// definition, found through the index; the state keeps the group's last
// built shards and the entries whose presence changed since, so that a
// membership change costs neither a scan nor a sort, and rebuilds only the
// shards of the entries that changed.
type groupState struct {
	def  *groupDef
	refs int // compiled nodes referencing it
	// shards are the group's 1<<level shards as of the last recompute (nil
	// until the first one, which scans the members). They are shared with
	// the output and never modified.
	shards []*v1alpha1.AddressGroupSpec
	level  int
	// pending maps each entry that may have been added or removed since
	// the shards were built to whether a member gives it now.
	pending map[entryKey]pendingEntry
}

// entryKey is an entry of a group: an address, with a port in an endpoint
// group.
type entryKey struct {
	addr netip.Addr
	port int32
}

func compareEntryKeys(a, b entryKey) int {
	return cmp.Or(a.addr.Compare(b.addr), cmp.Compare(a.port, b.port))
}

type pendingEntry struct {
	present bool
	str     string // addr.String()
}

// touch records that the entries member p gives the group may have changed.
// It does nothing before the group's first shards, which scan the members.
func (e *Engine) touch(st *groupState, p *podInfo) {
	if st.shards == nil {
		return
	}
	var port int32
	if g := st.def; g.namedPort != nil {
		n, ok := p.namedPort(g.namedPort.Name, g.namedPort.Protocol)
		if !ok {
			return
		}
		port = n
	}
	if st.pending == nil {
		st.pending = map[entryKey]pendingEntry{}
	}
	for i, a := range p.ips {
		k := entryKey{a, port}
		st.pending[k] = pendingEntry{present: e.gives(st.def, k), str: p.ipStrs[i]}
	}
}

// gives reports whether a member of the group gives it entry k now.
func (e *Engine) gives(g *groupDef, k entryKey) bool {
	for _, q := range e.ix.podsByIP[k.addr] {
		if !g.matches(e.ix, q) {
			continue
		}
		if g.namedPort == nil {
			return true
		}
		if n, ok := q.namedPort(g.namedPort.Name, g.namedPort.Protocol); ok && n == k.port {
			return true
		}
	}
	return false
}

// update returns the group's shards with its pending entries applied, and
// their level. A shard no entry of which changed is the same spec; a changed
// one is a new spec that shares nothing mutable with the old. When the
// level changes (see chooseLevel) the group is scanned again.
func (e *Engine) update(st *groupState) (int, []*v1alpha1.AddressGroupSpec) {
	type change struct {
		shard int
		k     entryKey
	}
	changes := make([]change, 0, len(st.pending))
	for k := range st.pending {
		c := change{k: k}
		if st.level > 0 {
			c.shard = shardOf(entryHash(k), st.level)
		}
		changes = append(changes, c)
	}
	slices.SortFunc(changes, func(a, b change) int {
		return cmp.Or(cmp.Compare(a.shard, b.shard), compareEntryKeys(a.k, b.k))
	})
	shards := slices.Clone(st.shards)
	keys := make([]entryKey, 0, len(changes))
	for i := 0; i < len(changes); {
		j := i
		keys = keys[:0]
		for ; j < len(changes) && changes[j].shard == changes[i].shard; j++ {
			keys = append(keys, changes[j].k)
		}
		sh := changes[i].shard
		shards[sh] = updateSpec(st.shards[sh], st.def.namedPort != nil, keys, st.pending)
		i = j
	}
	// Keep the level unless chooseLevel would change it: a shard
	// overflows, or the group would shrink.
	sizes, fits := make([]int, len(shards)), true
	for i, sh := range shards {
		sizes[i] = len(sh.Addresses) + len(sh.Endpoints)
		fits = fits && sizes[i] <= e.maxEntries
	}
	if fits && (st.level == 0 || !shrinks(sizes, e.maxEntries)) {
		return st.level, shards
	}
	return e.ix.groupShards(st.def, st.level, true, e.maxEntries)
}

// updateSpec returns the shard old with the changes (sorted) applied, each
// present or not as pending says: old when none alters it, else a new spec
// that shares nothing mutable with it (the entries are copied once,
// whatever the number of changes).
func updateSpec(old *v1alpha1.AddressGroupSpec, endpoints bool, changes []entryKey, pending map[entryKey]pendingEntry) *v1alpha1.AddressGroupSpec {
	n := len(old.Addresses)
	if endpoints {
		n = len(old.Endpoints)
	}
	at := func(i int) entryKey {
		var s string
		var port int32
		if endpoints {
			s, port = old.Endpoints[i].IP, old.Endpoints[i].Port
		} else {
			s = old.Addresses[i]
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			panic("compiler: unparsable address in a group: " + s)
		}
		return entryKey{a, port}
	}
	// Find the changes that alter the list, and where; then copy the list
	// once, with them.
	type edit struct {
		i   int  // position in old
		add bool // insert before i; else delete i
		k   entryKey
		str string
	}
	var edits []edit
	lo := 0
	for _, k := range changes {
		i, found := sort.Find(n-lo, func(j int) int { return compareEntryKeys(k, at(lo+j)) })
		i += lo
		pe := pending[k]
		if pe.present != found {
			edits = append(edits, edit{i: i, add: pe.present, k: k, str: pe.str})
		}
		lo = i
	}
	if len(edits) == 0 {
		return old
	}
	spec := *old // the selectors and named port are never modified: share them
	size := n
	for _, ed := range edits {
		if ed.add {
			size++
		} else {
			size--
		}
	}
	if endpoints {
		spec.Endpoints = nil
		if size > 0 {
			spec.Endpoints = make([]v1alpha1.Endpoint, 0, size)
		}
	} else {
		spec.Addresses = nil
		if size > 0 {
			spec.Addresses = make([]string, 0, size)
		}
	}
	prev := 0
	for _, ed := range edits {
		if endpoints {
			spec.Endpoints = append(spec.Endpoints, old.Endpoints[prev:ed.i]...)
		} else {
			spec.Addresses = append(spec.Addresses, old.Addresses[prev:ed.i]...)
		}
		prev = ed.i
		switch {
		case !ed.add:
			prev++
		case endpoints:
			spec.Endpoints = append(spec.Endpoints, v1alpha1.Endpoint{IP: ed.str, Port: ed.k.port})
		default:
			spec.Addresses = append(spec.Addresses, ed.str)
		}
	}
	if endpoints {
		spec.Endpoints = append(spec.Endpoints, old.Endpoints[prev:]...)
	} else {
		spec.Addresses = append(spec.Addresses, old.Addresses[prev:]...)
	}
	return &spec
}

// Delta is what changed since the previous call to Changes. A nil value
// means the object is gone.
//
// The specs and spans are not copies: they are shared with the Engine and
// with the Deltas handed out before and after. Callers must not modify them,
// nor anything they point to (copy a spec before giving it to code that
// might, such as a client decoding a response into the object it sent). The
// Engine does not modify them either: a later change comes as a new value,
// and a value handed out keeps its content.
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
func NewEngine() *Engine { return NewEngineWith(Options{}) }

// NewEngineWith returns an Engine for an empty cluster, with options. The
// shard levels of the options are used for the first output of each group
// they name (a controller starting again can pass those of the groups it
// wrote, so that groups between two levels keep theirs).
func NewEngineWith(o Options) *Engine {
	ix := newIndex(o)
	ix.podsByIP = map[netip.Addr][]*podInfo{}
	return &Engine{
		ix:              ix,
		maxEntries:      o.maxEntries(),
		hints:           maps.Clone(o.ShardLevels),
		expandNodes:     map[string]struct{}{},
		outLevels:       map[string]int{},
		npSpecs:         map[nsName]*networkingv1.NetworkPolicySpec{},
		ddSpecs:         map[string]*v1alpha1.DefaultDenySpec{},
		nodes:           map[string]*nodeResult{},
		groups:          map[string]*groupState{},
		nsGroups:        map[string]map[string]*groupState{},
		pinnedGroups:    map[string]map[string]*groupState{},
		otherGroups:     map[string]*groupState{},
		spans:           map[string]map[string]int{},
		policies:        map[string]struct{}{},
		dirtyNodes:      map[string]struct{}{},
		dirtyGroups:     map[string]struct{}{},
		dirtyPolicies:   map[string]struct{}{},
		outNodes:        map[string]*v1alpha1.NodeRuleSetSpec{},
		outGroups:       map[string]*v1alpha1.AddressGroupSpec{},
		outPolicies:     map[string]*PolicySpan{},
		changedNodes:    map[string]struct{}{},
		changedGroups:   map[string]struct{}{},
		changedPolicies: map[string]struct{}{},
	}
}

// UpsertPod adds or updates a pod.
func (e *Engine) UpsertPod(p *corev1.Pod) {
	e.setPod(nsName{p.Namespace, p.Name}, newPodInfo(p, true))
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
	// A group holds the pods matching it: the old version was a member if
	// it matched (the namespace's labels are the same), the new one is if
	// it matches.
	nsLabels := e.ix.nsLabels(key.ns)
	e.forCandidateGroups(key.ns, func(st *groupState) {
		if !st.def.matchesNamespace(key.ns, nsLabels) {
			return
		}
		was := old != nil && st.def.matchesPod(old)
		is := info != nil && st.def.matchesPod(info)
		if !was && !is || was && is && sameContribution(st.def, old, info) {
			return
		}
		if was {
			e.touch(st, old)
		}
		if is {
			e.touch(st, info)
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
	for _, st := range e.pinnedGroups[ns] {
		f(st)
	}
	for _, st := range e.otherGroups {
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
	e.forCandidateGroups(name, func(st *groupState) {
		if st.def.nsSel == nil || st.def.nsSel.Matches(before) == st.def.nsSel.Matches(after) {
			return
		}
		// The namespace's matching pods join or leave the group.
		for _, p := range pods {
			if st.def.matchesPod(p) {
				e.touch(st, p)
				e.dirtyGroups[st.def.name] = struct{}{}
			}
		}
	})
}

// UpsertNode adds or updates a node: only its pod CIDRs matter (its labels
// and status do not).
func (e *Engine) UpsertNode(n *corev1.Node) {
	if n.Name == "" {
		return
	}
	cidrs := podCIDRs(n)
	if old, ok := e.ix.nodes[n.Name]; ok && slices.Equal(old, cidrs) {
		return
	}
	e.ix.nodes[n.Name] = cidrs
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
	// Keep a copy of the spec only: the metadata does not matter.
	np = &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: np.Namespace, Name: np.Name}, Spec: *np.Spec.DeepCopy()}
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
	dd = &v1alpha1.DefaultDeny{ObjectMeta: metav1.ObjectMeta{Name: dd.Name}, Spec: *dd.Spec.DeepCopy()}
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
// previous call. The specs it returns are shared, not copies: see Delta.
func (e *Engine) Changes() *Delta {
	e.recompute()
	d := &Delta{
		NodeRuleSets:  make(map[string]*v1alpha1.NodeRuleSetSpec, len(e.changedNodes)),
		AddressGroups: make(map[string]*v1alpha1.AddressGroupSpec, len(e.changedGroups)),
		Policies:      make(map[string]*PolicySpan, len(e.changedPolicies)),
	}
	for name := range e.changedNodes {
		d.NodeRuleSets[name] = e.outNodes[name] // nil when gone
	}
	for name := range e.changedGroups {
		d.AddressGroups[name] = e.outGroups[name]
	}
	for key := range e.changedPolicies {
		d.Policies[key] = e.outPolicies[key]
	}
	clear(e.changedNodes)
	clear(e.changedGroups)
	clear(e.changedPolicies)
	return d
}

// Result brings the output up to date and returns all of it, as Compile
// would for the current objects. It does not consume the pending Changes.
// Unlike the specs of a Delta, the Result is a copy the caller owns.
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
		e.recomputeGroup(name)
	}
	clear(e.dirtyGroups)
	for node := range e.expandNodes {
		e.outputNode(node)
	}
	clear(e.expandNodes)
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
		if !had || old.SelectedPods != span.SelectedPods || !slices.Equal(old.Nodes, span.Nodes) {
			e.outPolicies[key] = &span
			e.changedPolicies[key] = struct{}{}
		}
	}
	clear(e.dirtyPolicies)
}

func (e *Engine) recomputeGroup(name string) {
	st := e.groups[name]
	oldLevel, had := e.outLevels[name]
	if st == nil {
		if had {
			e.dropShards(name, oldLevel)
			delete(e.outLevels, name)
		}
		return
	}
	var level int
	var shards []*v1alpha1.AddressGroupSpec
	switch {
	case st.shards == nil:
		prev, hasPrev := oldLevel, had
		if !had {
			prev, hasPrev = e.hints[name]
			delete(e.hints, name)
		}
		level, shards = e.ix.groupShards(st.def, prev, hasPrev, e.maxEntries)
	case len(st.pending) > 0:
		level, shards = e.update(st)
	default:
		return
	}
	st.pending = nil
	if had && oldLevel != level {
		e.dropShards(name, oldLevel)
	}
	if had && oldLevel != level {
		// The rule sets referencing the group name other shards. Levels
		// change rarely: look for them. (A group without output is new: the
		// nodes referencing it were compiled in this pass.)
		for node, nr := range e.nodes {
			if hasGroup(nr.groups, name) {
				e.expandNodes[node] = struct{}{}
			}
		}
	}
	for i, sh := range shards {
		shard := ShardName(name, level, i)
		old := e.outGroups[shard]
		if old == sh {
			continue
		}
		if old != nil && equalGroupSpecs(old, sh) {
			shards[i] = old
			continue
		}
		e.outGroups[shard] = sh
		e.changedGroups[shard] = struct{}{}
	}
	st.shards, st.level = shards, level
	e.outLevels[name] = level
}

// dropShards removes the output shards of a group at a level.
func (e *Engine) dropShards(name string, level int) {
	for i := range 1 << level {
		shard := ShardName(name, level, i)
		delete(e.outGroups, shard)
		e.changedGroups[shard] = struct{}{}
	}
}

// GroupReferences returns how many compiled rule sets reference the
// AddressGroup object named name (a group, or one of its shards: a rule set
// that references a group references all of its shards), as of the last
// Changes or Result; 0 when no output has that name.
func (e *Engine) GroupReferences(name string) int {
	if _, ok := e.outGroups[name]; !ok {
		return 0
	}
	if st := e.groups[LogicalGroup(name)]; st != nil {
		return st.refs
	}
	return 0
}

// HintShardLevels gives the shard levels of groups as written by a previous
// run, by group name (see NewEngineWith): each is used for its group's
// first output unless the group has one already.
func (e *Engine) HintShardLevels(levels map[string]int) {
	if e.hints == nil {
		e.hints = map[string]int{}
	}
	for name, l := range levels {
		if _, done := e.outLevels[name]; !done {
			e.hints[name] = l
		}
	}
}

// ShardLevels returns the shard level of every group split into shards, by
// group name (see Options.ShardLevels).
func (e *Engine) ShardLevels() map[string]int {
	e.recompute()
	out := map[string]int{}
	for name, l := range e.outLevels {
		if l > 0 {
			out[name] = l
		}
	}
	return out
}

// equalGroupSpecs reports whether two specs of one group are equal. Their
// definition parts are equal, being made from one definition.
func equalGroupSpecs(a, b *v1alpha1.AddressGroupSpec) bool {
	return slices.Equal(a.Addresses, b.Addresses) && slices.Equal(a.Endpoints, b.Endpoints)
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
	if cur == nil {
		delete(e.nodes, node)
		if _, had := e.outNodes[node]; had {
			delete(e.outNodes, node)
			e.changedNodes[node] = struct{}{}
		}
		return
	}
	e.nodes[node] = cur
	e.expandNodes[node] = struct{}{} // once its groups have their shards
}

// outputNode brings the output of a compiled node up to date: its spec
// with the current shards of its groups.
func (e *Engine) outputNode(node string) {
	cur := e.nodes[node]
	if cur == nil {
		return
	}
	spec := expandNode(&cur.spec, cur.groups, func(g *groupDef) int { return e.groups[g.name].level })
	if old, had := e.outNodes[node]; !had || !equalNodeSpecs(old, spec) {
		e.outNodes[node] = spec
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
	st := &groupState{def: g, refs: 1} // recompute scans its members
	e.groups[g.name] = st
	switch names, pinned := pinnedNamespaces(g); {
	case g.blocks != nil:
		// No pod is a member.
	case g.nsSel == nil:
		addGroup(e.nsGroups, g.namespace, st)
	case pinned:
		for _, ns := range names {
			addGroup(e.pinnedGroups, ns, st)
		}
	default:
		e.otherGroups[g.name] = st
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
	g := st.def
	switch names, pinned := pinnedNamespaces(g); {
	case g.blocks != nil:
	case g.nsSel == nil:
		removeGroup(e.nsGroups, g.namespace, name)
	case pinned:
		for _, ns := range names {
			removeGroup(e.pinnedGroups, ns, name)
		}
	default:
		delete(e.otherGroups, name)
	}
	e.dirtyGroups[name] = struct{}{}
}

// hasGroup reports whether groups, sorted by name, hold the group named name.
func hasGroup(groups []*groupDef, name string) bool {
	_, ok := slices.BinarySearchFunc(groups, name, func(g *groupDef, name string) int { return cmp.Compare(g.name, name) })
	return ok
}

func addGroup(m map[string]map[string]*groupState, ns string, st *groupState) {
	if m[ns] == nil {
		m[ns] = map[string]*groupState{}
	}
	m[ns][st.def.name] = st
}

func removeGroup(m map[string]map[string]*groupState, ns, name string) {
	delete(m[ns], name)
	if len(m[ns]) == 0 {
		delete(m, ns)
	}
}
