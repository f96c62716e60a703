package render

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// taggedKeyLen is the length of a key of the shared set of a family.
func taggedKeyLen(i int) int {
	if i == 1 {
		return 4 + 16
	}
	return 4 + 4
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
func GroupTag(name string) uint32 { return fnv1a32(name) }

// fnv1a32 is the 32-bit FNV-1a hash of s: group tags and identity numbers.
func fnv1a32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
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

// mergeSorted merges element lists sorted by key into one sorted list
// without duplicates, with a heap of the lists' heads (n log k).
func mergeSorted(runs [][]model.Element) []model.Element {
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
			s.Elements = append(s.Elements, mergeSorted(runs)...)
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
