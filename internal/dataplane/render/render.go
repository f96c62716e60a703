package render

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/prefix"
)

// Defaults for the zero fields of Options.
const (
	DefaultLogGroup uint16 = 100
	DefaultLogRate  uint32 = 10
	DefaultLogBurst uint32 = 20
)

// ingressPriority orders ingress-forward after egress-forward (priority
// filter). An accept in one base chain lets the packet on to the next base
// chain of the same hook, so a forwarded packet between two local pods must
// pass the source's egress chain and then the destination's ingress chain.
const ingressPriority = 10

// Options tune what Render produces. Zero fields take the defaults above.
type Options struct {
	// LogGroup is the NFLOG group of the drop and audit log rules.
	LogGroup uint16
	// LogRate is how many packets a second each isolated pod direction may
	// log; the rest are dropped (or let through, in Audit mode) unlogged.
	LogRate uint32
	// LogBurst is the burst of the log rate limit, in packets.
	LogBurst uint32
}

func (o Options) withDefaults() Options {
	if o.LogGroup == 0 {
		o.LogGroup = DefaultLogGroup
	}
	if o.LogRate == 0 {
		o.LogRate = DefaultLogRate
	}
	if o.LogBurst == 0 {
		o.LogBurst = DefaultLogBurst
	}
	return o
}

// Render builds the table for a node's rule set. It is pure: the same input
// gives the same table, with the same names, whatever the order of maps.
//
// Layout (see testdata/*.golden):
//   - Base chains egress-forward and egress-input (priority filter) and
//     ingress-forward (priority filter + 10), policy accept, each starting
//     with: ct state established,related accept; ICMPv6 neighbour discovery
//     accept; ct state invalid drop. Output is not hooked: traffic from the
//     node to its pods is never filtered, and its replies are established.
//   - Dispatch by verdict maps keyed by local pod IP: in4/in6 on daddr,
//     eg4/eg6 on saddr, to one chain per isolated pod direction
//     (in-<namespace>.<name>, eg-...). A pod that is not isolated in a
//     direction has no chain and no map element for it.
//   - A pod chain jumps to the chain of each rule it references
//     (rule-<id>); a rule chain accepts what the rule allows, or returns.
//     The pod chain then logs (rate limited, NFLOG, prefix
//     nftguard:<drop|audit>:<in|eg>:<podkey>) and drops (Enforce) or
//     accepts (Audit).
//   - Peers are named sets: ag4-/ag6-<group> (addresses of an
//     AddressGroup; agn4-/agn6- when it holds CIDRs), ep4-/ep6-<group>
//     (address . protocol . port of a named-port group, matched on the
//     destination), rule-<id>-net4/-net6 (the rule's ipBlocks, CIDRs minus
//     excepts, as intervals). A group's set of a family, and the rule
//     lines matching it, exist only when the group has members of that
//     family (see groupSet). A rule with several ports uses
//     rule-<id>-ports (protocol . port ranges); one port is matched inline.
//
// A packet costs the prologue, one map lookup and, for an isolated pod, one
// set lookup per peer of the rules that select the pod: nothing grows with
// the number of pods, policies or peer addresses on the node.
func Render(spec v1alpha1.NodeRuleSetSpec, groups map[string]v1alpha1.AddressGroupSpec, opts Options) (*model.Table, error) {
	return newRenderer(opts.withDefaults(), nil, groups).render(spec)
}

// Renderer renders rule sets like Render, reusing the chains and sets it
// rendered for earlier calls where their inputs did not change: an agent
// re-renders its node on every event, and most events change one pod or a
// few address groups. A rule's chain is reused while the rule and the set
// names of its groups are the same; a group's sets while its addresses or
// endpoints are the same (compared by value: callers may pass new or reused
// specs alike); a pod's chains while the pod is the same. What the last call
// did not use is forgotten.
//
// The tables returned share those chains and sets, which nobody may modify
// (the Programmer does not). The result is always equal to Render's.
// A Renderer is safe for concurrent use.
type Renderer struct {
	mu     sync.Mutex
	opts   Options
	groups map[string]*groupMemo
	rules  map[string]*ruleMemo
	// peers holds the peer chains of rules reached by port dispatch.
	peers map[string]*ruleMemo
	pods  map[string]*podMemo
	spans map[string]*spansMemo
	gen   uint64 // renders so far
	// tags are the group tags of the last render, assigned among the
	// groups in tagged.
	tags     map[string]uint32
	tagged   map[string]struct{}
	together map[string]bool
	shared   [2][shards]sharedMemo
}

// sharedMemo is a shared set and the groups it was built from, in order.
type sharedMemo struct {
	parts []*groupMemo
	set   *model.Set
}

// NewRenderer returns a Renderer with the given options.
func NewRenderer(opts Options) *Renderer {
	return &Renderer{opts: opts.withDefaults(), groups: map[string]*groupMemo{}, rules: map[string]*ruleMemo{}, peers: map[string]*ruleMemo{},
		pods: map[string]*podMemo{}, spans: map[string]*spansMemo{}}
}

// Render renders the rule set as Render does.
func (m *Renderer) Render(spec v1alpha1.NodeRuleSetSpec, groups map[string]v1alpha1.AddressGroupSpec) (*model.Table, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gen++
	// A new Renderer's first render fills its memo: size it once.
	if len(m.rules) == 0 && len(m.spans) == 0 {
		m.rules = make(map[string]*ruleMemo, len(spec.Rules))
		m.spans = make(map[string]*spansMemo, len(spec.Rules))
	}
	if len(m.groups) == 0 {
		m.groups = make(map[string]*groupMemo, len(groups))
	}
	if len(m.pods) == 0 {
		m.pods = make(map[string]*podMemo, len(spec.Pods))
	}
	r := newRenderer(m.opts, m, groups)
	t, err := r.render(spec)
	if err != nil {
		return nil, err
	}
	// Forget what this rule set no longer uses.
	for name := range m.groups {
		if _, ok := r.groupSets[name]; !ok {
			delete(m.groups, name)
		}
	}
	for id, rm := range m.rules {
		if rm.gen != m.gen {
			delete(m.rules, id)
		}
	}
	for id, rm := range m.peers {
		if rm.gen != m.gen {
			delete(m.peers, id)
		}
	}
	for key := range m.pods {
		if !r.pods[key] {
			delete(m.pods, key)
		}
	}
	for id, sm := range m.spans {
		if sm.gen != m.gen {
			delete(m.spans, id)
		}
	}
	return t, nil
}

// groupTags returns the tags of the groups, reusing the last render's when
// the same groups are given (which groups take a tag depends only on their
// names and whether they are named-port groups).
func (m *Renderer) groupTags(groups map[string]v1alpha1.AddressGroupSpec, together map[string]bool) map[string]uint32 {
	if m == nil {
		return assignTags(groups, together)
	}
	same := m.tags != nil && maps.Equal(m.together, together)
	n := 0
	for name, g := range groups {
		if g.NamedPort != nil {
			continue
		}
		n++
		if _, ok := m.tagged[name]; !ok {
			same = false
			break
		}
	}
	if !same || n != len(m.tagged) {
		m.tags = assignTags(groups, together)
		m.together = together
		m.tagged = make(map[string]struct{}, len(groups))
		for name, g := range groups {
			if g.NamedPort == nil {
				m.tagged[name] = struct{}{}
			}
		}
	}
	return m.tags
}

