package render

import (
	"fmt"
	"slices"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// identify computes the ids of a remembered chain's rules now, so that the
// tables sharing it only ever read them.
func (r *renderer) identify(c *model.Chain) {
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
		r.identify(m.chain)
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
		return nil, nil, portsError(ru, merged)
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
	set := portsSet(chain+"-ports", merged)
	return []model.Stmt{model.PortsInSet{Set: set.Name}}, set, nil
}

// portsSet returns an interval set of protocol . port ranges holding
// spans (sorted and merged, as portSpans returns them).
func portsSet(name string, spans []portSpan) *model.Set {
	set := &model.Set{Name: name, Kind: model.SetPorts, Elements: make([]model.Element, len(spans))}
	keys := make([]byte, 16*len(spans))
	for i, s := range spans {
		k := keys[16*i : 16*i+16 : 16*i+16]
		putConcatField(k[:8], s.proto, s.from)
		putConcatField(k[8:], s.proto, s.to)
		set.Elements[i] = model.Element{Key: k[:8:8], KeyEnd: k[8:]}
	}
	return set
}

// portsError returns the error of a rule's ports when its spans are empty
// although it has ports (they are invalid), else nil.
func portsError(ru *v1alpha1.Rule, spans []portSpan) error {
	if len(spans) > 0 || len(ru.Ports) == 0 {
		return nil
	}
	_, err := portSpans(ru)
	return err
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
