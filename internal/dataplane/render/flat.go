package render

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// The identity layout (Options.Identities) keeps the rules a new connection
// walks flat however many policies select its pod. Every address the
// node's flat pod directions allow by peer gets an identity: the set of
// peer sets that hold it, where a peer set is an address group or the
// ipBlocks of one rule. Maps give each address its identity: id4/id6 hold
// single addresses (hash maps), idn4/idn6 the ranges of CIDR groups and
// ipBlocks, cut into disjoint segments (interval maps). A single address
// inside a range is in both maps, each with the peer sets holding it
// there, and is allowed what either identity is. Each
// flat pod direction then has one interval set of identity . protocol .
// port (<dir>i-<namespace>.<name>), the union over its rules of the peers
// and ports they allow, and, when a rule with peers allows every port, a set
// of identities (<dir>a-...). Its chain looks the packet's peer address up
// once per map and family:
//
//	ip saddr map @id4 . meta l4proto . th dport @ini-shop.web accept
//	ip saddr map @idn4 . meta l4proto . th dport @ini-shop.web accept
//
// An address no peer set holds has no identity, so those lines never
// match it. Rules without peers (any address) are a set of ports
// (<dir>o-...) or, with no ports either, an accept. Rules whose peers
// include a named-port group stay rule chains, jumped to as before: their
// port resolves on each destination pod.
//
// Identities are named by a hash of their peer sets (FNV-1a of the sorted
// names), so that a membership change that moves an address to an identity
// another address has already is one element of a map; a new identity adds
// its elements to the sets of the pod directions that allow it.
//
// Pod directions with fewer than DispatchMin rules keep the rule chains:
// they walk at most that many.

// Names of the identity maps.
const (
	MapIdentity4         = "id4"
	MapIdentity6         = "id6"
	MapIdentityInterval4 = "idn4"
	MapIdentityInterval6 = "idn6"
)

// flatDir is a pod direction rendered in the identity layout: the names of
// its sets and the rules whose peers its identity sets hold.
type flatDir struct {
	ports, all, open string
	rules            []*ruleInfo
}

// isFlat reports whether a pod direction uses the identity layout.
func (r *renderer) isFlat(iso *v1alpha1.Isolation) bool {
	if !r.opts.Identities || iso == nil || len(iso.Rules) < DispatchMin {
		return false
	}
	n := 0
	for i, id := range iso.Rules {
		if !slices.Contains(iso.Rules[:i], id) {
			n++
		}
	}
	return n >= DispatchMin
}

// flatEligible reports whether the identity sets can hold a rule's peers:
// every peer is an ipBlock or a group of addresses (not of named-port
// endpoints).
func (r *renderer) flatEligible(ru *v1alpha1.Rule) bool {
	for _, p := range ru.Peers {
		if p.AddressGroup != "" && (p.IPBlock != nil || r.groups[p.AddressGroup].NamedPort != nil) {
			return false
		}
		if p.AddressGroup == "" && p.IPBlock == nil {
			return false
		}
	}
	return true
}

// flatRules returns the chain lines of a flat pod direction whose peer
// address is field, and the jumps to its rules that stay rule chains.
func (r *renderer) flatRules(dir flatDir, ids []string, field model.AddrField) ([]*model.Rule, []string, error) {
	var out []*model.Rule
	var jumps []string
	var open []portSpan
	openAll, anyPeersAll, anyPorts := false, false, false
	for _, id := range ids {
		ri := r.rules[id]
		if ri == nil || !r.flatEligible(ri.rule) {
			// An unknown rule is reported by podChains.
			jumps = append(jumps, id)
			continue
		}
		ru := ri.rule
		spans := r.spansOf(id, ri)
		if len(spans) == 0 && len(ru.Ports) > 0 {
			if _, err := portSpans(ru); err != nil {
				return nil, nil, err
			}
		}
		switch {
		case len(ru.Peers) == 0 && len(spans) == 0:
			openAll = true
		case len(ru.Peers) == 0:
			open = append(open, spans...)
		case len(spans) == 0:
			anyPeersAll = true
		default:
			anyPorts = true
		}
	}
	accept := model.Verdict{Kind: model.VerdictAccept}
	if openAll {
		out = append(out, model.NewRule(accept))
	} else if len(open) > 0 {
		out = append(out, model.NewRule(model.PortsInSet{Set: dir.open}, accept))
	}
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		maps := []string{MapIdentity4, MapIdentityInterval4}
		if fam == model.IPv6 {
			maps = []string{MapIdentity6, MapIdentityInterval6}
		}
		for _, m := range maps {
			if anyPorts {
				out = append(out, model.NewRule(model.IdentityInSet{Family: fam, Field: field, Map: m, Ports: true, Set: dir.ports}, accept))
			}
			if anyPeersAll {
				out = append(out, model.NewRule(model.IdentityInSet{Family: fam, Field: field, Map: m, Set: dir.all}, accept))
			}
		}
	}
	return out, jumps, nil
}