// groupMemo is a group's rendered sets and the spec they came from.
type groupMemo struct {
	spec   v1alpha1.AddressGroupSpec // a copy
	tag    uint32
	hasTag bool
	names  [2]setRef
	sets   []*model.Set
	// tagged holds, per family, the keys of the group's elements of the
	// shared set (tag . address), sorted, one after the other.
	tagged [2][]byte
}

// taggedKeyLen is the length of a key of the shared set of a family.
func taggedKeyLen(i int) int {
	if i == 1 {
		return 4 + 16
	}
	return 4 + 4
}

// setRef is how rules match one family of a group: in a set of the
// group's own, or in the shared set with the group's tag. The zero setRef
// (no member of the family) matches nothing.
type setRef struct {
	name   string
	tag    uint32
	tagged bool
}

// ruleMemo is a rule's rendered chain and sets, and the inputs they came
// from: the rule, and the set names of each group it references.
type ruleMemo struct {
	rule   v1alpha1.Rule // a copy
	groups [][2]setRef   // per distinct group peer, in order
	chain  *model.Chain
	sets   []*model.Set
	gen    uint64 // the last render that used it

	// Storage for the chain and the groups of a rule with one group,
	// allocated with the memo.
	chainData  model.Chain
	groupsData [1][2]setRef
}

// podMemo is a pod's rendered chains and the pod they came from.
type podMemo struct {
	pod    v1alpha1.LocalPod // a copy
	addrs  []netip.Addr
	chains []podChain
	// spans are the port spans of the rules the pod references, in the
	// order of its ingress then egress rules: they decide its dispatch.
	spans [][]portSpan
	// dispatch holds the port maps and segment chains of the pod's
	// directions that dispatch on the destination port.
	maps     []*model.Set
	segments []*model.Chain
	// dispatched records, for ingress and egress, whether the direction
	// dispatches on the port: its rules with ports are then reached
	// through the segment chains.
	dispatched [2]bool
}

// podChain is one isolated direction of a pod: its chain and the verdict
// maps its addresses go in.
type podChain struct {
	chain      *model.Chain
	map4, map6 string
}

func newRenderer(opts Options, memo *Renderer, groups map[string]v1alpha1.AddressGroupSpec) *renderer {
	return &renderer{
		opts:       opts,
		memo:       memo,
		groups:     groups,
		pods:       map[string]bool{},
		segments:   map[string]bool{},
		groupSets:  map[string]groupRefs{},
		vmapOwners: map[string]bool{},
	}
}

