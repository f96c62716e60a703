package compiler

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"net/netip"
	"slices"
	"weak"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// groupDef is a pod peer selector: the definition of an AddressGroup.
type groupDef struct {
	name      string
	peerKey   string                // "g:" + name, the group's key in rule hashes
	namespace string                // fixed namespace; "" when nsSpec is set
	nsSpec    *metav1.LabelSelector // canonical; nil when the namespace is fixed
	podSpec   *metav1.LabelSelector // canonical; nil: every pod
	nsSel     labels.Selector       // nil when the namespace is fixed
	podSel    labels.Selector       // nil: every pod
	namedPort *v1alpha1.NamedPort   // set for an endpoint group
	// blocks, set for a group made from a rule's ipBlocks (see blockGroup),
	// are its fixed entries: the CIDRs the blocks cover, sorted, with the
	// prefix length in the entry key's port. No pod is a member.
	blocks []groupEntry
}

// groupKey is hashed into a group's name.
type groupKey struct {
	Namespace         string                `json:"ns,omitempty"`
	NamespaceSelector *metav1.LabelSelector `json:"nss,omitempty"`
	PodSelector       *metav1.LabelSelector `json:"pod,omitempty"`
	NamedPort         *v1alpha1.NamedPort   `json:"port,omitempty"`
}

// group returns the group of the pods matching podSel (nil or {}: all) in
// namespace ns, or, when nsSel is set, in the namespaces it matches; with a
// named port, only the pods declaring it. Equal selectors give one group.
func (ix *index) group(ns string, nsSel, podSel *metav1.LabelSelector, port *v1alpha1.NamedPort) *groupDef {
	ix.buf = appendGroupKeyJSON(ix.buf[:0], ns, nsSel, podSel, port)
	sum := sha256.Sum256(ix.buf)
	id := [8]byte(sum[:8])
	if g, ok := ix.groups[id]; ok {
		return g
	}
	k := groupKey{Namespace: ns, NamespaceSelector: canonicalSelector(nsSel), PodSelector: canonicalSelector(podSel), NamedPort: port}
	if k.NamespaceSelector != nil {
		k.Namespace = ""
	}
	if emptySelector(k.PodSelector) {
		k.PodSelector = nil
	}
	name := "ag-" + hex.EncodeToString(id[:])
	g := &groupDef{name: name, peerKey: "g:" + name, namespace: k.Namespace, nsSpec: k.NamespaceSelector, podSpec: k.PodSelector}
	if port != nil {
		p := *port
		g.namedPort = &p
	}
	if g.nsSpec != nil {
		g.nsSel = ix.selector(g.nsSpec)
	}
	if g.podSpec != nil {
		g.podSel = ix.selector(g.podSpec)
	}
	ix.groups[id] = g
	return g
}

// blockGroup returns the group of a rule's IP blocks (canonical, sorted by
// key, at least one): its entries are the CIDRs the blocks cover. Equal
// blocks give one group while it is in use (the templates of a
// DefaultDeny for every namespace share it). Unlike selector groups, the
// index holds block groups weakly: their entries go with the last template
// using them, so that a tenant editing a long list of blocks does not leave
// every version of it behind.
func (ix *index) blockGroup(blocks []peer) *groupDef {
	b := append(ix.buf[:0], "blocks\x00"...)
	for _, p := range blocks {
		b = append(b, p.key...)
		b = append(b, 0)
	}
	ix.buf = b
	sum := sha256.Sum256(b)
	id := [8]byte(sum[:8])
	if g := ix.blockGroups[id].Value(); g != nil {
		return g
	}
	if ix.blockGroups == nil {
		ix.blockGroups = map[[8]byte]weak.Pointer[groupDef]{}
	}
	// Forget the groups no template uses any more, now and then.
	if len(ix.blockGroups) >= 2*ix.liveBlockGroups+64 {
		maps.DeleteFunc(ix.blockGroups, func(_ [8]byte, w weak.Pointer[groupDef]) bool { return w.Value() == nil })
		ix.liveBlockGroups = len(ix.blockGroups)
	}
	var entries []groupEntry
	for _, p := range blocks {
		for _, c := range blockPrefixes(p.block) {
			entries = append(entries, groupEntry{key: entryKey{addr: c.Addr(), port: int32(c.Bits())}, str: c.String()})
		}
	}
	slices.SortFunc(entries, func(a, b groupEntry) int { return compareEntryKeys(a.key, b.key) })
	entries = slices.CompactFunc(entries, func(a, b groupEntry) bool { return a.key == b.key })
	name := "ag-" + hex.EncodeToString(id[:])
	g := &groupDef{name: name, peerKey: "g:" + name, blocks: entries}
	ix.blockGroups[id] = weak.Make(g)
	return g
}

