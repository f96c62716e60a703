package render

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

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