func (r *renderer) render(spec v1alpha1.NodeRuleSetSpec) (*model.Table, error) {
	groups := r.groups
	r.tags = r.memo.groupTags(groups, shardsTogether(spec.Rules))
	r.rules = make(map[string]*ruleInfo, len(spec.Rules))
	infos := make([]ruleInfo, len(spec.Rules))
	r.sets = make(map[string]*model.Set, len(spec.Rules)+len(groups))
	for i := range spec.Rules {
		rule := &spec.Rules[i]
		if rule.ID == "" {
			return nil, fmt.Errorf("rule %d has no id", i)
		}
		if _, dup := r.rules[rule.ID]; dup {
			return nil, fmt.Errorf("rule %q appears twice", rule.ID)
		}
		if rule.Direction != v1alpha1.DirectionIngress && rule.Direction != v1alpha1.DirectionEgress {
			return nil, fmt.Errorf("rule %q: unknown direction %q", rule.ID, rule.Direction)
		}
		for _, peer := range rule.Peers {
			if peer.AddressGroup != "" {
				if _, ok := groups[peer.AddressGroup]; !ok {
					return nil, fmt.Errorf("rule %q references address group %q, which was not given", rule.ID, peer.AddressGroup)
				}
			}
		}
		infos[i].rule = rule
		r.rules[rule.ID] = &infos[i]
	}
	for _, name := range []string{model.MapIngress4, model.MapIngress6, model.MapEgress4, model.MapEgress6} {
		kind := model.MapIPv4Verdict
		if name == model.MapIngress6 || name == model.MapEgress6 {
			kind = model.MapIPv6Verdict
		}
		r.sets[name] = &model.Set{Name: name, Kind: kind}
	}

	pods := slices.Clone(spec.Pods)
	slices.SortStableFunc(pods, func(a, b v1alpha1.LocalPod) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	var chains []*model.Chain
	for _, pod := range pods {
		cs, err := r.podChains(pod)
		if err != nil {
			return nil, err
		}
		chains = append(chains, cs...)
	}
	// In rule set order, so that of two bad inputs the same one is
	// always reported.
	for i := range infos {
		ri := &infos[i]
		if ri.direct {
			c, err := r.ruleChain(ri, false)
			if err != nil {
				return nil, err
			}
			chains = append(chains, c)
		}
		if ri.dispatched {
			c, err := r.ruleChain(ri, true)
			if err != nil {
				return nil, err
			}
			chains = append(chains, c)
		}
	}
	slices.SortFunc(chains, func(a, b *model.Chain) int { return cmp.Compare(a.Name, b.Name) })

	r.sharedSets()
	t := &model.Table{Chains: append(baseChains(), chains...)}
	for _, s := range r.sets {
		t.Sets = append(t.Sets, s)
	}
	for _, name := range []string{model.MapIngress4, model.MapIngress6, model.MapEgress4, model.MapEgress6} {
		sortElements(r.sets[name])
	}
	slices.SortFunc(t.Sets, func(a, b *model.Set) int { return cmp.Compare(a.Name, b.Name) })
	return t, nil
}

// sortElements sorts a set's elements in the order diff compares them in
// (compareElements); rendered sets are sorted when they are built.
func sortElements(s *model.Set) {
	if !model.SortedElements(s.Elements) {
		slices.SortFunc(s.Elements, func(a, b model.Element) int { return model.CompareElements(&a, &b) })
	}
}

type renderer struct {
	opts Options
	// memo holds what earlier renders produced; nil for a one-off Render.
	memo   *Renderer
	groups map[string]v1alpha1.AddressGroupSpec
	rules  map[string]*ruleInfo
	// pods records the pods rendered (namespace/name).
	pods map[string]bool
	// segments records the segment chains added.
	segments map[string]bool
	sets     map[string]*model.Set
	// groupSets caches the v4 and v6 set references of each rendered group.
	groupSets map[string]groupRefs
	// tags are the tags of the groups whose single addresses go in the
	// shared sets; a group without one has sets of its own.
	tags map[string]uint32
	// tagged lists, per family and shard, the groups rendered into the
	// shared sets.
	tagged [2][shards][]*groupMemo
	// vmapOwners records map/address pairs already dispatched.
	vmapOwners map[string]bool
	// text is a scratch buffer for the text of rules being identified;
	// hosts holds a group's single addresses, per family, while its sets
	// are built.
	text  []byte
	hosts [2][]netip.Addr
	// portStmts holds the match of each single port span rendered.
	portStmts map[portSpan][]model.Stmt
}

// ruleInfo is what one render knows of a rule of its rule set.
type ruleInfo struct {
	rule *v1alpha1.Rule
	// direct records that a pod jumps to the rule's chain, and dispatched
	// that a pod reaches the rule through port dispatch.
	direct, dispatched bool
	// spans are the rule's port spans once spansDone, and memo their
	// entry in the Renderer; chain is the name of the rule's chain and
	// jump the statement jumping to it, once known.
	spans     []portSpan
	spansDone bool
	memo      *spansMemo
	chain     string
	jump      model.Stmt
	peersJump model.Stmt
}

func baseChains() []*model.Chain {
	prologue := func() []*model.Rule {
		return []*model.Rule{
			model.NewRule(model.CtState{Bits: model.CtEstablished | model.CtRelated}, model.Verdict{Kind: model.VerdictAccept}),
			// Neighbour discovery (router solicitation .. redirect) is never
			// filtered: a pod's solicitations may carry its global address.
			model.NewRule(model.ICMPv6Types{From: 133, To: 137}, model.Verdict{Kind: model.VerdictAccept}),
			model.NewRule(model.CtState{Bits: model.CtInvalid}, model.Verdict{Kind: model.VerdictDrop}),
		}
	}
	egress := func(name string, hook model.Hook) *model.Chain {
		return &model.Chain{Name: name, Hook: hook, Priority: 0, Rules: append(prologue(),
			model.NewRule(model.AddrVmap{Family: model.IPv4, Field: model.Saddr, Vmap: model.MapEgress4}),
			model.NewRule(model.AddrVmap{Family: model.IPv6, Field: model.Saddr, Vmap: model.MapEgress6}),
		)}
	}
	return []*model.Chain{
		egress(model.ChainEgressForward, model.HookForward),
		egress(model.ChainEgressInput, model.HookInput),
		{Name: model.ChainIngressForward, Hook: model.HookForward, Priority: ingressPriority, Rules: append(prologue(),
			model.NewRule(model.AddrVmap{Family: model.IPv4, Field: model.Daddr, Vmap: model.MapIngress4}),
			model.NewRule(model.AddrVmap{Family: model.IPv6, Field: model.Daddr, Vmap: model.MapIngress6}),
		)},
	}
}

// podChains returns the chains of a pod's isolated directions and adds
// their map elements, reusing the pod's chains from the last render when
// the pod did not change. The rules the pod references are checked every
// time: the rule set may have changed around an unchanged pod.
func (r *renderer) podChains(pod v1alpha1.LocalPod) ([]*model.Chain, error) {
	key := pod.Namespace + "/" + pod.Name
	// A second pod of the same name (invalid input) is rendered, not
	// remembered.
	remember := r.memo != nil && !r.pods[key]
	r.pods[key] = true
	var pm *podMemo
	if remember {
		if m := r.memo.pods[key]; m != nil && equalPod(&m.pod, &pod) && r.sameSpans(&pod, m.spans) {
			pm = m
		}
	}
	if pm == nil {
		var err error
		if pm, err = r.buildPod(pod); err != nil {
			return nil, err
		}
		if remember {
			pm.pod = copyPod(pod)
			r.memo.pods[key] = pm
		}
	}
	if len(pm.addrs) == 0 {
		return nil, nil
	}
	for k, d := range []struct {
		iso       *v1alpha1.Isolation
		direction v1alpha1.Direction
	}{{pod.Ingress, v1alpha1.DirectionIngress}, {pod.Egress, v1alpha1.DirectionEgress}} {
		if d.iso == nil {
			continue
		}
		for _, id := range d.iso.Rules {
			ri, ok := r.rules[id]
			if !ok {
				return nil, fmt.Errorf("pod %s/%s: %s isolation references rule %q, which is not in the rule set", pod.Namespace, pod.Name, d.direction, id)
			}
			if ri.rule.Direction != d.direction {
				return nil, fmt.Errorf("pod %s/%s: %s isolation references %s rule %q", pod.Namespace, pod.Name, d.direction, ri.rule.Direction, id)
			}
			if pm.dispatched[k] && len(r.spansOf(id, ri)) > 0 {
				ri.dispatched = true
			} else {
				ri.direct = true
			}
		}
	}
	chains := make([]*model.Chain, 0, len(pm.chains)+len(pm.segments))
	for _, s := range pm.maps {
		r.sets[s.Name] = s
	}
	for _, c := range pm.segments {
		// Segment chains are named by their content: pods with the same
		// rules on the same ports share them.
		if !r.segments[c.Name] {
			r.segments[c.Name] = true
			chains = append(chains, c)
		}
	}
	for _, pc := range pm.chains {
		chains = append(chains, pc.chain)
		for _, a := range pm.addrs {
			m := pc.map4
			if a.Is6() {
				m = pc.map6
			}
			// Two pods claiming one address (a stale pod, say): the first
			// pod isolated in this direction keeps it, so the address stays
			// isolated.
			if owner := m + "/" + a.String(); !r.vmapOwners[owner] {
				r.vmapOwners[owner] = true
				r.sets[m].Elements = append(r.sets[m].Elements, model.Element{Key: a.AsSlice(), Verdict: &model.Verdict{Kind: model.VerdictGoto, Chain: pc.chain.Name}})
			}
		}
	}
	return chains, nil
}

// buildPod renders the chains of a pod's isolated directions.
func (r *renderer) buildPod(pod v1alpha1.LocalPod) (*podMemo, error) {
	pm := &podMemo{spans: r.podSpans(&pod)}
	for _, s := range pod.IPs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("pod %s/%s: IP %q: %w", pod.Namespace, pod.Name, s, err)
		}
		pm.addrs = append(pm.addrs, a.Unmap())
	}
	if len(pm.addrs) == 0 {
		return pm, nil
	}
	podKey := prefix.PodKey(pod.Namespace, pod.Name)
	for k, d := range []struct {
		iso        *v1alpha1.Isolation
		direction  v1alpha1.Direction
		short      string
		dir        prefix.Direction
		map4, map6 string
	}{
		{pod.Ingress, v1alpha1.DirectionIngress, "in", prefix.Ingress, model.MapIngress4, model.MapIngress6},
		{pod.Egress, v1alpha1.DirectionEgress, "eg", prefix.Egress, model.MapEgress4, model.MapEgress6},
	} {
		if d.iso == nil {
			continue
		}
		action, final := prefix.ActionDrop, model.VerdictDrop
		switch d.iso.Mode {
		case v1alpha1.IsolationEnforce, "":
		case v1alpha1.IsolationAudit:
			action, final = prefix.ActionAudit, model.VerdictAccept
		default:
			return nil, fmt.Errorf("pod %s/%s: unknown %s isolation mode %q", pod.Namespace, pod.Name, d.direction, d.iso.Mode)
		}
		c := &model.Chain{Name: PodChainName(d.short, pod.Namespace, pod.Name)}
		seen := make(map[string]bool, len(d.iso.Rules))
		var ids, ported, anyPort []string
		for _, id := range d.iso.Rules {
			if seen[id] {
				continue
			}
			seen[id] = true
			ids = append(ids, id)
			if len(r.ruleSpans(id)) > 0 {
				ported = append(ported, id)
			} else {
				anyPort = append(anyPort, id)
			}
		}
		if len(ported) >= DispatchMin {
			// Dispatch on the destination port to the rules for that
			// port, then walk the rules for every port.
			m, segs := r.portDispatch(PodPortMapName(d.short, pod.Namespace, pod.Name), ported)
			pm.dispatched[k] = true
			pm.maps = append(pm.maps, m)
			pm.segments = append(pm.segments, segs...)
			c.Rules = append(c.Rules, model.NewRule(model.PortsVmap{Vmap: m.Name}))
			ids = anyPort
		}
		c.Rules = r.appendJumps(slices.Grow(c.Rules, len(ids)+2), ids, false)
		c.Rules = append(c.Rules,
			model.NewRule(model.LimitRate{Rate: r.opts.LogRate, Burst: r.opts.LogBurst}, model.NFLog{Prefix: prefix.Format(action, d.dir, podKey), Group: r.opts.LogGroup}),
			model.NewRule(model.Verdict{Kind: final}),
		)
		r.Identify(c)
		pm.chains = append(pm.chains, podChain{chain: c, map4: d.map4, map6: d.map6})
	}
	return pm, nil
}

