package render

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// MergeBudget bounds the addresses and ranges the merged sets of a node
// hold in all: as many as its address groups hold, and at least
// MergeBudget. A group's members are copied into every merged set of a
// rule referencing it, so a node whose pods each merge many large groups
// would hold many copies of them (110 pods each selected by 90 policies of
// 100 peers: a million elements where the groups hold 100,000). Chains are
// merged in order of their rules, most first, while they fit; the others
// jump to their rules in turn, as below MergeMin.
var MergeBudget = 1 << 16

// MergeMin is how many rules a pod direction's port segment (or its rules
// for every port) needs before they are merged: their peers, groups and
// ipBlocks alike, go into one interval set per family, matched by one line,
// so that a new connection costs the same few rules however many policies
// select the pod. Fewer rules are walked in turn.
var MergeMin = 2

// merged is a chain that matches the union of the peers of several rules:
// a port segment's rules (reached by port dispatch, every packet already to
// one of their ports) or a pod direction's rules for every port. Named by
// its rules, like segment chains: pods with the same rules share it.
type merged struct {
	name  string
	ids   []string
	field model.AddrField
	// ported: the rules are a port segment's, and a rule that cannot be
	// merged is reached through its peer chain; otherwise through its rule
	// chain.
	ported bool
}

// mergedAnyName names the chain merging a pod direction's rules for every
// port.
func mergedAnyName(ids []string) string {
	sum := sha256.Sum256([]byte(strings.Join(ids, "\n")))
	return "any-" + hex.EncodeToString(sum[:8])
}

// mergedSetName names a merged chain's set of a family.
func mergedSetName(chain string, fam model.Family) string {
	if fam == model.IPv6 {
		return chain + "-6"
	}
	return chain + "-4"
}

// mergedMemo is a merged chain and its sets, with the inputs they came
// from: copies of the rules and the memos of the groups they reference
// (a group's memo is the same object while the group is unchanged).
type mergedMemo struct {
	rules  []v1alpha1.Rule
	groups []*groupMemo
	chain  *model.Chain
	sets   [2]*model.Set
	gen    uint64
}