// peerSet is one peer set of the identity layout: its name (g/ plus a
// group's, b/ plus a rule's id for its ipBlocks), its single addresses and
// its ranges.
type peerSet struct {
	name   string
	hosts  []netip.Addr
	ranges []ipRange
}

// identities renders the identity maps and the sets of the flat pod
// directions.
func (r *renderer) identities() error {
	if len(r.flat) == 0 {
		return nil
	}
	// The peer sets the flat directions reference, and for each the rules
	// that reference it.
	sets := map[string]*peerSet{}
	for _, d := range r.flat {
		for _, ri := range d.rules {
			for _, name := range r.peerSetNames(ri.rule) {
				if sets[name] != nil {
					continue
				}
				ps, err := r.buildPeerSet(name, ri.rule)
				if err != nil {
					return err
				}
				sets[name] = ps
			}
		}
	}
	names := make([]string, 0, len(sets))
	for n := range sets {
		names = append(names, n)
	}
	slices.Sort(names)

	// Identities: per family, each single address with the peer sets
	// holding it as a single address, and each segment of the ranges with
	// those holding it as a range. An address can be both: the chain looks
	// it up in both maps, and what it is allowed is the union.
	idx := newIdentities()
	type hostRef struct {
		addr netip.Addr
		set  int32
	}
	var hostElems, rangeElems [2][]model.Element
	total := 0
	for _, ps := range sets {
		total += len(ps.hosts)
	}
	for i := range 2 {
		refs := make([]hostRef, 0, total)
		var cuts []boundary
		for j, n := range names {
			ps := sets[n]
			for _, a := range ps.hosts {
				if a.Is4() == (i == 0) {
					refs = append(refs, hostRef{a, int32(j)})
				}
			}
			for _, rg := range ps.ranges {
				if rg.from.Is4() == (i == 0) {
					cuts = append(cuts, boundary{at: rg.from, set: n}, boundary{at: rg.to, set: n, end: true})
				}
			}
		}
		for _, sg := range segments(cuts) {
			rangeElems[i] = append(rangeElems[i], model.Element{Key: sg.from.AsSlice(), KeyEnd: sg.to.AsSlice(), Data: idx.of(sg.sets).data})
		}
		slices.SortFunc(refs, func(a, b hostRef) int { return cmp.Or(a.addr.Compare(b.addr), cmp.Compare(a.set, b.set)) })
		n := 4
		if i == 1 {
			n = 16
		}
		keys := make([]byte, 0, n*len(refs))
		hostElems[i] = make([]model.Element, 0, len(refs))
		var in []string
		for j := 0; j < len(refs); {
			a := refs[j].addr
			k := j + 1
			for k < len(refs) && refs[k].addr == a {
				k++
			}
			var id *identity
			if k == j+1 {
				id = idx.single(names[refs[j].set])
			} else {
				in = in[:0]
				for _, ref := range refs[j:k] {
					if n := names[ref.set]; !slices.Contains(in, n) {
						in = append(in, n)
					}
				}
				id = idx.of(in)
			}
			at := len(keys)
			keys = append(keys, a.AsSlice()...)
			hostElems[i] = append(hostElems[i], model.Element{Key: keys[at : at+n : at+n], Data: id.data})
			j = k
		}
	}
	idx.number()

	for i, kinds := range [][2]model.SetKind{{model.MapIPv4Identity, model.MapIPv4IdentityInterval}, {model.MapIPv6Identity, model.MapIPv6IdentityInterval}} {
		hm := &model.Set{Name: MapIdentity4, Kind: kinds[0], Elements: hostElems[i]}
		im := &model.Set{Name: MapIdentityInterval4, Kind: kinds[1], Elements: rangeElems[i]}
		if i == 1 {
			hm.Name, im.Name = MapIdentity6, MapIdentityInterval6
		}
		sortElements(hm)
		sortElements(im)
		r.sets[hm.Name], r.sets[im.Name] = hm, im
	}

	// Which identities hold each peer set.
	holding := map[string][]*identity{}
	for _, id := range idx.order {
		for _, n := range id.sets {
			holding[n] = append(holding[n], id)
		}
	}
	for _, d := range r.flat {
		r.flatSets(d, holding)
	}
	return nil
}

// identity is a set of peer sets and its number.
type identity struct {
	key  string   // the names of its peer sets, sorted, one per line
	sets []string // the same names
	// data is the number as map elements hold it, shared by them; it is
	// filled in by number, once every identity is known.
	data []byte
}