// DispatchMin is how many rules with ports a pod direction needs before it
// dispatches on the destination port rather than walking its rules in
// turn for every new connection.
var DispatchMin = 8

// ruleSpans returns the port spans of a rule (nil: every port, or a rule
// that is not in the rule set or is invalid, which is reported elsewhere).
func (r *renderer) ruleSpans(id string) []portSpan {
	ri := r.rules[id]
	if ri == nil {
		return nil
	}
	return r.spansOf(id, ri)
}

// spansOf returns the port spans of the rule with that id and info, as
// ruleSpans does.
func (r *renderer) spansOf(id string, ri *ruleInfo) []portSpan {
	if ri.spansDone {
		return ri.spans
	}
	ri.spansDone = true
	if r.memo == nil {
		ri.spans, _ = portSpans(ri.rule)
		return ri.spans
	}
	// The Renderer keeps the spans of the rules it rendered, with the
	// ports they came from.
	ru := ri.rule
	sm := r.memo.spans[id]
	if sm == nil || !slices.Equal(sm.ports, ru.Ports) {
		spans, _ := portSpans(ru)
		sm = &spansMemo{ports: slices.Clone(ru.Ports), spans: spans}
		r.memo.spans[id] = sm
	}
	sm.gen = r.memo.gen
	ri.spans, ri.memo = sm.spans, sm
	return ri.spans
}

// appendJumps appends rules jumping to the chains of the rules with those
// ids (to their peer chains with peers set), allocated together.
func (r *renderer) appendJumps(rules []*model.Rule, ids []string, peers bool) []*model.Rule {
	rs := make([]model.Rule, len(ids))
	stmts := make([]model.Stmt, len(ids))
	for i, id := range ids {
		stmts[i] = r.jump(id, peers)
		rs[i].Stmts = stmts[i : i+1 : i+1]
		rules = append(rules, &rs[i])
	}
	return rules
}

// jump returns the statement jumping to the chain of the rule with that id,
// or to its peer chain.
func (r *renderer) jump(id string, peers bool) model.Stmt {
	ri := r.rules[id]
	if peers {
		if ri == nil {
			return model.Verdict{Kind: model.VerdictJump, Chain: peersChainName(id)}
		}
		if ri.peersJump == nil {
			ri.peersJump = model.Verdict{Kind: model.VerdictJump, Chain: peersChainName(id)}
		}
		return ri.peersJump
	}
	if ri == nil {
		return model.Verdict{Kind: model.VerdictJump, Chain: RuleChainName(id)}
	}
	if ri.jump == nil {
		ri.jump = model.Verdict{Kind: model.VerdictJump, Chain: r.chainName(id, ri)}
	}
	return ri.jump
}

// chainName returns the name of the chain of the rule with that id and info.
func (r *renderer) chainName(id string, ri *ruleInfo) string {
	if ri.chain == "" {
		ri.chain = RuleChainName(id)
	}
	return ri.chain
}

// spansMemo is a rule's port spans and the ports they came from, with the
// render that last used them.
type spansMemo struct {
	ports []v1alpha1.Port
	spans []portSpan
	gen   uint64
}

// podSpans returns the port spans of the rules a pod references.
func (r *renderer) podSpans(pod *v1alpha1.LocalPod) [][]portSpan {
	n := 0
	for _, iso := range []*v1alpha1.Isolation{pod.Ingress, pod.Egress} {
		if iso != nil {
			n += len(iso.Rules)
		}
	}
	if n == 0 {
		return nil
	}
	out := make([][]portSpan, 0, n)
	for _, iso := range []*v1alpha1.Isolation{pod.Ingress, pod.Egress} {
		if iso == nil {
			continue
		}
		for _, id := range iso.Rules {
			out = append(out, r.ruleSpans(id))
		}
	}
	return out
}

// sameSpans reports whether the pod's rules have the ports a remembered
// pod was rendered with.
func (r *renderer) sameSpans(pod *v1alpha1.LocalPod, want [][]portSpan) bool {
	i := 0
	for _, iso := range []*v1alpha1.Isolation{pod.Ingress, pod.Egress} {
		if iso == nil {
			continue
		}
		for _, id := range iso.Rules {
			if i >= len(want) || !slices.Equal(r.ruleSpans(id), want[i]) {
				return false
			}
			i++
		}
	}
	return i == len(want)
}

// portDispatch builds a pod direction's port map: the destination ports of
// its rules cut into disjoint segments, each mapped to a chain that jumps to
// the rules allowing that segment, in their order. Chains are named by
// their rules, so that pods with the same rules share them.
func (r *renderer) portDispatch(name string, ids []string) (*model.Set, []*model.Chain) {
	m := &model.Set{Name: name, Kind: model.MapPortsVerdict}
	var chains []*model.Chain
	made := map[string]bool{}
	type segment struct {
		proto    uint8
		from, to int
		ids      []string
	}
	var segs []segment
	spans := make([][]portSpan, len(ids))
	for i, id := range ids {
		spans[i] = r.ruleSpans(id)
	}
	var cuts []int
	var in []string
	for _, proto := range []uint8{model.ProtoTCP, model.ProtoUDP, model.ProtoSCTP} {
		cuts = cuts[:0]
		for _, ss := range spans {
			for _, s := range ss {
				if s.proto == proto {
					cuts = append(cuts, int(s.from), int(s.to)+1)
				}
			}
		}
		slices.Sort(cuts)
		cuts = slices.Compact(cuts)
		for i := 0; i+1 < len(cuts); i++ {
			from, to := cuts[i], cuts[i+1]-1
			in = in[:0]
			for j, id := range ids {
				if slices.ContainsFunc(spans[j], func(s portSpan) bool {
					return s.proto == proto && int(s.from) <= from && to <= int(s.to)
				}) {
					in = append(in, id)
				}
			}
			if len(in) == 0 {
				continue
			}
			if n := len(segs); n > 0 && segs[n-1].proto == proto && segs[n-1].to+1 == from && slices.Equal(segs[n-1].ids, in) {
				segs[n-1].to = to
				continue
			}
			segs = append(segs, segment{proto, from, to, slices.Clone(in)})
		}
	}
	for _, sg := range segs {
		chain := segmentChainName(sg.ids)
		if !made[chain] {
			made[chain] = true
			c := &model.Chain{Name: chain, Rules: r.appendJumps(make([]*model.Rule, 0, len(sg.ids)), sg.ids, true)}
			r.Identify(c)
			chains = append(chains, c)
		}
		k := make([]byte, 16)
		putConcatField(k[:8], sg.proto, uint16(sg.from))
		putConcatField(k[8:], sg.proto, uint16(sg.to))
		m.Elements = append(m.Elements, model.Element{Key: k[:8:8], KeyEnd: k[8:], Verdict: &model.Verdict{Kind: model.VerdictJump, Chain: chain}})
	}
	sortElements(m)
	return m, chains
}

