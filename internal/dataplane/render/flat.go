package render

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"
	"weak"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// The identity layout (Options.Identities) keeps the rules a new connection
// walks flat however many policies select its pod, as Cilium's policy maps
// do. For each direction, every address that the node's flat pod
// directions allow by peer gets an identity: the set of the peer sets that
// hold it, where a peer set is an address group or the ipBlocks of one
// rule. Identities are numbered by a hash of their peer sets' names.
//
// Verdict maps send each peer address to its identity's chain: idi4/idi6
// (ingress, by source) and ide4/ide6 (egress, by destination) hold single
// addresses, idni4/idni6 and idne4/idne6 the ranges of CIDR groups and
// ipBlocks, cut into disjoint segments (interval maps). A single address
// inside a range is in both maps, each with the peer sets holding it there,
// and is allowed what either identity is. The base chains look the first
// packet's peer up once per map, before they dispatch to the pod chains
// (identityLookups):
//
//	ct state new ip saddr vmap @idi4
//	ct state new ip saddr vmap @idni4
//
// and an identity's chain (idi-<number>, ide-<number>) accepts what any
// pod allows it, with the identity as a tag before the local pod's address
// in sets the whole node shares: idpi4/idpi6 (tag . pod address . protocol
// . port ranges) and idai4/idai6 (tag . pod address, every port):
//
//	0x1a2b3c4d . ip daddr . meta l4proto . th dport @idpi4 accept
//
// An address no peer set holds is in no map, so it reaches no identity
// chain. Rules without peers (any address) are a set of ports of the pod
// direction (<dir>o-<namespace>.<name>) or, with no ports either, an
// accept. Rules whose peers include a named-port group stay rule chains,
// jumped to as before: their port resolves on each destination pod.
//
// nft lists every rule of the layout. (A map lookup of the identity into a
// concatenation, "ip saddr map @id4 . th dport @set", is one rule fewer per
// packet, but nft 1.0.6 aborts listing it.)
//
// A membership change that moves an address to an identity another address
// has already is one element of a map; a new identity adds its chain and
// the elements of the pods that allow it. The kernel, though, validates
// every jump of the maps, along the base chains that look them up, when a
// change that adds one commits, which is what keeps the layout opt-in
// (docs/dataplane.md).
//
// Without Options.Identities, pods have the rule chains and port dispatch
// of the older layout (pods.go).

// Names of the identity layout's maps and sets, by direction (ingress,
// egress) and family.
var (
	identityMaps      = [2][2]string{{"idi4", "idi6"}, {"ide4", "ide6"}}
	identityRangeMaps = [2][2]string{{"idni4", "idni6"}, {"idne4", "idne6"}}
	identityPortSets  = [2][2]string{{"idpi4", "idpi6"}, {"idpe4", "idpe6"}}
	identityAllSets   = [2][2]string{{"idai4", "idai6"}, {"idae4", "idae6"}}
	identityChain     = [2]string{"idi-", "ide-"}
)

// MapIdentity4 is the map of the ingress identities of single IPv4
// addresses.
const MapIdentity4 = "idi4"

// flatDir is a pod direction rendered in the identity layout: its
// direction (0 ingress, 1 egress), the pod's addresses, and the rules
// whose peers its identities hold.
type flatDir struct {
	dir   int
	addrs []netip.Addr
	rules []*ruleInfo
}

// isFlat reports whether a pod direction uses the identity layout: every
// isolated direction does with Options.Identities, and those referencing
// at least Options.IdentityMin rules otherwise.
func (r *renderer) isFlat(iso *v1alpha1.Isolation) bool {
	switch {
	case iso == nil:
		return false
	case r.opts.Identities:
		return true
	case r.opts.IdentityMin <= 0 || len(iso.Rules) < r.opts.IdentityMin:
		return false
	}
	// Counted once each, as the pod's chain walks them.
	seen := make(map[string]bool, len(iso.Rules))
	for _, id := range iso.Rules {
		seen[id] = true
	}
	return len(seen) >= r.opts.IdentityMin
}

