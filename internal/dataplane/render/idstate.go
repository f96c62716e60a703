package render

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// idState is what the identity layout of one direction keeps from one
// render to the next: the peer sets as parsed, which peer sets hold each
// single address, the identities in use and the elements of the maps of
// single addresses. A Renderer keeps one per direction, so that a change
// of a group costs the addresses it moved (and one copy of the map's
// element list); a one-off Render starts from an empty one. Both number
// identities the same way (see update).
type idState struct {
	sets  map[string]*peerSetState
	idx   *identities
	hosts [2]map[[16]byte]*hostEntry // by netip.Addr.As16
	// elems are the elements of the maps of single addresses, sorted, as
	// the last render returned them (never modified: tables share them).
	elems [2][]model.Element
	// moved is how the last update changed elems, per family: the
	// element list it started from, and the elements it removed and
	// added (see model.SetDelta).
	moved [2]elemsMoved
	// segs are the identities of the last render's range segments, one
	// per segment, and segElems the interval maps' elements.
	segs     [2][]*identity
	segElems [2][]model.Element
	// maps are the last render's maps, per family: of single addresses,
	// of ranges.
	maps [2][2]*model.Set
	// allowed are the last render's sets of what pods allow identities,
	// made from what allowedFP describes (flatFingerprint), and chains
	// the identities' chains.
	allowed   []*model.Set
	allowedFP string
	chains    []*model.Chain
	// slab and names hold room for new entries.
	slab  []hostEntry
	names []string
}

func newIDState(chainPrefix string) *idState {
	st := &idState{sets: map[string]*peerSetState{}, idx: newIdentities(),
		hosts: [2]map[[16]byte]*hostEntry{{}, {}}}
	st.idx.prefix = chainPrefix
	return st
}

// peerSetState is a peer set as parsed, with what it was parsed from.
type peerSetState struct {
	group  *v1alpha1.AddressGroupSpec // a copy; nil for ipBlocks
	blocks []v1alpha1.Peer            // a copy of the rule's peers, for ipBlocks
	hosts  [2][]netip.Addr            // sorted, without duplicates
	ranges []ipRange
}

// hostChange is an address whose peer sets changed, and its entry.
type hostChange struct {
	addr  netip.Addr
	entry *hostEntry
}

// hostEntry is a single address: the peer sets holding it (sorted) and its
// identity.
type hostEntry struct {
	sets []string
	id   *identity
}

// current reports whether a remembered peer set is still what the rule
// set says.
func (p *peerSetState) current(r *renderer, name string, ru *v1alpha1.Rule) bool {
	if group, ok := strings.CutPrefix(name, "g/"); ok {
		g := r.groups[group]
		return p.group != nil && equalGroup(p.group, &g)
	}
	return p.group == nil && slices.EqualFunc(p.blocks, ru.Peers, equalPeer)
}

// newPeerSetState parses a peer set named by peerSetNames (ru is a rule
// referencing it): a group's addresses and CIDRs, or a rule's ipBlocks.
func (r *renderer) newPeerSetState(name string, ru *v1alpha1.Rule) (*peerSetState, error) {
	st := &peerSetState{}
	if group, ok := strings.CutPrefix(name, "g/"); ok {
		g := copyGroup(r.groups[group])
		st.group = &g
		for _, s := range g.Addresses {
			p, err := parsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("address group %q: address %q: %w", group, s, err)
			}
			if !p.IsSingleIP() {
				st.ranges = append(st.ranges, prefixRange(p))
				continue
			}
			i := 0
			if p.Addr().Is6() {
				i = 1
			}
			st.hosts[i] = append(st.hosts[i], p.Addr())
		}
		for i := range st.hosts {
			slices.SortFunc(st.hosts[i], netip.Addr.Compare)
			st.hosts[i] = slices.Compact(st.hosts[i])
		}
	} else {
		st.blocks = copyRulePorts(ru, nil).Peers
		for _, p := range ru.Peers {
			if p.IPBlock == nil {
				continue
			}
			rs, err := blockRanges(p.IPBlock.CIDR, p.IPBlock.Except)
			if err != nil {
				return nil, fmt.Errorf("rule %q: %w", ru.ID, err)
			}
			st.ranges = append(st.ranges, rs...)
		}
	}
	st.ranges = normalizeFamilies(st.ranges)
	return st, nil
}