// Identify computes the ids of a remembered chain's rules now, so that the
// tables sharing it only ever read them.
func (r *renderer) Identify(c *model.Chain) {
	if r.memo == nil {
		return
	}
	for _, ru := range c.Rules {
		r.text = ru.Identify(r.text)
	}
}

// ruleChain returns a rule's chain and adds its sets, reusing them from the
// last render when the rule and the set names of its groups are the same.
//
// With peers set it returns the rule's peer chain instead: the chain of a
// rule with ports that port dispatch reaches, where every packet is to one
// of the rule's ports already. It matches the peers alone: a tagged line
// is 6 expressions where the rule chain's line with one port is 10, and the
// kernel looks each expression's type up by name when it adds a rule.
func (r *renderer) ruleChain(ri *ruleInfo, peers bool) (*model.Chain, error) {
	ru := ri.rule
	memo := map[string]*ruleMemo(nil)
	if r.memo != nil {
		memo = r.memo.rules
		if peers {
			memo = r.memo.peers
		}
		if m := memo[ru.ID]; m != nil && equalRule(&m.rule, ru) && r.sameGroupSets(ru, m.groups) {
			for _, s := range m.sets {
				r.sets[s.Name] = s
			}
			m.gen = r.memo.gen
			return m.chain, nil
		}
	}
	m, err := r.buildRuleChain(ri, peers)
	if err != nil {
		return nil, err
	}
	for _, s := range m.sets {
		sortElements(s)
		r.sets[s.Name] = s
	}
	if r.memo != nil {
		r.Identify(m.chain)
		if sm := ri.memo; sm != nil && slices.Equal(sm.ports, ru.Ports) {
			// The copy of the ports the spans came from never changes
			// either: share it.
			m.rule = copyRulePorts(ru, sm.ports)
		} else {
			m.rule = copyRule(ru)
		}
		m.gen = r.memo.gen
		memo[ru.ID] = m
	}
	return m.chain, nil
}

// sameGroupSets reports whether the rule's group peers render to the set
// names a remembered chain was built with.
func (r *renderer) sameGroupSets(ru *v1alpha1.Rule, want [][2]setRef) bool {
	var seen []string
	i := 0
	for _, peer := range ru.Peers {
		if peer.AddressGroup == "" || peer.IPBlock != nil || slices.Contains(seen, peer.AddressGroup) {
			continue
		}
		seen = append(seen, peer.AddressGroup)
		refs, err := r.groupSet(peer.AddressGroup)
		if err != nil || i >= len(want) || refs.names != want[i] {
			return false
		}
		i++
	}
	return i == len(want)
}

// buildRuleChain renders a rule's chain and sets: one rule per peer set
// (and family) that accepts matching packets.
// A peer chain (peers set) leaves out the port match; its ipBlock sets are
// the rule chain's.
func (r *renderer) buildRuleChain(ri *ruleInfo, peers bool) (*ruleMemo, error) {
	ru := ri.rule
	name := r.chainName(ru.ID, ri)
	m := &ruleMemo{}
	m.chainData.Name = name
	if peers {
		m.chainData.Name = peersChainName(ru.ID)
	}
	m.chain, m.groups = &m.chainData, m.groupsData[:0]
	c := m.chain
	var ports []model.Stmt
	if !peers {
		var portSet *model.Set
		var err error
		ports, portSet, err = r.portMatch(name, ru, r.spansOf(ru.ID, ri))
		if err != nil {
			return nil, err
		}
		if portSet != nil {
			m.sets = append(m.sets, portSet)
		}
	}
	// Ports are matched before peers: a protocol and port compare is
	// cheaper than a set lookup, and a packet to another port skips the
	// lookup (a pod selected by many rules walks them all for each new
	// connection).
	accept := func(peer model.Stmt) *model.Rule {
		var stmts []model.Stmt
		var ru *model.Rule
		if len(ports) <= 1 {
			// Ports, peer and verdict: one allocation.
			rs := new(ruleStmts)
			stmts, ru = rs.stmts[:0], &rs.rule
		} else {
			stmts, ru = make([]model.Stmt, 0, len(ports)+2), new(model.Rule)
		}
		stmts = append(stmts, ports...)
		if peer != nil {
			stmts = append(stmts, peer)
		}
		ru.Stmts = append(stmts, acceptVerdict)
		return ru
	}
	if len(ru.Peers) == 0 {
		c.Rules = append(c.Rules, accept(nil))
		return m, nil
	}
	field := model.Saddr
	if ru.Direction == v1alpha1.DirectionEgress {
		field = model.Daddr
	}
	var blocks [2][]ipRange
	blockAt := -1
	var seenBuf [4]string
	seen := seenBuf[:0]
	var linesBuf [2][4]setRef
	lines := [2][]setRef{linesBuf[0][:0], linesBuf[1][:0]} // shared set lines written, per family
	for _, peer := range ru.Peers {
		switch {
		case peer.AddressGroup != "" && peer.IPBlock != nil:
			return nil, fmt.Errorf("rule %q: a peer sets both addressGroup and ipBlock", ru.ID)
		case peer.AddressGroup != "":
			if slices.Contains(seen, peer.AddressGroup) {
				continue
			}
			seen = append(seen, peer.AddressGroup)
			refs, err := r.groupSet(peer.AddressGroup)
			if err != nil {
				return nil, err
			}
			names := refs.names
			m.groups = append(m.groups, names)
			for i, fam := range []model.Family{model.IPv4, model.IPv6} {
				ref := names[i]
				if ref.tagged {
					if slices.Contains(lines[i], ref) {
						// Another shard of the same group: the line
						// matches it.
						continue
					}
					lines[i] = append(lines[i], ref)
				}
				switch {
				case ref.name == "":
					// No member of this family: nothing to match.
				case refs.named:
					c.Rules = append(c.Rules, accept(model.EndpointInSet{Family: fam, Set: ref.name}))
				case ref.tagged:
					c.Rules = append(c.Rules, accept(model.TaggedAddrInSet{Family: fam, Field: field, Tag: ref.tag, Set: ref.name}))
				default:
					c.Rules = append(c.Rules, accept(model.AddrInSet{Family: fam, Field: field, Set: ref.name}))
				}
			}
		case peer.IPBlock != nil:
			rs, err := blockRanges(peer.IPBlock.CIDR, peer.IPBlock.Except)
			if err != nil {
				return nil, fmt.Errorf("rule %q: %w", ru.ID, err)
			}
			if len(rs) > 0 {
				i := 0
				if rs[0].from.Is6() {
					i = 1
				}
				blocks[i] = append(blocks[i], rs...)
			}
			if blockAt < 0 {
				blockAt = len(c.Rules)
			}
		default:
			return nil, fmt.Errorf("rule %q: a peer sets neither addressGroup nor ipBlock", ru.ID)
		}
	}
	var blockRules []*model.Rule
	for i, fam := range []model.Family{model.IPv4, model.IPv6} {
		rs := normalizeRanges(blocks[i])
		if len(rs) == 0 {
			continue
		}
		kind, suffix := model.SetIPv4Interval, "-net4"
		if fam == model.IPv6 {
			kind, suffix = model.SetIPv6Interval, "-net6"
		}
		s := &model.Set{Name: name + suffix, Kind: kind}
		for _, rg := range rs {
			s.Elements = append(s.Elements, model.Element{Key: rg.from.AsSlice(), KeyEnd: rg.to.AsSlice()})
		}
		m.sets = append(m.sets, s)
		blockRules = append(blockRules, accept(model.AddrInSet{Family: fam, Field: field, Set: s.Name}))
	}
	if blockAt >= 0 {
		c.Rules = slices.Insert(c.Rules, blockAt, blockRules...)
	}
	return m, nil
}