// flatShape describes what the lines of a pod's flat directions depend on
// besides the pod and its rules' ports: whether each rule exists, can be
// flat and has peers.
func (r *renderer) flatShape(pod *v1alpha1.LocalPod) []byte {
	var out []byte
	for _, iso := range []*v1alpha1.Isolation{pod.Ingress, pod.Egress} {
		if iso == nil {
			continue
		}
		for _, id := range iso.Rules {
			ri := r.rules[id]
			switch {
			case ri == nil:
				out = append(out, 0)
			case !r.flatEligible(ri):
				out = append(out, 1)
			case len(ri.rule.Peers) == 0:
				out = append(out, 2)
			default:
				out = append(out, 3)
			}
		}
		out = append(out, '|')
	}
	return out
}

// flatEligible reports whether identities can hold a rule's peers: every
// peer is an ipBlock or a group of addresses (not of named-port
// endpoints).
func (r *renderer) flatEligible(ri *ruleInfo) bool {
	r.flatInfo(ri)
	return ri.flatEligible
}

// flatInfo fills in a rule's flat fields, once per render.
func (r *renderer) flatInfo(ri *ruleInfo) {
	if ri.flatDone {
		return
	}
	ri.flatDone = true
	ri.flatEligible = true
	for _, p := range ri.rule.Peers {
		switch {
		case p.AddressGroup != "" && p.IPBlock != nil, p.AddressGroup == "" && p.IPBlock == nil:
			ri.flatEligible = false // invalid, reported by the rule chain
		case p.AddressGroup != "" && r.groups[p.AddressGroup].NamedPort != nil:
			ri.flatEligible = false // endpoints: ports resolve per pod
		}
	}
	ri.peerSets = r.peerSetNames(ri.rule)
}

// flatRules returns the lines of a flat pod direction's chain, the set
// (named openName) of the ports its rules without peers open to any
// address when a line uses one, and the rules that stay rule chains
// (jumped to after the lines).
func (r *renderer) flatRules(openName string, ids []string) ([]*model.Rule, *model.Set, []string, error) {
	var out []*model.Rule
	var jumps []string
	var open []portSpan
	openAll := false
	for _, id := range ids {
		ri := r.rules[id]
		if ri == nil || !r.flatEligible(ri) {
			// An unknown rule is reported by podChains.
			jumps = append(jumps, id)
			continue
		}
		ru := ri.rule
		spans := r.spansOf(id, ri)
		if err := portsError(ru, spans); err != nil {
			return nil, nil, nil, err
		}
		switch {
		case len(ru.Peers) > 0:
			// Reached by the base chains' identity lookups.
		case len(spans) == 0:
			openAll = true
		default:
			open = append(open, spans...)
		}
	}
	var set *model.Set
	switch {
	case openAll:
		out = append(out, model.NewRule(acceptVerdict))
	case len(open) > 0:
		set = portsSet(openName, mergeSpans(open))
		out = append(out, model.NewRule(model.PortsInSet{Set: openName}, acceptVerdict))
	}
	return out, set, jumps, nil
}

// identityLookups returns the base chain lines that send the first packet
// of a connection to the chain of its peer's identity, for direction dir
// (0 ingress: by source; 1 egress: by destination). They are in the base
// chains, not in each pod chain, so that the kernel, which validates
// every jump of a map along every path to it, follows one path per chain;
// ct state new leaves what conntrack calls invalid to the pod chain's
// drop.
func identityLookups(dir int) []*model.Rule {
	field := model.Saddr
	if dir == 1 {
		field = model.Daddr
	}
	var out []*model.Rule
	for i, fam := range []model.Family{model.IPv4, model.IPv6} {
		for _, m := range []string{identityMaps[dir][i], identityRangeMaps[dir][i]} {
			out = append(out, model.NewRule(model.CtState{Bits: model.CtNew}, model.AddrVmap{Family: fam, Field: field, Vmap: m}))
		}
	}
	return out
}

// identities renders the identity layout's maps, chains and sets. It
// returns the identity chains.
func (r *renderer) identities() ([]*model.Chain, error) {
	var chains []*model.Chain
	for dir := range 2 {
		dirs := r.flatDirs(dir)
		cs, err := r.directionIdentities(dir, dirs, nil)
		if err != nil {
			return nil, err
		}
		chains = append(chains, cs...)
	}
	return chains, nil
}