// mergedChains builds the merged chains the pods use, those of the most
// rules first, each a merged chain while the budget lasts (mergedChain),
// else one that jumps to its rules (which are marked to be rendered).
func (r *renderer) mergedChains() ([]*model.Chain, error) {
	slices.SortFunc(r.toMerge, func(a, b merged) int {
		if c := len(b.ids) - len(a.ids); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	left := 0
	for _, g := range r.groups {
		left += len(g.Addresses) + len(g.Endpoints)
	}
	left = max(left, MergeBudget)
	out := make([]*model.Chain, 0, len(r.toMerge))
	for _, mg := range r.toMerge {
		if n, err := r.mergedBound(mg); err != nil {
			return nil, err
		} else if n <= left {
			c, err := r.mergedChain(mg)
			if err != nil {
				return nil, err
			}
			for _, ru := range c.Rules {
				if s, ok := ru.Stmts[0].(model.AddrInSet); ok {
					left -= len(r.sets[s.Set].Elements)
				}
			}
			out = append(out, c)
			continue
		}
		for _, id := range mg.ids {
			if mg.ported {
				r.rules[id].dispatched = true
			} else {
				r.rules[id].direct = true
			}
		}
		c := &model.Chain{Name: mg.name, Rules: r.appendJumps(make([]*model.Rule, 0, len(mg.ids)), mg.ids, mg.ported)}
		r.identify(c)
		out = append(out, c)
	}
	return out, nil
}

// mergedBound returns an upper bound of the elements of a merged chain's
// sets: its groups' members and its rules' ipBlocks.
func (r *renderer) mergedBound(mg merged) (int, error) {
	n := 0
	for _, id := range mg.ids {
		ru := r.rules[id].rule
		if len(ru.Peers) == 0 {
			n += 2
		}
		for _, peer := range ru.Peers {
			switch {
			case peer.AddressGroup != "":
				if _, err := r.groupSet(peer.AddressGroup); err != nil {
					return 0, err
				}
				gm := r.groupMemos[peer.AddressGroup]
				for i := range 2 {
					n += len(gm.tagged[i]) / taggedKeyLen(i)
				}
				for _, s := range gm.sets {
					n += len(s.Elements)
				}
			case peer.IPBlock != nil:
				n += 1 + len(peer.IPBlock.Except)
			}
		}
	}
	return n, nil
}

// mergedChain returns a merged chain, adds its sets, and marks the rules
// it still jumps to: those with a named-port group, whose peers are
// endpoints, not addresses.
func (r *renderer) mergedChain(mg merged) (*model.Chain, error) {
	var groups []*groupMemo
	var named []string
	for _, id := range mg.ids {
		ri := r.rules[id]
		for _, peer := range ri.rule.Peers {
			if peer.AddressGroup == "" {
				continue
			}
			refs, err := r.groupSet(peer.AddressGroup)
			if err != nil {
				return nil, err
			}
			if refs.named && !slices.Contains(named, id) {
				named = append(named, id)
			}
			groups = append(groups, r.groupMemos[peer.AddressGroup])
		}
	}
	for _, id := range named {
		if mg.ported {
			r.rules[id].dispatched = true
		} else {
			r.rules[id].direct = true
		}
	}
	if r.memo != nil {
		if m := r.memo.merged[mg.name]; m != nil && slices.Equal(m.groups, groups) && len(m.rules) == len(mg.ids) &&
			slices.EqualFunc(m.rules, mg.ids, func(ru v1alpha1.Rule, id string) bool { return equalRule(&ru, r.rules[id].rule) }) {
			m.gen = r.memo.gen
			for _, s := range m.sets {
				if s != nil {
					r.sets[s.Name] = s
				}
			}
			return m.chain, nil
		}
	}
	var rs [2][]ipRange
	for _, id := range mg.ids {
		ru := r.rules[id].rule
		if slices.Contains(named, id) {
			continue
		}
		if len(ru.Peers) == 0 {
			// From (or to) anywhere.
			rs[0] = append(rs[0], ipRange{from: netip.IPv4Unspecified(), to: netip.AddrFrom4([4]byte{255, 255, 255, 255})})
			rs[1] = append(rs[1], ipRange{from: netip.IPv6Unspecified(), to: netip.AddrFrom16([16]byte{0: 0xff, 1: 0xff, 2: 0xff, 3: 0xff,
				4: 0xff, 5: 0xff, 6: 0xff, 7: 0xff, 8: 0xff, 9: 0xff, 10: 0xff, 11: 0xff, 12: 0xff, 13: 0xff, 14: 0xff, 15: 0xff})})
			continue
		}
		for _, peer := range ru.Peers {
			switch {
			case peer.AddressGroup != "" && peer.IPBlock != nil:
				return nil, fmt.Errorf("rule %q: a peer sets both addressGroup and ipBlock", ru.ID)
			case peer.AddressGroup == "" && peer.IPBlock == nil:
				return nil, fmt.Errorf("rule %q: a peer sets neither addressGroup nor ipBlock", ru.ID)
			}
			if peer.AddressGroup != "" {
				gm := r.groupMemos[peer.AddressGroup]
				for i := range 2 {
					rs[i] = gm.appendRanges(rs[i], i)
				}
				continue
			}
			b, err := blockRanges(peer.IPBlock.CIDR, peer.IPBlock.Except)
			if err != nil {
				return nil, fmt.Errorf("rule %q: %w", ru.ID, err)
			}
			if len(b) > 0 {
				i := 0
				if b[0].from.Is6() {
					i = 1
				}
				rs[i] = append(rs[i], b...)
			}
		}
	}
	m := &mergedMemo{chain: &model.Chain{Name: mg.name}, groups: groups}
	for i, fam := range []model.Family{model.IPv4, model.IPv6} {
		kind := model.SetIPv4Interval
		if fam == model.IPv6 {
			kind = model.SetIPv6Interval
		}
		ranges := normalizeRanges(rs[i])
		if len(ranges) == 0 {
			// No peer of this family: no set, no line (as for groups).
			continue
		}
		s := &model.Set{Name: mergedSetName(mg.name, fam), Kind: kind}
		for _, rg := range ranges {
			s.Elements = append(s.Elements, model.Element{Key: rg.from.AsSlice(), KeyEnd: rg.to.AsSlice()})
		}
		m.sets[i] = s
		r.sets[s.Name] = s
		m.chain.Rules = append(m.chain.Rules, model.NewRule(model.AddrInSet{Family: fam, Field: mg.field, Set: s.Name}, acceptVerdict))
	}
	for _, id := range named {
		m.chain.Rules = append(m.chain.Rules, model.NewRule(r.jump(id, mg.ported)))
	}
	if r.memo != nil {
		r.identify(m.chain)
		m.rules = make([]v1alpha1.Rule, len(mg.ids))
		for i, id := range mg.ids {
			m.rules[i] = copyRule(r.rules[id].rule)
		}
		m.gen = r.memo.gen
		r.memo.merged[mg.name] = m
	}
	return m.chain, nil
}

// appendRanges appends the group's addresses of family i (0: IPv4) as
// ranges: its single addresses and its CIDRs.
func (gm *groupMemo) appendRanges(rs []ipRange, i int) []ipRange {
	if keys := gm.tagged[i]; len(keys) > 0 {
		n := taggedKeyLen(i)
		for j := 0; j+n <= len(keys); j += n {
			a, _ := netip.AddrFromSlice(keys[j+4 : j+n])
			rs = append(rs, ipRange{from: a, to: a})
		}
	}
	for _, s := range gm.sets {
		if (s.Kind == model.SetIPv6 || s.Kind == model.SetIPv6Interval) != (i == 1) {
			continue
		}
		if s.Kind != model.SetIPv4 && s.Kind != model.SetIPv6 && !s.Kind.IsRBTree() {
			continue
		}
		for _, e := range s.Elements {
			from, _ := netip.AddrFromSlice(e.Key)
			to := from
			if e.KeyEnd != nil {
				to, _ = netip.AddrFromSlice(e.KeyEnd)
			}
			rs = append(rs, ipRange{from: from, to: to})
		}
	}
	return rs
}