// blockPrefixes returns the CIDRs that cover a canonical block: its CIDR
// minus its except CIDRs, as the fewest prefixes.
func blockPrefixes(b *v1alpha1.IPBlock) []netip.Prefix {
	p := netip.MustParsePrefix(b.CIDR)
	except := make([]netip.Prefix, len(b.Except))
	for i, e := range b.Except {
		except[i] = netip.MustParsePrefix(e)
	}
	var out []netip.Prefix
	var walk func(p netip.Prefix)
	walk = func(p netip.Prefix) {
		split := false
		for _, e := range except {
			switch {
			case e.Bits() <= p.Bits() && e.Contains(p.Addr()):
				return // p is excepted
			case e.Bits() > p.Bits() && p.Contains(e.Addr()):
				split = true
			}
		}
		if !split {
			out = append(out, p)
			return
		}
		lo, hi := halves(p)
		walk(lo)
		walk(hi)
	}
	walk(p)
	return out
}

// halves splits a prefix that is not a single address into its two halves.
func halves(p netip.Prefix) (netip.Prefix, netip.Prefix) {
	bits := p.Bits() + 1
	lo := netip.PrefixFrom(p.Addr(), bits)
	b := p.Addr().AsSlice()
	i := p.Bits() / 8
	b[i] |= 0x80 >> (p.Bits() % 8)
	a, _ := netip.AddrFromSlice(b)
	return lo, netip.PrefixFrom(a, bits)
}

// matchesNamespace reports whether the group can hold pods of namespace ns
// whose labels are nsLabels.
func (g *groupDef) matchesNamespace(ns string, nsLabels labels.Set) bool {
	if g.nsSel == nil {
		return ns == g.namespace
	}
	return g.nsSel.Matches(nsLabels)
}

// matchesPod reports whether a pod of a matching namespace is a member.
func (g *groupDef) matchesPod(p *podInfo) bool {
	if g.podSel != nil && !g.podSel.Matches(p.labels) {
		return false
	}
	if g.namedPort != nil {
		_, ok := p.namedPort(g.namedPort.Name, g.namedPort.Protocol)
		return ok
	}
	return true
}

func (g *groupDef) matches(ix *index, p *podInfo) bool {
	return g.matchesNamespace(p.key.ns, ix.nsLabels(p.key.ns)) && g.matchesPod(p)
}

// candidateNamespaces returns the namespaces with pods whose pods the group
// can hold.
func (ix *index) candidateNamespaces(g *groupDef) []string {
	if g.nsSel == nil {
		return []string{g.namespace}
	}
	if names, ok := pinnedNamespaces(g); ok {
		var out []string
		for _, ns := range names {
			if _, ok := ix.podsByNs[ns]; ok && g.nsSel.Matches(ix.nsLabels(ns)) {
				out = append(out, ns)
			}
		}
		return out
	}
	ix.buf = appendCanonicalSelectorJSON(ix.buf[:0], g.nsSpec)
	if out, ok := ix.nsMatches[string(ix.buf)]; ok {
		return out
	}
	key := string(ix.buf)
	out := []string{}
	for _, ns := range ix.namespacesWithPods() {
		if g.nsSel.Matches(ns.labels) {
			out = append(out, ns.name)
		}
	}
	ix.nsMatches[key] = out
	return out
}

// pinnedNamespaces returns, for a group with a namespace selector that
// requires the namespace name label to have one of a list of values, those
// names: the group can hold pods of these namespaces only. Selecting
// namespaces by name is common.
func pinnedNamespaces(g *groupDef) ([]string, bool) {
	if g.nsSpec == nil {
		return nil, false
	}
	if v, ok := g.nsSpec.MatchLabels[corev1.LabelMetadataName]; ok {
		return []string{v}, true
	}
	for _, e := range g.nsSpec.MatchExpressions {
		if e.Key == corev1.LabelMetadataName && e.Operator == metav1.LabelSelectorOpIn {
			return e.Values, true
		}
	}
	return nil, false
}

