package render

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// Defaults for the zero fields of Options.
const (
	DefaultLogGroup uint16 = 100
	DefaultLogRate  uint32 = 10
	DefaultLogBurst uint32 = 20
)

// Options tune what Render produces. Zero fields take the defaults above.
type Options struct {
	// LogGroup is the NFLOG group of the drop and audit log rules.
	LogGroup uint16
	// LogRate is how many packets a second each isolated pod direction may
	// log; the rest are dropped (or let through, in Audit mode) unlogged.
	LogRate uint32
	// LogBurst is the burst of the log rate limit, in packets.
	LogBurst uint32
	// RevokedMark is the conntrack mark bit (or bits) of revoked
	// connections: the base chains drop the packets of a connection whose
	// mark has it, before they accept established traffic. The agent sets
	// it on the entries of connections a changed table denies. 0: no such
	// rule, established connections go on.
	RevokedMark uint32
	// PodInterfaces, when not nil, are the host side of the node's pod
	// interfaces (the CNI plugin reports them): they go into the set
	// podifs, and egress-input drops the router advertisements (134) and
	// redirects (137) that arrive on them. Nil: no such set or rules (the
	// agent runs without the plugin and does not know them).
	PodInterfaces []string
	// Identities renders every isolated pod direction in the identity
	// layout (see flat.go), where a new connection walks the same few
	// rules however many policies select the pod, instead of a rule chain
	// per rule and port dispatch. Each change of a peer's identity then
	// costs the kernel a validation of every identity of the node (along
	// the base chains that look identities up).
	Identities bool
	// IdentityMin, when Identities is false and IdentityMin is not 0,
	// renders in the identity layout the isolated pod directions that
	// reference at least IdentityMin rules, and a rule chain per rule for
	// the others. A new connection then walks fewer than about
	// 2×IdentityMin rules whatever the policies selecting its pod, and
	// the kernel validates the identities of the peers of the pods that
	// need them only.
	IdentityMin int
}

// DefaultIdentityMin is the agent's IdentityMin: a pod direction with 15
// rules walks at most 36 rules by rule chains; one with more is flat.
const DefaultIdentityMin = 16

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
//     with (when Options.RevokedMark is set) "ct mark and <mark> !=
//     0x00000000 drop", the packets of revoked connections, then: ct
//     state established,related accept; egress-input then, with
//     Options.PodInterfaces, drops router advertisements and redirects
//     arriving on a pod interface ("icmpv6 type 134-134 iifname @podifs
//     drop"), and accepts the neighbour discovery a pod sends its node
//     (types 133, 135 and 136 with hop limit 255). Output is not hooked: traffic from the
//     node to its pods is never filtered, and its replies are established.
//   - When the node's pod ranges are known (spec.podCIDRs), the base
//     chains then drop traffic from (egress chains) or to (ingress chain)
//     an address in them that is not ready: "ip saddr @podnets4 ip saddr
//     != @ready4 drop". The ready sets hold the addresses of the spec's
//     pods, so a pod whose sandbox has an address before the agent has
//     programmed it is dropped, not passed (fail closed).
//   - Dispatch by verdict maps keyed by local pod IP: in4/in6 on daddr,
//     eg4/eg6 on saddr, to one chain per isolated pod direction
//     (in-<namespace>.<name>, eg-...). A pod that is not isolated in a
//     direction has no chain and no map element for it.
//   - An Enforce pod chain first drops "ct state invalid" (only the
//     traffic of isolated pods; the base chains leave it alone).
//   - A pod chain then accepts the pod's traffic to itself (through a
//     Service, hairpin: "ip saddr <its address> accept" in its ingress
//     chain, daddr in its egress chain), then jumps to the chain of each
//     rule it references
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
	r.infos = infos
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
	idChains, err := r.identities()
	if err != nil {
		return nil, err
	}
	chains = append(chains, idChains...)
	slices.SortFunc(chains, func(a, b *model.Chain) int { return cmp.Compare(a.Name, b.Name) })

	r.sharedSets()
	ranges, err := r.podRanges(spec)
	if err != nil {
		return nil, err
	}
	if err := r.podInterfaces(); err != nil {
		return nil, err
	}
	var identities [2]bool
	for dir := range identities {
		identities[dir] = r.sets[identityMaps[dir][0]] != nil
	}
	base := baseChains(ranges, r.opts.RevokedMark, r.opts.PodInterfaces != nil, identities)
	r.nbase = len(base)
	t := &model.Table{Chains: append(base, chains...)}
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
	// ready collects, per family, the addresses of the pods rendered.
	ready [2][]netip.Addr
	// vmapOwners records map/address pairs already dispatched.
	vmapOwners map[string]bool
	// text is a scratch buffer for the text of rules being identified;
	// hosts holds a group's single addresses, per family, while its sets
	// are built.
	text  []byte
	hosts [2][]netip.Addr
	// portStmts holds the match of each single port span rendered.
	portStmts map[portSpan][]model.Stmt
	// flat lists the pod directions rendered in the identity layout, and
	// dirsFP their part of each direction's flatFingerprint, once known.
	flat   []flatDir
	dirsFP [2][]byte
	// infos holds the rules of the rule set, in its order (rules points
	// into it), and nbase is the number of base chains of the table.
	infos []ruleInfo
	nbase int
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
	// For the identity layout, once flatDone: whether the rule can be
	// flat, and the names of its peer sets.
	flatDone     bool
	flatEligible bool
	peerSets     []string
}