// flatDirs returns the flat pod directions of direction dir.
func (r *renderer) flatDirs(dir int) []*flatDir {
	var dirs []*flatDir
	for i := range r.flat {
		if d := &r.flat[i]; d.dir == dir {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// directionIdentities renders the identities of one direction. With only
// set, it renders them again for the flat directions of the last call,
// where the groups named in only changed (see idState.update).
func (r *renderer) directionIdentities(dir int, dirs []*flatDir, only []string) ([]*model.Chain, error) {
	peers := false
	for _, d := range dirs {
		for _, ri := range d.rules {
			peers = peers || len(ri.rule.Peers) > 0
		}
	}
	var st *idState
	if r.memo != nil {
		st = r.memo.ids[dir]
	}
	if !peers {
		if st != nil {
			r.memo.ids[dir] = nil
		}
		return nil, nil
	}
	if st == nil {
		st = newIDState(identityChain[dir])
		if r.memo != nil {
			r.memo.ids[dir] = st
		}
	}
	if err := st.update(r, dirs, only); err != nil {
		return nil, err
	}
	ids := st.idx.all()
	field := model.Daddr // the local pod's address
	if dir == 1 {
		field = model.Saddr
	}
	for i := range 2 {
		kinds := [2]model.SetKind{model.MapIPv4Verdict, model.MapIPv4VerdictInterval}
		if i == 1 {
			kinds = [2]model.SetKind{model.MapIPv6Verdict, model.MapIPv6VerdictInterval}
		}
		// The last render's maps when their elements are the same, which
		// spares the Programmer comparing them.
		hm, im := st.maps[i][0], st.maps[i][1]
		if hm == nil || !sameSlice(hm.Elements, st.elems[i]) {
			s := &model.Set{Name: identityMaps[dir][i], Kind: kinds[0], Elements: st.elems[i]}
			// Made from the last render's map: the Programmer takes
			// the change from here instead of comparing 100,000s of
			// elements.
			if mv := &st.moved[i]; hm != nil && len(mv.from) > 0 && sameSlice(hm.Elements, mv.from) {
				s.Delta = &model.SetDelta{Base: weak.Make(hm), Removed: mv.removed, Added: mv.added}
			}
			hm = s
		}
		if im == nil || !model.SameElements(im.Elements, st.segElems[i]) {
			im = &model.Set{Name: identityRangeMaps[dir][i], Kind: kinds[1], Elements: st.segElems[i]}
		}
		st.maps[i] = [2]*model.Set{hm, im}
		r.sets[hm.Name], r.sets[im.Name] = hm, im
	}
	// What the pods allow each identity depends on the flat directions
	// and the identities only: when neither changed, it is the last
	// render's.
	fp := r.flatFingerprint(dir, dirs, ids)
	if st.allowed != nil && fp == st.allowedFP {
		for _, s := range st.allowed {
			r.sets[s.Name] = s
		}
		return st.chains, nil
	}

	// What the pods allow each identity.
	holding := map[string][]*identity{}
	for _, id := range ids {
		id.ports, id.all = [2]bool{}, [2]bool{}
		for _, n := range id.sets {
			holding[n] = append(holding[n], id)
		}
	}
	var portSets, allSets [2]*model.Set
	for i := range 2 {
		kind, allKind := model.SetTaggedEndpointIPv4, model.SetTaggedIPv4
		if i == 1 {
			kind, allKind = model.SetTaggedEndpointIPv6, model.SetTaggedIPv6
		}
		portSets[i] = &model.Set{Name: identityPortSets[dir][i], Kind: kind}
		allSets[i] = &model.Set{Name: identityAllSets[dir][i], Kind: allKind}
	}
	for _, d := range dirs {
		r.allowIdentities(d, holding, &portSets, &allSets)
	}

	// The sets, and a chain per identity.
	var allowed []*model.Set
	for i := range 2 {
		for _, s := range []*model.Set{portSets[i], allSets[i]} {
			if len(s.Elements) > 0 {
				sortElements(s)
				r.sets[s.Name] = s
				allowed = append(allowed, s)
			}
		}
	}
	chains := make([]*model.Chain, 0, len(ids))
	for _, id := range ids {
		lines := [4]bool{id.ports[0], id.ports[1], id.all[0], id.all[1]}
		if id.chain == nil || id.chainLines != lines {
			c := &model.Chain{Name: id.jump.Chain}
			for i, fam := range []model.Family{model.IPv4, model.IPv6} {
				if id.ports[i] {
					c.Rules = append(c.Rules, model.NewRule(model.TaggedEndpointInSet{Family: fam, Field: field, Tag: id.number, Set: portSets[i].Name}, acceptVerdict))
				}
			}
			for i, fam := range []model.Family{model.IPv4, model.IPv6} {
				if id.all[i] {
					c.Rules = append(c.Rules, model.NewRule(model.TaggedAddrInSet{Family: fam, Field: field, Tag: id.number, Set: allSets[i].Name}, acceptVerdict))
				}
			}
			r.identify(c)
			if r.memo != nil {
				id.chain, id.chainLines = c, lines
			}
			chains = append(chains, c)
			continue
		}
		chains = append(chains, id.chain)
	}
	if r.memo != nil {
		st.allowed, st.allowedFP, st.chains = allowed, fp, chains
	}
	return chains, nil
}

// sameSlice reports whether two element lists are one: the same length
// and the same first element.
func sameSlice(a, b []model.Element) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// flatFingerprint describes what the sets of allowed identities are made
// from: the flat directions of direction dir (their pods' addresses, their
// rules' ids, ports and peer sets) and the identities (numbers, and the
// families of their members). The directions' part is worked out once per
// renderer.
func (r *renderer) flatFingerprint(dir int, dirs []*flatDir, ids []*identity) string {
	if r.dirsFP[dir] == nil {
		r.dirsFP[dir] = r.dirsFingerprint(dirs)
	}
	b := slices.Clip(r.dirsFP[dir])
	for _, id := range ids {
		b = binary.BigEndian.AppendUint32(b, id.number)
		for i := range 2 {
			if id.members(i) {
				b = append(b, byte(i))
			}
		}
	}
	return string(b)
}

// dirsFingerprint is flatFingerprint's part for the flat directions.
func (r *renderer) dirsFingerprint(dirs []*flatDir) []byte {
	b := []byte{}
	for _, d := range dirs {
		b = append(b, byte(d.dir))
		for _, a := range d.addrs {
			b = a.AppendTo(b)
			b = append(b, ',')
		}
		for _, ri := range d.rules {
			b = append(b, ri.rule.ID...)
			b = append(b, ':')
			for _, sp := range r.spansOf(ri.rule.ID, ri) {
				b = append(b, sp.proto, byte(sp.from>>8), byte(sp.from), byte(sp.to>>8), byte(sp.to))
			}
			for _, n := range ri.peerSets {
				b = append(b, n...)
				b = append(b, ',')
			}
			b = append(b, ';')
		}
		b = append(b, '|')
	}
	return b
}

// allowIdentities adds to the node's tagged sets what one flat pod
// direction allows each identity: for each of the pod's addresses, tag .
// address . ports, or tag . address for every port.
func (r *renderer) allowIdentities(d *flatDir, holding map[string][]*identity, portSets, allSets *[2]*model.Set) {
	allowed := map[*identity][]portSpan{}
	all := map[*identity]bool{}
	for _, ri := range d.rules {
		if len(ri.rule.Peers) == 0 {
			continue
		}
		spans := r.spansOf(ri.rule.ID, ri)
		for _, n := range ri.peerSets {
			for _, id := range holding[n] {
				if len(spans) == 0 {
					all[id] = true
				} else {
					allowed[id] = append(allowed[id], spans...)
				}
			}
		}
	}
	for _, a := range d.addrs {
		i, n := 0, 4
		if a.Is6() {
			i, n = 1, 16
		}
		addr := a.AsSlice()
		// An identity is reached from the maps of its members' families
		// only.
		for id := range all {
			if !id.members(i) {
				continue
			}
			key := binary.NativeEndian.AppendUint32(make([]byte, 0, 4+n), id.number)
			allSets[i].Elements = append(allSets[i].Elements, model.Element{Key: append(key, addr...)})
			id.all[i] = true
		}
		for id, spans := range allowed {
			if all[id] || !id.members(i) {
				continue // every port already, or never reached
			}
			for _, sp := range mergeSpans(spans) {
				k := make([]byte, 2*(12+n))
				end := k[12+n:]
				for _, half := range [][]byte{k[:12+n], end} {
					binary.NativeEndian.PutUint32(half, id.number)
					copy(half[4:], addr)
				}
				putConcatField(k[4+n:12+n], sp.proto, sp.from)
				putConcatField(end[4+n:], sp.proto, sp.to)
				portSets[i].Elements = append(portSets[i].Elements, model.Element{Key: k[: 12+n : 12+n], KeyEnd: end})
			}
			id.ports[i] = true
		}
	}
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

// openSetName names a flat pod direction's set of ports open to any peer.
func openSetName(dir, namespace, name string) string {
	return objName(dir+"o-", namespace+"."+name, 0)
}