// groupSet renders the v4 and v6 sets of an address group (once) and returns
// their names. A family with no member gets no set and an empty name, and the
// rule chains referencing the group get no rule line for it: a group with no
// member at all matches nothing. This keeps the number of sets down: the
// kernel finds sets by name in a list, so building a table costs the square
// of its sets (see docs/benchmarks.md), and in a single-stack cluster every
// group would otherwise add an empty set. The price is that a membership
// change that gives a family its first member, or removes its last, adds or
// removes that set and its rule lines; the Programmer's delta carries them in
// the same transaction as the elements (a set is created before the rules
// that reference it and deleted after them). Other membership changes only
// change elements.
func (r *renderer) groupSet(name string) (groupRefs, error) {
	if refs, ok := r.groupSets[name]; ok {
		return refs, nil
	}
	g := r.groups[name]
	tag, tagged := r.tags[name]
	m := r.memo.group(name, g, tag, tagged)
	if m == nil {
		var err error
		if m, err = r.buildGroupSets(name, g, tag, tagged); err != nil {
			return groupRefs{}, err
		}
		if r.memo != nil {
			m.spec = copyGroup(g)
			r.memo.groups[name] = m
		}
	}
	for _, s := range m.sets {
		r.sets[s.Name] = s
	}
	for i := range m.tagged {
		if len(m.tagged[i]) > 0 {
			k := shard(m.tag)
			r.tagged[i][k] = append(r.tagged[i][k], m)
		}
	}
	refs := groupRefs{names: m.names, named: g.NamedPort != nil}
	r.groupSets[name] = refs
	return refs, nil
}

// groupRefs is how the rules of one render match a group.
type groupRefs struct {
	names [2]setRef
	// named reports a named-port group, whose sets hold endpoints.
	named bool
}

// group returns the remembered sets of a group whose spec is unchanged.
func (m *Renderer) group(name string, g v1alpha1.AddressGroupSpec, tag uint32, tagged bool) *groupMemo {
	if m == nil {
		return nil
	}
	if gm := m.groups[name]; gm != nil && equalGroup(&gm.spec, &g) && gm.tag == tag && gm.hasTag == tagged {
		return gm
	}
	return nil
}

// buildGroupSets renders the sets of an address group.
func (r *renderer) buildGroupSets(name string, g v1alpha1.AddressGroupSpec, tag uint32, tagged bool) (*groupMemo, error) {
	m := &groupMemo{tag: tag, hasTag: tagged}
	var names [2]setRef
	if g.NamedPort != nil {
		proto, err := protoNumber(g.NamedPort.Protocol)
		if err != nil {
			return nil, fmt.Errorf("address group %q: %w", name, err)
		}
		v4 := &model.Set{Name: endpointSetName(model.IPv4, name), Kind: model.SetEndpointIPv4}
		v6 := &model.Set{Name: endpointSetName(model.IPv6, name), Kind: model.SetEndpointIPv6}
		seen := map[string]bool{}
		for _, ep := range g.Endpoints {
			a, err := netip.ParseAddr(ep.IP)
			if err != nil {
				return nil, fmt.Errorf("address group %q: endpoint IP %q: %w", name, ep.IP, err)
			}
			if ep.Port < 1 || ep.Port > 65535 {
				return nil, fmt.Errorf("address group %q: endpoint %s port %d out of range", name, ep.IP, ep.Port)
			}
			a = a.Unmap()
			key := append(a.AsSlice(), concatField(proto, uint16(ep.Port))...)
			if seen[string(key)] {
				continue
			}
			seen[string(key)] = true
			s := v4
			if a.Is6() {
				s = v6
			}
			s.Elements = append(s.Elements, model.Element{Key: key})
		}
		for i, s := range []*model.Set{v4, v6} {
			if len(s.Elements) > 0 {
				sortElements(s)
				m.sets = append(m.sets, s)
				names[i] = setRef{name: s.Name}
			}
		}
	} else {
		// hosts is scratch space the renderer keeps for the next group:
		// the addresses are copied out of it.
		hosts := r.hosts
		if cap(hosts[0]) < len(g.Addresses) {
			hosts[0] = make([]netip.Addr, 0, len(g.Addresses))
		}
		var prefixes [2][]netip.Prefix
		for _, s := range g.Addresses {
			p, err := parsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("address group %q: address %q: %w", name, s, err)
			}
			i := 0
			if p.Addr().Is6() {
				i = 1
			}
			if p.IsSingleIP() {
				hosts[i] = append(hosts[i], p.Addr())
			} else {
				prefixes[i] = append(prefixes[i], p)
			}
		}
		var interval [2]bool
		var nets [2][]ipRange
		for i := range nets {
			if len(prefixes[i]) == 0 {
				continue
			}
			// A family with a CIDR is an interval set of ranges.
			interval[i] = true
			nets[i] = make([]ipRange, 0, len(hosts[i])+len(prefixes[i]))
			for _, a := range hosts[i] {
				nets[i] = append(nets[i], ipRange{from: a, to: a})
			}
			for _, p := range prefixes[i] {
				nets[i] = append(nets[i], prefixRange(p))
			}
		}
		for i, fam := range []model.Family{model.IPv4, model.IPv6} {
			if len(hosts[i]) == 0 && len(prefixes[i]) == 0 {
				continue
			}
			if tagged && !interval[i] {
				// tag . address in the shared set, sorted by address.
				slices.SortFunc(hosts[i], netip.Addr.Compare)
				hosts[i] = slices.Compact(hosts[i])
				n := taggedKeyLen(i)
				keys := make([]byte, n*len(hosts[i]))
				for j, a := range hosts[i] {
					key := keys[j*n : (j+1)*n]
					binary.NativeEndian.PutUint32(key, tag)
					if a.Is4() {
						b := a.As4()
						copy(key[4:], b[:])
					} else {
						b := a.As16()
						copy(key[4:], b[:])
					}
				}
				m.tagged[i] = keys
				names[i] = setRef{name: SharedSetName(fam, tag), tag: tag, tagged: true}
				continue
			}
			s := &model.Set{Name: GroupSetName(fam, interval[i], name)}
			switch {
			case interval[i]:
				s.Kind = model.SetIPv4Interval
				if fam == model.IPv6 {
					s.Kind = model.SetIPv6Interval
				}
				for _, rg := range normalizeRanges(nets[i]) {
					s.Elements = append(s.Elements, model.Element{Key: rg.from.AsSlice(), KeyEnd: rg.to.AsSlice()})
				}
			default:
				s.Kind = model.SetIPv4
				if fam == model.IPv6 {
					s.Kind = model.SetIPv6
				}
				slices.SortFunc(hosts[i], netip.Addr.Compare)
				for _, a := range slices.Compact(hosts[i]) {
					s.Elements = append(s.Elements, model.Element{Key: a.AsSlice()})
				}
			}
			sortElements(s)
			m.sets = append(m.sets, s)
			names[i] = setRef{name: s.Name}
		}
		r.hosts = [2][]netip.Addr{hosts[0][:0], hosts[1][:0]}
	}
	m.names = names
	return m, nil
}