// identities interns the identities of one render.
type identities struct {
	byKey   map[string]*identity
	singles map[string]*identity
	order   []*identity
}

func newIdentities() *identities {
	return &identities{byKey: map[string]*identity{}, singles: map[string]*identity{}}
}

// single returns the identity of one peer set.
func (x *identities) single(name string) *identity {
	if id := x.singles[name]; id != nil {
		return id
	}
	id := x.of([]string{name})
	x.singles[name] = id
	return id
}

// of returns the identity of peer sets (names, without duplicates).
func (x *identities) of(names []string) *identity {
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	key := strings.Join(sorted, "\n")
	if id := x.byKey[key]; id != nil {
		return id
	}
	id := &identity{key: key, sets: sorted, data: make([]byte, 4)}
	x.byKey[key] = id
	x.order = append(x.order, id)
	return id
}

// number gives every identity its number, a hash of its key (FNV-1a, 32
// bits, never 0); of two with the same hash, the first by key keeps it.
func (x *identities) number() {
	slices.SortFunc(x.order, func(a, b *identity) int { return cmp.Compare(a.key, b.key) })
	used := make(map[uint32]bool, len(x.order))
	for _, id := range x.order {
		n := identityHash(id.key)
		for used[n] || n == 0 {
			n++
		}
		used[n] = true
		copy(id.data, model.IdentityData(n))
	}
}

// flatSets renders the sets of one flat pod direction.
func (r *renderer) flatSets(d flatDir, holding map[string][]*identity) {
	allowed := map[*identity][]portSpan{}
	all := map[*identity]bool{}
	var open []portSpan
	openSet, portsSet, allSet := false, false, false
	for _, ri := range d.rules {
		spans := r.spansOf(ri.rule.ID, ri)
		if len(ri.rule.Peers) == 0 {
			open = append(open, spans...)
			openSet = openSet || len(spans) > 0
			continue
		}
		if len(spans) == 0 {
			allSet = true
		} else {
			portsSet = true
		}
		for _, n := range r.peerSetNames(ri.rule) {
			for _, k := range holding[n] {
				if len(spans) == 0 {
					all[k] = true
				} else {
					allowed[k] = append(allowed[k], spans...)
				}
			}
		}
	}
	if openSet {
		s := &model.Set{Name: d.open, Kind: model.SetPorts}
		for _, sp := range mergeSpans(open) {
			k := make([]byte, 16)
			putConcatField(k[:8], sp.proto, sp.from)
			putConcatField(k[8:], sp.proto, sp.to)
			s.Elements = append(s.Elements, model.Element{Key: k[:8:8], KeyEnd: k[8:]})
		}
		sortElements(s)
		r.sets[s.Name] = s
	}
	if portsSet {
		r.identityPorts(d.ports, allowed, all)
	}
	if allSet {
		s := &model.Set{Name: d.all, Kind: model.SetIdentities}
		for id := range all {
			s.Elements = append(s.Elements, model.Element{Key: id.data})
		}
		sortElements(s)
		r.sets[s.Name] = s
	}
}

// identityPorts renders a flat pod direction's set of identity . protocol
// . port: the ports allowed to each identity that is not allowed every
// port.
func (r *renderer) identityPorts(name string, allowed map[*identity][]portSpan, all map[*identity]bool) {
	ports := &model.Set{Name: name, Kind: model.SetIdentityPorts}
	for ident, spans := range allowed {
		if all[ident] {
			continue // every port already
		}
		id := ident.data
		for _, sp := range mergeSpans(spans) {
			key := make([]byte, 24)
			copy(key, id)
			putConcatField(key[4:12], sp.proto, sp.from)
			copy(key[12:], id)
			putConcatField(key[16:], sp.proto, sp.to)
			ports.Elements = append(ports.Elements, model.Element{Key: key[:12:12], KeyEnd: key[12:]})
		}
	}
	sortElements(ports)
	r.sets[ports.Name] = ports
}

// peerSetNames returns the names of a rule's peer sets.
func (r *renderer) peerSetNames(ru *v1alpha1.Rule) []string {
	var out []string
	blocks := false
	for _, p := range ru.Peers {
		switch {
		case p.AddressGroup != "":
			if n := "g/" + p.AddressGroup; !slices.Contains(out, n) {
				out = append(out, n)
			}
		case p.IPBlock != nil:
			blocks = true
		}
	}
	if blocks {
		out = append(out, "b/"+ru.ID)
	}
	return out
}