// groupEntry is an entry a member gives a group, with its address in text.
type groupEntry struct {
	key entryKey
	str string // key.addr.String()
}

// groupEntries returns the group's distinct entries among every eligible
// pod, sorted, in the index's scratch space: the caller must call
// releaseEntries when done with them.
func (ix *index) groupEntries(g *groupDef) []groupEntry {
	entries := ix.entries[:0]
	if g.blocks != nil {
		ix.entries = append(entries, g.blocks...)
		return ix.entries
	}
	var port int32
	for _, ns := range ix.candidateNamespaces(g) {
		for _, p := range ix.podsByNs[ns] {
			if g.podSel != nil && !g.podSel.Matches(p.labels) {
				continue
			}
			if g.namedPort != nil {
				n, ok := p.namedPort(g.namedPort.Name, g.namedPort.Protocol)
				if !ok {
					continue
				}
				port = n
			}
			for i, a := range p.ips {
				entries = append(entries, groupEntry{entryKey{a, port}, p.ipStrs[i]})
			}
		}
	}
	slices.SortFunc(entries, func(a, b groupEntry) int { return compareEntryKeys(a.key, b.key) })
	entries = slices.CompactFunc(entries, func(a, b groupEntry) bool { return a.key == b.key })
	ix.entries = entries
	return entries
}

// releaseEntries drops the strings groupEntries left in the scratch space.
func (ix *index) releaseEntries() {
	clear(ix.entries) // slices.CompactFunc zeroed the ones past the end
	ix.entries = ix.entries[:0]
}

// groupShards renders the group from its members among every eligible pod,
// as 1<<level shards: see chooseLevel for the level, given the level prev
// of the group's previous output (hasPrev false: none).
func (ix *index) groupShards(g *groupDef, prev int, hasPrev bool, max int) (int, []*v1alpha1.AddressGroupSpec) {
	entries := ix.groupEntries(g)
	defer ix.releaseEntries()
	var h []uint64
	hashes := func() []uint64 {
		if h == nil {
			h = slices.Grow(ix.hashes[:0], len(entries))
			for _, e := range entries {
				h = append(h, entryHash(e.key))
			}
			ix.hashes = h
		}
		return h
	}
	level := chooseLevel(prev, hasPrev, len(entries), hashes, max)
	if level > 0 {
		hashes()
	}
	return level, buildShards(g, entries, h, level)
}

// buildShards puts each entry in its shard: the low level bits of its hash
// (hashes is unused at level 0).
func buildShards(g *groupDef, entries []groupEntry, hashes []uint64, level int) []*v1alpha1.AddressGroupSpec {
	n := 1 << level
	var sizes []int
	mask := uint64(n - 1)
	if level == 0 {
		sizes = []int{len(entries)}
	} else {
		sizes = make([]int, n)
		for _, h := range hashes {
			sizes[h&mask]++
		}
	}
	shards := make([]*v1alpha1.AddressGroupSpec, n)
	specs := make([]v1alpha1.AddressGroupSpec, n)
	for i := range shards {
		// The definition's parts are never modified: share them.
		s := &specs[i]
		*s = v1alpha1.AddressGroupSpec{
			Namespace:         g.namespace,
			NamespaceSelector: g.nsSpec,
			PodSelector:       g.podSpec,
			NamedPort:         g.namedPort,
			FromIPBlocks:      g.blocks != nil,
		}
		if sizes[i] > 0 {
			if g.namedPort == nil {
				s.Addresses = make([]string, 0, sizes[i])
			} else {
				s.Endpoints = make([]v1alpha1.Endpoint, 0, sizes[i])
			}
		}
		shards[i] = s
	}
	for i, e := range entries {
		s := shards[0]
		if level > 0 {
			s = shards[hashes[i]&mask]
		}
		if g.namedPort == nil {
			s.Addresses = append(s.Addresses, e.str)
		} else {
			s.Endpoints = append(s.Endpoints, v1alpha1.Endpoint{IP: e.str, Port: e.key.port})
		}
	}
	return shards
}