// shards is the number of shared sets per family. A group's shard is the
// top bits of its tag: a membership change rebuilds and compares the
// elements of one shard, a sixteenth of them, while the sets stay few.
const shards = 16

func shard(tag uint32) int { return int(tag >> 28) }

// SharedSetName names the shared set of a family holding a tag: ag4.0 to
// ag4.f, ag6.0 to ag6.f. (A group's own sets are ag4-<group>.)
func SharedSetName(f model.Family, tag uint32) string {
	switch f {
	case model.IPv4:
		return sharedSetNames[0][shard(tag)]
	case model.IPv6:
		return sharedSetNames[1][shard(tag)]
	}
	return fmt.Sprintf("ag%d.%x", f, shard(tag))
}

// sharedSetNames holds the names of the shared sets, made once.
var sharedSetNames = func() (names [2][shards]string) {
	for k := range shards {
		names[0][k] = fmt.Sprintf("ag%d.%x", model.IPv4, k)
		names[1][k] = fmt.Sprintf("ag%d.%x", model.IPv6, k)
	}
	return names
}()

// GroupTag is the tag of a group in the shared sets: a hash of its name,
// so that it is the same on every render, node and agent version.
func GroupTag(name string) uint32 {
	h := uint32(2166136261) // FNV-1a
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	return h
}

// assignTags gives every address group (not named-port groups) its tag,
// in name order. The shards of a group share the group's tag (see
// v1alpha1.LogicalAddressGroup): their members are disjoint and rules
// reference them together, so a rule needs one line for all of them. A
// group whose tag another group took first gets none, and sets of its own.
func assignTags(groups map[string]v1alpha1.AddressGroupSpec, together map[string]bool) map[string]uint32 {
	names := make([]string, 0, len(groups))
	for name, g := range groups {
		if g.NamedPort == nil {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	tags := make(map[string]uint32, len(names))
	owner := make(map[uint32]string, len(names))
	for _, name := range names {
		logical := v1alpha1.LogicalAddressGroup(name)
		if !together[logical] {
			logical = name
		}
		t := GroupTag(logical)
		if o, taken := owner[t]; !taken {
			owner[t] = logical
		} else if o != logical {
			continue
		}
		tags[name] = t
	}
	return tags
}

// sharedSets builds the shared sets from the groups rendered into them:
// the groups' elements in tag order, which keeps each set sorted. A set of
// the last render is reused when its groups hold the same members.
func (r *renderer) sharedSets() {
	for i, fam := range []model.Family{model.IPv4, model.IPv6} {
		for k := range shards {
			r.sharedSet(i, fam, k)
		}
	}
}

// shardsTogether returns the groups split into shards whose shards every
// rule references all together (as the controller writes them): only those
// may share a tag, since a rule matching the tag matches every shard.
func shardsTogether(rules []v1alpha1.Rule) map[string]bool {
	refs := map[string]string{} // group -> the shards a rule references, joined
	apart := map[string]bool{}
	for i := range rules {
		var byGroup map[string][]string
		for _, p := range rules[i].Peers {
			if g := v1alpha1.LogicalAddressGroup(p.AddressGroup); g != p.AddressGroup {
				if byGroup == nil {
					byGroup = map[string][]string{}
				}
				byGroup[g] = append(byGroup[g], p.AddressGroup)
			}
		}
		for g, shards := range byGroup {
			slices.Sort(shards)
			key := strings.Join(slices.Compact(shards), ",")
			if prev, ok := refs[g]; ok && prev != key {
				apart[g] = true
			}
			refs[g] = key
		}
	}
	out := make(map[string]bool, len(refs))
	for g := range refs {
		if !apart[g] {
			out[g] = true
		}
	}
	return out
}

// MergeSorted merges element lists sorted by key into one sorted list
// without duplicates, with a heap of the lists' heads (n log k).
func MergeSorted(runs [][]model.Element) []model.Element {
	n := 0
	var heap [][]model.Element
	for _, run := range runs {
		n += len(run)
		if len(run) > 0 {
			heap = append(heap, run)
		}
	}
	less := func(a, b int) bool { return bytes.Compare(heap[a][0].Key, heap[b][0].Key) < 0 }
	down := func(i int) {
		for {
			l, small := 2*i+1, i
			if l < len(heap) && less(l, small) {
				small = l
			}
			if l+1 < len(heap) && less(l+1, small) {
				small = l + 1
			}
			if small == i {
				return
			}
			heap[i], heap[small] = heap[small], heap[i]
			i = small
		}
	}
	for i := len(heap)/2 - 1; i >= 0; i-- {
		down(i)
	}
	out := make([]model.Element, 0, n)
	for len(heap) > 0 {
		// Shards are disjoint, but a rule set may say otherwise: a member
		// of two goes in once.
		if e := heap[0][0]; len(out) == 0 || !bytes.Equal(out[len(out)-1].Key, e.Key) {
			out = append(out, e)
		}
		if heap[0] = heap[0][1:]; len(heap[0]) == 0 {
			heap[0] = heap[len(heap)-1]
			heap = heap[:len(heap)-1]
		}
		down(0)
	}
	return out
}

// appendKeys appends an element for each key of length n in keys.
func appendKeys(es []model.Element, keys []byte, n int) []model.Element {
	for j := 0; j+n <= len(keys); j += n {
		es = append(es, model.Element{Key: keys[j : j+n : j+n]})
	}
	return es
}

// sharedSet builds shard k of a family's shared sets.
func (r *renderer) sharedSet(i int, fam model.Family, k int) {
	parts := r.tagged[i][k]
	if len(parts) == 0 {
		if r.memo != nil {
			r.memo.shared[i][k] = sharedMemo{}
		}
		return
	}
	// Keys start with the tag in host byte order (as nft prints a mark).
	slices.SortFunc(parts, func(a, b *groupMemo) int { return cmp.Compare(tagOrder(a.tag), tagOrder(b.tag)) })
	if r.memo != nil {
		prev := r.memo.shared[i][k]
		if prev.set != nil && slices.EqualFunc(prev.parts, parts, func(a, b *groupMemo) bool {
			// A group rendered anew may hold the same members of this
			// family.
			return a == b || (a.tag == b.tag && bytes.Equal(a.tagged[i], b.tagged[i]))
		}) {
			r.sets[prev.set.Name] = prev.set
			// Remember the groups as they are now.
			r.memo.shared[i][k].parts = parts
			return
		}
	}
	kind := model.SetTaggedIPv4
	if fam == model.IPv6 {
		kind = model.SetTaggedIPv6
	}
	kl := taggedKeyLen(i)
	n := 0
	for _, m := range parts {
		n += len(m.tagged[i]) / kl
	}
	s := &model.Set{Name: SharedSetName(fam, parts[0].tag), Kind: kind, Elements: make([]model.Element, 0, n)}
	for j := 0; j < len(parts); {
		// The shards of a group share its tag: their members interleave.
		end := j + 1
		for end < len(parts) && parts[end].tag == parts[j].tag {
			end++
		}
		if end == j+1 {
			s.Elements = appendKeys(s.Elements, parts[j].tagged[i], kl)
		} else {
			runs := make([][]model.Element, 0, end-j)
			for _, m := range parts[j:end] {
				runs = append(runs, appendKeys(nil, m.tagged[i], kl))
			}
			s.Elements = append(s.Elements, MergeSorted(runs)...)
		}
		j = end
	}
	r.sets[s.Name] = s
	if r.memo != nil {
		r.memo.shared[i][k] = sharedMemo{parts: parts, set: s}
	}
}

// tagOrder orders tags as the keys that start with them: by their bytes in
// host byte order.
func tagOrder(tag uint32) uint32 {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], tag)
	return binary.BigEndian.Uint32(b[:])
}