// buildPeerSet collects the addresses of a peer set named by peerSetNames
// (ru is a rule referencing it).
func (r *renderer) buildPeerSet(name string, ru *v1alpha1.Rule) (*peerSet, error) {
	ps := &peerSet{name: name}
	if group, ok := strings.CutPrefix(name, "g/"); ok {
		for _, s := range r.groups[group].Addresses {
			p, err := parsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("address group %q: address %q: %w", group, s, err)
			}
			if p.IsSingleIP() {
				ps.hosts = append(ps.hosts, p.Addr())
			} else {
				ps.ranges = append(ps.ranges, prefixRange(p))
			}
		}
		ps.ranges = normalizeFamilies(ps.ranges)
		return ps, nil
	}
	for _, p := range ru.Peers {
		if p.IPBlock == nil {
			continue
		}
		rs, err := blockRanges(p.IPBlock.CIDR, p.IPBlock.Except)
		if err != nil {
			return nil, fmt.Errorf("rule %q: %w", ru.ID, err)
		}
		ps.ranges = append(ps.ranges, rs...)
	}
	ps.ranges = normalizeFamilies(ps.ranges)
	return ps, nil
}

// normalizeFamilies normalises ranges of both families.
func normalizeFamilies(rs []ipRange) []ipRange {
	var fams [2][]ipRange
	for _, rg := range rs {
		i := 0
		if rg.from.Is6() {
			i = 1
		}
		fams[i] = append(fams[i], rg)
	}
	return append(normalizeRanges(fams[0]), normalizeRanges(fams[1])...)
}

// boundary is the start or (inclusive) end of a peer set's range.
type boundary struct {
	at  netip.Addr
	set string
	end bool
}

// segment is a range of addresses held by the same peer sets.
type segment struct {
	from, to netip.Addr
	sets     []string
}

// segments cuts the ranges of one family into disjoint segments, each with
// the peer sets holding it (sorted), merging neighbours held by the same
// sets. The ranges of one peer set are disjoint and do not touch.
func segments(cuts []boundary) []segment {
	if len(cuts) == 0 {
		return nil
	}
	// Starts sort before ends at one address: a range of one address
	// opens and closes there.
	slices.SortFunc(cuts, func(a, b boundary) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		if a.end != b.end {
			if a.end {
				return 1
			}
			return -1
		}
		return cmp.Compare(a.set, b.set)
	})
	var out []segment
	var open []string
	var from netip.Addr // start of the segment being built, when open is not empty
	emit := func(to netip.Addr) {
		if len(open) == 0 || to.Less(from) {
			return
		}
		sets := slices.Clone(open)
		slices.Sort(sets)
		if n := len(out); n > 0 && out[n-1].to.Next() == from && slices.Equal(out[n-1].sets, sets) {
			out[n-1].to = to
			return
		}
		out = append(out, segment{from: from, to: to, sets: sets})
	}
	for i := 0; i < len(cuts); {
		at := cuts[i].at
		// Starts at this address: what was open ends just before it.
		if !cuts[i].end {
			if len(open) > 0 && from.Less(at) {
				emit(at.Prev())
			}
			for ; i < len(cuts) && cuts[i].at == at && !cuts[i].end; i++ {
				open = append(open, cuts[i].set)
			}
			from = at
		}
		// Ends at this address: what is open runs to it.
		if i < len(cuts) && cuts[i].at == at && cuts[i].end {
			emit(at)
			for ; i < len(cuts) && cuts[i].at == at && cuts[i].end; i++ {
				if j := slices.Index(open, cuts[i].set); j >= 0 {
					open = slices.Delete(open, j, j+1)
				}
			}
			if next := at.Next(); next.IsValid() {
				from = next
			}
		}
	}
	return out
}

// mergeSpans returns port spans sorted, those that overlap or touch merged.
func mergeSpans(spans []portSpan) []portSpan {
	if len(spans) == 0 {
		return nil
	}
	return mergeInPlace(slices.Clone(spans))
}

// mergeInPlace sorts port spans and merges those that overlap or touch, in
// place (a span is read before it is written); spans is not empty.
func mergeInPlace(spans []portSpan) []portSpan {
	slices.SortFunc(spans, func(a, b portSpan) int {
		return cmp.Or(cmp.Compare(a.proto, b.proto), cmp.Compare(a.from, b.from), cmp.Compare(a.to, b.to))
	})
	out := spans[:1]
	for _, s := range spans[1:] {
		last := &out[len(out)-1]
		if s.proto == last.proto && uint32(s.from) <= uint32(last.to)+1 {
			last.to = max(last.to, s.to)
			continue
		}
		out = append(out, s)
	}
	return out
}

// identityHash is the identity number of a key (FNV-1a, 32 bits).
func identityHash(key string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(key))
	return h.Sum32()
}

// identitySetNames returns the names of a flat pod direction's sets.
func identitySetNames(dir, namespace, name string) (ports, all, open string) {
	return objName(dir+"i-", namespace+"."+name, 0), objName(dir+"a-", namespace+"."+name, 0), objName(dir+"o-", namespace+"."+name, 0)
}