// update brings the state to the peer sets of the flat directions dirs and
// numbers the identities. Numbers are a hash of the identity's key; of two
// with the same hash, the first by key keeps it, as a fresh state numbers
// them, so that a state that meets a collision, or frees a number another
// identity probed past, is rebuilt from nothing (every identity then new).
//
// With only set, the directions are those of the last update and only the
// groups named there changed (renderMembers): the other peer sets are not
// compared again.
func (st *idState) update(r *renderer, dirs []*flatDir, only []string) error {
	fresh := len(st.idx.used) == 0
	current := map[string]*peerSetState{}
	var changed [2][]hostChange
	if only != nil {
		current = maps.Clone(st.sets)
		for _, group := range only {
			name := "g/" + group
			old := current[name]
			ps, err := r.newPeerSetState(name, nil)
			if err != nil {
				*st = *newIDState(st.idx.prefix)
				return err
			}
			current[name] = ps
			st.moveHosts(name, old, ps, &changed)
		}
		return st.finish(r, dirs, fresh, current, changed)
	}
	if len(st.hosts[0]) == 0 && len(st.hosts[1]) == 0 {
		// A first render: size the maps once.
		n := 0
		counted := map[string]bool{}
		for _, d := range dirs {
			for _, ri := range d.rules {
				for _, name := range ri.peerSets {
					if group, ok := strings.CutPrefix(name, "g/"); ok && !counted[group] {
						counted[group] = true
						n += len(r.groups[group].Addresses)
					}
				}
			}
		}
		st.hosts = [2]map[[16]byte]*hostEntry{make(map[[16]byte]*hostEntry, n), {}}
	}
	for _, d := range dirs {
		for _, ri := range d.rules {
			for _, name := range ri.peerSets {
				if current[name] != nil {
					continue
				}
				old := st.sets[name]
				if old != nil && old.current(r, name, ri.rule) {
					current[name] = old
					continue
				}
				ps, err := r.newPeerSetState(name, ri.rule)
				if err != nil {
					// Half moved: start again next time.
					*st = *newIDState(st.idx.prefix)
					return err
				}
				current[name] = ps
				st.moveHosts(name, old, ps, &changed)
			}
		}
	}
	for name, old := range st.sets {
		if current[name] == nil {
			st.moveHosts(name, old, nil, &changed)
		}
	}
	return st.finish(r, dirs, fresh, current, changed)
}