// acceptVerdict ends the lines of rule chains.
var acceptVerdict model.Stmt = model.Verdict{Kind: model.VerdictAccept}

// ruleStmts is a rule allocated with room for its statements.
type ruleStmts struct {
	rule  model.Rule
	stmts [3]model.Stmt
}

// portMatch returns the statements matching a rule's ports: none for every
// port, one inline match for one protocol/port (range), or a lookup in the
// rule's port set, which it returns too. merged are the rule's port spans
// (ruleSpans), which are empty for a rule with ports only when they are
// invalid.
func (r *renderer) portMatch(chain string, ru *v1alpha1.Rule, merged []portSpan) ([]model.Stmt, *model.Set, error) {
	if len(merged) == 0 {
		if len(ru.Ports) == 0 {
			return nil, nil, nil
		}
		_, err := portSpans(ru)
		return nil, nil, err
	}
	if len(merged) == 1 {
		// Rules share the few ports there are: so do their matches.
		s := merged[0]
		if m, ok := r.portStmts[s]; ok {
			return m, nil, nil
		}
		m := []model.Stmt{model.DportIn{Proto: s.proto, From: s.from, To: s.to}}
		if s.from == 0 && s.to == 65535 {
			m = []model.Stmt{model.ProtoIs{Proto: s.proto}}
		}
		if r.portStmts == nil {
			r.portStmts = map[portSpan][]model.Stmt{}
		}
		r.portStmts[s] = m
		return m, nil, nil
	}
	set := &model.Set{Name: chain + "-ports", Kind: model.SetPorts, Elements: make([]model.Element, len(merged))}
	keys := make([]byte, 16*len(merged))
	for i, s := range merged {
		k := keys[16*i : 16*i+16 : 16*i+16]
		putConcatField(k[:8], s.proto, s.from)
		putConcatField(k[8:], s.proto, s.to)
		set.Elements[i] = model.Element{Key: k[:8:8], KeyEnd: k[8:]}
	}
	return []model.Stmt{model.PortsInSet{Set: set.Name}}, set, nil
}

// portSpan is a protocol and a range of destination ports.
type portSpan struct {
	proto    uint8
	from, to uint16
}

// portSpans returns a rule's ports as sorted, merged spans; none when the
// rule allows every protocol and port.
func portSpans(ru *v1alpha1.Rule) ([]portSpan, error) {
	if len(ru.Ports) == 0 {
		return nil, nil
	}
	type span = portSpan
	spans := make([]span, 0, len(ru.Ports))
	for _, p := range ru.Ports {
		proto, err := protoNumber(p.Protocol)
		if err != nil {
			return nil, fmt.Errorf("rule %q: %w", ru.ID, err)
		}
		if p.Port < 0 || p.Port > 65535 || p.EndPort < 0 || p.EndPort > 65535 {
			return nil, fmt.Errorf("rule %q: port %d-%d out of range", ru.ID, p.Port, p.EndPort)
		}
		s := span{proto, uint16(p.Port), uint16(p.Port)}
		switch {
		case p.Port == 0 && p.EndPort != 0:
			return nil, fmt.Errorf("rule %q: endPort %d without a port", ru.ID, p.EndPort)
		case p.Port == 0:
			s.to = 65535
		case p.EndPort != 0:
			if p.EndPort < p.Port {
				return nil, fmt.Errorf("rule %q: endPort %d is below port %d", ru.ID, p.EndPort, p.Port)
			}
			s.to = uint16(p.EndPort)
		}
		spans = append(spans, s)
	}
	slices.SortFunc(spans, func(a, b span) int {
		return cmp.Or(cmp.Compare(a.proto, b.proto), cmp.Compare(a.from, b.from), cmp.Compare(a.to, b.to))
	})
	merged := spans[:1] // in place: a span is read before it is written
	for _, s := range spans[1:] {
		last := &merged[len(merged)-1]
		if s.proto == last.proto && uint32(s.from) <= uint32(last.to)+1 {
			last.to = max(last.to, s.to)
			continue
		}
		merged = append(merged, s)
	}
	return merged, nil
}

// concatField encodes protocol . port as the kernel lays them out in a
// concatenation: each field padded to 4 bytes, the port in network order.
func concatField(proto uint8, port uint16) []byte {
	b := make([]byte, 8)
	putConcatField(b, proto, port)
	return b
}

// putConcatField writes protocol . port (concatField) into b, 8 bytes long.
func putConcatField(b []byte, proto uint8, port uint16) {
	b[0] = proto
	b[1], b[2], b[3] = 0, 0, 0
	binary.BigEndian.PutUint16(b[4:], port)
	b[6], b[7] = 0, 0
}

func protoNumber(p v1alpha1.Protocol) (uint8, error) {
	switch p {
	case v1alpha1.ProtocolTCP, "":
		return model.ProtoTCP, nil
	case v1alpha1.ProtocolUDP:
		return model.ProtoUDP, nil
	case v1alpha1.ProtocolSCTP:
		return model.ProtoSCTP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q", p)
}
