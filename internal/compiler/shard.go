package compiler

import (
	"slices"
	"strconv"
	"strings"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// DefaultMaxGroupEntries is the most addresses (or endpoints) one
// AddressGroup object holds. A group with more is written as 2^k shards.
// 4,096 entries are at most about 250 KB of JSON (IPv6 endpoints), well
// under etcd's 1.5 MiB object limit, and bound what a pod event rewrites.
const DefaultMaxGroupEntries = 4096

// DefaultMaxInlineBlocks is the most ipBlocks a policy keeps inline: a
// policy lists a few ranges (the cluster's, an office's, the metadata
// address), and each inline block is a few dozen bytes in the rule set of
// every node the policy selects pods on.
const DefaultMaxInlineBlocks = 16

// maxShardLevel bounds the number of shards of a group (2^maxShardLevel),
// so that a maximum too small for the hash to spread the entries cannot
// make the number grow without end. At that level shards may exceed the
// maximum.
const maxShardLevel = 16

// Options tune Compile and the Engine.
type Options struct {
	// MaxGroupEntries is the most entries an AddressGroup object holds; 0
	// means DefaultMaxGroupEntries.
	MaxGroupEntries int
	// ShardLevels are the shard levels of the groups as last output (a group
	// named N of level k > 0 was written as the 2^k objects named by
	// ShardName), keyed by group name; a group absent has level 0. Compile
	// keeps a level while it still fits (see chooseLevel), so that a group
	// at a boundary does not change its shards back and forth.
	ShardLevels map[string]int
	// MaxInlineBlocks is the most ipBlocks a policy's rules hold inline in
	// the rule sets; a policy with more gets each rule's blocks as an
	// AddressGroup (FromIPBlocks). 0 means DefaultMaxInlineBlocks.
	MaxInlineBlocks int
	// ExemptNamespaces are namespaces whose pods no policy isolates:
	// nftguard's own, so that no DefaultDeny or NetworkPolicy can cut its
	// controller off the API server. Their pods are still peers.
	ExemptNamespaces []string
}

func (o Options) maxEntries() int {
	if o.MaxGroupEntries <= 0 {
		return DefaultMaxGroupEntries
	}
	return o.MaxGroupEntries
}

// ShardName returns the name of shard i of the group named group split into
// 1<<level shards: the group's own name when it is not split, else
// "<group>-<shards>-<i>".
func ShardName(group string, level, i int) string {
	if level == 0 {
		return group
	}
	return group + "-" + strconv.Itoa(1<<level) + "-" + strconv.Itoa(i)
}

// ParseShardName parses the name of an AddressGroup object made by
// ShardName: the group's name, its level and the shard's index. ok is false
// for a name ShardName does not make.
func ParseShardName(name string) (group string, level, index int, ok bool) {
	group = LogicalGroup(name)
	if group == name {
		return group, 0, 0, v1alpha1.IsAddressGroupName(name)
	}
	count, idx, found := strings.Cut(name[len(group)+1:], "-")
	if !found {
		return "", 0, 0, false
	}
	n, err1 := strconv.Atoi(count)
	i, err2 := strconv.Atoi(idx)
	if err1 != nil || err2 != nil || n < 2 || n > 1<<maxShardLevel || n&(n-1) != 0 || i < 0 || i >= n {
		return "", 0, 0, false
	}
	for n > 1 {
		n >>= 1
		level++
	}
	if ShardName(group, level, i) != name {
		return "", 0, 0, false
	}
	return group, level, i, true
}

// LogicalGroup returns the name of the group an AddressGroup object belongs
// to: for a shard, its group's name; else the name itself (the agent reads
// the same contract from v1alpha1.LogicalAddressGroup).
func LogicalGroup(name string) string { return v1alpha1.LogicalAddressGroup(name) }

// entryHash hashes an entry (FNV-1a, then a 64-bit finalizer so that the
// low bits are well mixed). It depends on the entry only, and is the same
// in every process: an entry's shard does not depend on other members.
func entryHash(k entryKey) uint64 {
	const prime = 1099511628211
	h := uint64(14695981039346656037)
	b := k.addr.As16()
	for _, c := range b {
		h = (h ^ uint64(c)) * prime
	}
	if k.addr.Is4() {
		h = (h ^ 4) * prime
	}
	p := uint32(k.port)
	for range 4 {
		h = (h ^ uint64(p&0xff)) * prime
		p >>= 8
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb93fe53ec4ce
	h ^= h >> 33
	return h
}

// shardOf returns the shard of an entry of the given hash at a level: the
// hash's low level bits. A shard at level k+1 is thus part of one shard at
// level k, so that if every shard fits at a level, every shard fits at the
// levels above it.
func shardOf(hash uint64, level int) int { return int(hash & (1<<level - 1)) }

// fitLevel returns the least level at which no shard holds more than max
// of the entries (n of them, hashes computing their hashes), up to
// maxShardLevel.
func fitLevel(n int, hashes func() []uint64, max int) int {
	if n <= max {
		return 0
	}
	level := 1
	for level < maxShardLevel && n > max<<level {
		level++
	}
	h := hashes()
	for ; level < maxShardLevel; level++ {
		counts := make([]int, 1<<level)
		fits := true
		for _, x := range h {
			i := shardOf(x, level)
			counts[i]++
			if counts[i] > max {
				fits = false
				break
			}
		}
		if fits {
			return level
		}
	}
	return maxShardLevel
}

// chooseLevel returns a group's shard level given its entries (n of them)
// and the level prev of its previous output, if any (hasPrev). A group
// without a previous level gets the least level at which no shard holds
// more than max entries. A group grows to that level when one of its
// shards would overflow; it shrinks only when every shard of a lower level
// would be at most half full, and then to the least such level. A shard
// that overflowed must thus lose about half its entries before the group
// merges it back: a group at a boundary does not flap. The result is
// stable: chooseLevel(L, true, ...) is L for the L it returns.
func chooseLevel(prev int, hasPrev bool, n int, hashes func() []uint64, max int) int {
	fit := fitLevel(n, hashes, max)
	if !hasPrev || prev <= fit {
		return fit
	}
	if half := fitLevel(n, hashes, halfFull(max)); half < prev {
		return half
	}
	return prev
}

// halfFull is the fill of a shard below which a group may merge shards.
func halfFull(max int) int { return (max + 1) / 2 }

// shrinks reports whether a group whose shards at level > 0 hold sizes
// entries would merge them: whether every shard one level down would be at
// most half full.
func shrinks(sizes []int, max int) bool {
	half := len(sizes) / 2
	for i := range half {
		if sizes[i]+sizes[i+half] > halfFull(max) {
			return false
		}
	}
	return true
}

// expandNode returns the spec of a node whose rules reference the groups
// groups (its compiled groups, sorted by name), with every reference to a
// group of level k > 0 replaced by references to its 1<<k shards: in each
// rule's peers, in the group's place, and in addressGroups, which stays
// sorted. It returns spec itself when no group is split, and otherwise
// shares with spec everything it does not change.
func expandNode(spec *v1alpha1.NodeRuleSetSpec, groups []*groupDef, level func(*groupDef) int) *v1alpha1.NodeRuleSetSpec {
	type split struct {
		name  string
		level int
	}
	var splits []split // the node's split groups, sorted by name
	extra := 0
	for _, g := range groups {
		if l := level(g); l > 0 {
			splits = append(splits, split{g.name, l})
			extra += 1<<l - 1
		}
	}
	if splits == nil {
		return spec
	}
	levelOf := func(name string) int {
		if name == "" {
			return 0
		}
		i, ok := slices.BinarySearchFunc(splits, name, func(s split, name string) int { return strings.Compare(s.name, name) })
		if !ok {
			return 0
		}
		return splits[i].level
	}
	out := *spec
	out.AddressGroups = make([]string, 0, len(spec.AddressGroups)+extra)
	for _, name := range spec.AddressGroups {
		l := levelOf(name)
		for i := range 1 << l {
			out.AddressGroups = append(out.AddressGroups, ShardName(name, l, i))
		}
	}
	slices.Sort(out.AddressGroups)
	out.Rules = make([]v1alpha1.Rule, len(spec.Rules))
	for i, r := range spec.Rules {
		out.Rules[i] = r
		n := 0
		for _, p := range r.Peers {
			if l := levelOf(p.AddressGroup); l > 0 {
				n += 1<<l - 1
			}
		}
		if n == 0 {
			continue
		}
		peers := make([]v1alpha1.Peer, 0, len(r.Peers)+n)
		for _, p := range r.Peers {
			l := levelOf(p.AddressGroup)
			if l == 0 {
				peers = append(peers, p)
				continue
			}
			for j := range 1 << l {
				peers = append(peers, v1alpha1.Peer{AddressGroup: ShardName(p.AddressGroup, l, j)})
			}
		}
		out.Rules[i].Peers = peers
	}
	return &out
}
