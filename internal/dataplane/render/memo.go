package render

import (
	"maps"
	"net/netip"
	"slices"
	"sync"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// The Renderer remembers the inputs of what it rendered as copies and
// compares them by value with the fields rendering reads (and only those:
// a rule's policies, say, are not rendered).

func equalGroup(a, b *v1alpha1.AddressGroupSpec) bool {
	if (a.NamedPort == nil) != (b.NamedPort == nil) || (a.NamedPort != nil && *a.NamedPort != *b.NamedPort) {
		return false
	}
	return slices.Equal(a.Addresses, b.Addresses) && slices.Equal(a.Endpoints, b.Endpoints)
}

func copyGroup(g v1alpha1.AddressGroupSpec) v1alpha1.AddressGroupSpec {
	out := v1alpha1.AddressGroupSpec{Addresses: slices.Clone(g.Addresses), Endpoints: slices.Clone(g.Endpoints)}
	if g.NamedPort != nil {
		np := *g.NamedPort
		out.NamedPort = &np
	}
	return out
}

func equalRule(a, b *v1alpha1.Rule) bool {
	return a.ID == b.ID && a.Direction == b.Direction && slices.Equal(a.Ports, b.Ports) &&
		slices.EqualFunc(a.Peers, b.Peers, equalPeer)
}

func equalPeer(a, b v1alpha1.Peer) bool {
	if a.AddressGroup != b.AddressGroup || (a.IPBlock == nil) != (b.IPBlock == nil) {
		return false
	}
	return a.IPBlock == nil || (a.IPBlock.CIDR == b.IPBlock.CIDR && slices.Equal(a.IPBlock.Except, b.IPBlock.Except))
}

func copyRule(r *v1alpha1.Rule) v1alpha1.Rule { return copyRulePorts(r, slices.Clone(r.Ports)) }

// copyRulePorts copies a rule, taking ports (a copy of its ports) as they are.
func copyRulePorts(r *v1alpha1.Rule, ports []v1alpha1.Port) v1alpha1.Rule {
	out := v1alpha1.Rule{ID: r.ID, Direction: r.Direction, Ports: ports, Peers: make([]v1alpha1.Peer, len(r.Peers))}
	for i, p := range r.Peers {
		out.Peers[i].AddressGroup = p.AddressGroup
		if p.IPBlock != nil {
			out.Peers[i].IPBlock = &v1alpha1.IPBlock{CIDR: p.IPBlock.CIDR, Except: slices.Clone(p.IPBlock.Except)}
		}
	}
	return out
}

func equalIsolation(a, b *v1alpha1.Isolation) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Mode == b.Mode && slices.Equal(a.Rules, b.Rules)
}

func equalPod(a, b *v1alpha1.LocalPod) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && slices.Equal(a.IPs, b.IPs) &&
		equalIsolation(a.Ingress, b.Ingress) && equalIsolation(a.Egress, b.Egress)
}

func copyIsolation(iso *v1alpha1.Isolation) *v1alpha1.Isolation {
	if iso == nil {
		return nil
	}
	return &v1alpha1.Isolation{Mode: iso.Mode, Rules: slices.Clone(iso.Rules)}
}

func copyPod(p v1alpha1.LocalPod) v1alpha1.LocalPod {
	return v1alpha1.LocalPod{Namespace: p.Namespace, Name: p.Name, IPs: slices.Clone(p.IPs),
		Ingress: copyIsolation(p.Ingress), Egress: copyIsolation(p.Egress)}
}

// Renderer renders rule sets like Render, reusing the chains and sets it
// rendered for earlier calls where their inputs did not change: an agent
// re-renders its node on every event, and most events change one pod or a
// few address groups. A rule's chain is reused while the rule and the set
// names of its groups are the same; a group's sets while its addresses or
// endpoints are the same (compared by value: callers may pass new or reused
// specs alike); a pod's chains while the pod is the same. What the last call
// did not use is forgotten. A rule set equal to the last one whose groups
// changed only in their members is rendered from the last render, without
// comparing its pods and rules again (renderMembers).
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
	// ids holds the identity layout's state, per direction.
	ids [2]*idState
	// last is the last render of all of a rule set, for renderMembers,
	// and members counts the renders renderMembers made.
	last    *lastRender
	members int
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

// SetPodInterfaces sets Options.PodInterfaces for the renders that follow.
func (m *Renderer) SetPodInterfaces(names []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if (names == nil) != (m.opts.PodInterfaces == nil) || !slices.Equal(names, m.opts.PodInterfaces) {
		m.last = nil // the table has other pod interfaces: render it all
	}
	m.opts.PodInterfaces = names
}

// Render renders the rule set as Render does.
func (m *Renderer) Render(spec v1alpha1.NodeRuleSetSpec, groups map[string]v1alpha1.AddressGroupSpec) (*model.Table, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t := m.renderMembers(&spec, groups); t != nil {
		return t, nil
	}
	m.last = nil
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
	m.remember(r, &spec, groups, t)
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
	// flat records, for ingress and egress, a direction in the identity
	// layout (its set of open ports is in maps), and flatShape what its
	// lines were rendered from (flatShape).
	flat      [2]bool
	flatShape []byte
}

// podChain is one isolated direction of a pod: its chain and the verdict
// maps its addresses go in.
type podChain struct {
	chain      *model.Chain
	map4, map6 string
}

// dir is the direction of the chain: 0 ingress, 1 egress.
func (pc podChain) dir() int {
	if pc.map4 == model.MapEgress4 {
		return 1
	}
	return 0
}

// spansMemo is a rule's port spans and the ports they came from, with the
// render that last used them.
type spansMemo struct {
	ports []v1alpha1.Port
	spans []portSpan
	gen   uint64
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