// finish is update's second half: with the peer sets current and the
// addresses whose peer sets changed, it gives those addresses their
// identities, cuts the ranges into segments and numbers the identities.
func (st *idState) finish(r *renderer, dirs []*flatDir, fresh bool, current map[string]*peerSetState, changed [2][]hostChange) error {
	st.sets = current
	idx := st.idx
	for i := range changed {
		slices.SortFunc(changed[i], func(a, b hostChange) int { return a.addr.Compare(b.addr) })
		changed[i] = slices.CompactFunc(changed[i], func(a, b hostChange) bool { return a.addr == b.addr })
		for _, c := range changed[i] {
			e := c.entry
			var id *identity
			if len(e.sets) > 0 {
				id = idx.of(e.sets)
			} else {
				delete(st.hosts[i], c.addr.As16())
			}
			if id == e.id {
				continue
			}
			if e.id != nil {
				e.id.refs[i]--
			}
			if id != nil {
				id.refs[i]++
			}
			e.id = id
		}
	}
	// Range segments, anew each time: ranges are few.
	var names []string
	for n, ps := range current {
		if len(ps.ranges) > 0 {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for i := range 2 {
		var cuts []boundary
		for _, n := range names {
			for _, rg := range current[n].ranges {
				if rg.from.Is4() == (i == 0) {
					cuts = append(cuts, boundary{at: rg.from, set: n}, boundary{at: rg.to, set: n, end: true})
				}
			}
		}
		old := st.segs[i]
		st.segs[i] = nil
		st.segElems[i] = nil
		for _, sg := range segments(cuts) {
			id := idx.of(sg.sets)
			id.refs[i]++
			st.segs[i] = append(st.segs[i], id)
			st.segElems[i] = append(st.segElems[i], model.Element{Key: sg.from.AsSlice(), KeyEnd: sg.to.AsSlice()})
		}
		for _, id := range old {
			id.refs[i]--
		}
	}
	if !idx.dropUnused() || !idx.numberNew() {
		if fresh {
			return errors.New("identities: a fresh numbering failed") // never: nothing was numbered before
		}
		*st = *newIDState(st.idx.prefix)
		return st.update(r, dirs, nil)
	}
	// The maps' elements: the last render's, with the changed addresses'.
	for i := range changed {
		st.elems[i] = st.mergeHosts(i, changed[i], &st.moved[i])
	}
	for i := range st.segElems {
		for j := range st.segElems[i] {
			st.segElems[i][j].Verdict = &st.segs[i][j].jump
		}
	}
	return nil
}

// moveHosts records that peer set name holds the single addresses of to
// instead of those of from (either may be nil), and appends the addresses
// whose peer sets changed to changed.
func (st *idState) moveHosts(name string, from, to *peerSetState, changed *[2][]hostChange) {
	for i := range 2 {
		var old, new []netip.Addr
		if from != nil {
			old = from.hosts[i]
		}
		if to != nil {
			new = to.hosts[i]
		}
		for len(old) > 0 || len(new) > 0 {
			c := 0 // old[0] against new[0], either missing last
			switch {
			case len(old) == 0:
				c = 1
			case len(new) == 0:
				c = -1
			default:
				c = old[0].Compare(new[0])
			}
			switch {
			case c < 0: // only in old: removed
				a := old[0]
				old = old[1:]
				e := st.hosts[i][a.As16()]
				if j, ok := slices.BinarySearch(e.sets, name); ok {
					e.sets = slices.Delete(slices.Clip(e.sets), j, j+1)
				}
				changed[i] = append(changed[i], hostChange{a, e})
			case c > 0: // only in new: added
				a := new[0]
				new = new[1:]
				k := a.As16()
				e := st.hosts[i][k]
				if e == nil {
					e = st.newEntry(name)
					st.hosts[i][k] = e
				} else if j, ok := slices.BinarySearch(e.sets, name); !ok {
					e.sets = slices.Insert(slices.Clip(e.sets), j, name)
				}
				changed[i] = append(changed[i], hostChange{a, e})
			default: // in both
				old, new = old[1:], new[1:]
			}
		}
	}
}

// newEntry returns a new entry of one peer set, allocated with others.
func (st *idState) newEntry(name string) *hostEntry {
	if len(st.slab) == 0 {
		st.slab = make([]hostEntry, 1024)
		st.names = make([]string, 1024)
	}
	e := &st.slab[0]
	st.names[0] = name
	e.sets = st.names[:1:1]
	st.slab, st.names = st.slab[1:], st.names[1:]
	return e
}

// elemsMoved is how an update changed a map's element list.
// Nothing is recorded (from is empty) for a first render.
type elemsMoved struct {
	from           []model.Element
	removed, added []model.Element
}

// mergeHosts returns the elements of family i's map of single addresses:
// the last render's, with those of the changed addresses (sorted)
// replaced, and records in moved the elements that went and came (not
// for a first render, where all came and nothing is compared anyway).
func (st *idState) mergeHosts(i int, changed []hostChange, moved *elemsMoved) []model.Element {
	old := st.elems[i]
	*moved = elemsMoved{}
	if len(changed) == 0 {
		return old
	}
	track := len(old) > 0
	if track {
		moved.from = old
	}
	out := make([]model.Element, 0, len(old)+len(changed))
	// The new keys, in one allocation (a first render makes 100,000s).
	size := 4
	if i == 1 {
		size = 16
	}
	keys := make([]byte, 0, len(changed)*size)
	j := 0
	for _, c := range changed {
		n := len(keys)
		if i == 0 {
			a := c.addr.As4()
			keys = append(keys, a[:]...)
		} else {
			a := c.addr.As16()
			keys = append(keys, a[:]...)
		}
		key := keys[n:len(keys):len(keys)]
		for j < len(old) && bytes.Compare(old[j].Key, key) < 0 {
			out = append(out, old[j])
			j++
		}
		var was *model.Element
		if j < len(old) && bytes.Equal(old[j].Key, key) {
			was = &old[j]
			j++
		}
		var e model.Element
		if c.entry.id != nil {
			e = model.Element{Key: key, Verdict: &c.entry.id.jump}
			out = append(out, e)
		}
		switch {
		case !track || was != nil && e.Verdict != nil && *was.Verdict == *e.Verdict:
		case was != nil && e.Verdict != nil:
			moved.removed = append(moved.removed, *was)
			moved.added = append(moved.added, e)
		case was != nil:
			moved.removed = append(moved.removed, *was)
		case e.Verdict != nil:
			moved.added = append(moved.added, e)
		}
	}
	return append(out, old[j:]...)
}

// identity is a set of peer sets and its number.
type identity struct {
	key  string   // the names of its peer sets, sorted, one per line
	sets []string // the same names
	// number and jump (to its chain) are set by numberNew; map elements
	// share jump. A number never changes.
	number uint32
	jump   model.Verdict
	// refs counts, per family, the single addresses and segments with
	// the identity.
	refs [2]int
	// ports and all record, per family, that a pod allows the identity
	// some ports, or every port, in the render being made.
	ports, all [2]bool
	// chain is its chain as last rendered, with the lines it had.
	chain      *model.Chain
	chainLines [4]bool
}

// members reports whether addresses of family i have the identity.
func (id *identity) members(i int) bool { return id.refs[i] > 0 }

// identities interns the identities of one direction.
type identities struct {
	byKey   map[string]*identity
	singles map[string]*identity
	used    map[uint32]*identity
	// fresh are the identities not numbered yet; probed those whose
	// number is not their hash.
	fresh  []*identity
	probed map[*identity]bool
	prefix string // of the chains' names
}

func newIdentities() *identities {
	return &identities{byKey: map[string]*identity{}, singles: map[string]*identity{}, used: map[uint32]*identity{},
		probed: map[*identity]bool{}}
}

// of returns the identity of peer sets (names, sorted, without
// duplicates).
func (x *identities) of(sorted []string) *identity {
	if len(sorted) == 1 {
		if id := x.singles[sorted[0]]; id != nil {
			return id
		}
	}
	key := strings.Join(sorted, "\n")
	if id := x.byKey[key]; id != nil {
		return id
	}
	id := &identity{key: key, sets: slices.Clone(sorted)}
	x.byKey[key] = id
	if len(sorted) == 1 {
		x.singles[sorted[0]] = id
	}
	x.fresh = append(x.fresh, id)
	return id
}

// dropUnused forgets the identities no address or segment has. It
// reports false when a fresh numbering could now differ: a number freed
// lies between the hash and the number of an identity that probed past it.
func (x *identities) dropUnused() bool {
	var freed []uint32
	for key, id := range x.byKey {
		if id.refs != [2]int{} {
			continue
		}
		delete(x.byKey, key)
		if len(id.sets) == 1 {
			delete(x.singles, id.sets[0])
		}
		if id.number != 0 {
			delete(x.used, id.number)
			delete(x.probed, id)
			freed = append(freed, id.number)
		}
	}
	for p := range x.probed {
		for _, n := range freed {
			if h := fnv1a32(p.key); n-h < p.number-h { // on its way from the hash, wrapping
				return false
			}
		}
	}
	return true
}

// numberNew numbers the identities made since the last call, in key
// order: each gets its hash (FNV-1a, 32 bits), or when that is taken (or
// 0) the next free number. On an identities with earlier numbers it
// reports false, numbering none, when a new identity would not get its
// hash: a fresh numbering could then give some identities other numbers.
func (x *identities) numberNew() bool {
	fresh := x.fresh[:0]
	for _, id := range x.fresh {
		if x.byKey[id.key] == id && id.number == 0 {
			fresh = append(fresh, id)
		}
	}
	x.fresh = nil
	slices.SortFunc(fresh, func(a, b *identity) int { return cmp.Compare(a.key, b.key) })
	if len(x.used) > 0 {
		seen := make(map[uint32]bool, len(fresh))
		for _, id := range fresh {
			n := fnv1a32(id.key)
			if n == 0 || x.used[n] != nil || seen[n] {
				return false
			}
			seen[n] = true
		}
	}
	for _, id := range fresh {
		n := fnv1a32(id.key)
		for x.used[n] != nil || n == 0 {
			n++
		}
		if n != fnv1a32(id.key) {
			x.probed[id] = true
		}
		x.used[n] = id
		id.number = n
		// Named as nft prints the tag: its bytes in order.
		id.jump = model.Verdict{Kind: model.VerdictJump, Chain: x.prefix + hex.EncodeToString(binary.NativeEndian.AppendUint32(nil, n))}
	}
	return true
}

// all returns the identities in use, by number.
func (x *identities) all() []*identity {
	out := make([]*identity, 0, len(x.byKey))
	for _, id := range x.byKey {
		out = append(out, id)
	}
	slices.SortFunc(out, func(a, b *identity) int { return cmp.Compare(a.number, b.number) })
	return out
}
