package compiler

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// shardOfName parses a group object's name into its group, level and index.
func shardOfName(t *testing.T, name string) (group string, level, index int) {
	t.Helper()
	group, level, index, ok := ParseShardName(name)
	if !ok {
		t.Fatalf("group object %q: not a group or shard name", name)
	}
	return group, level, index
}

func groupKeys(t *testing.T, g v1alpha1.AddressGroupSpec) []entryKey {
	t.Helper()
	var out []entryKey
	add := func(ip string, port int32) {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			t.Fatalf("address %q: %v", ip, err)
		}
		out = append(out, entryKey{a, port})
	}
	for _, a := range g.Addresses {
		if !g.FromIPBlocks {
			add(a, 0)
			continue
		}
		// A CIDR: its key holds the prefix length as the port.
		p, err := netip.ParsePrefix(a)
		if err != nil || p.Masked() != p {
			t.Fatalf("CIDR %q of a group made from ipBlocks: not canonical (%v)", a, err)
		}
		out = append(out, entryKey{p.Addr(), int32(p.Bits())})
	}
	for _, ep := range g.Endpoints {
		add(ep.IP, ep.Port)
	}
	return out
}

// checkShards checks the group objects of a result: valid names, every
// shard of a split group present and holding at most max entries, each
// entry in the shard its hash gives, and no group split that fits in one
// object.
func checkShards(t *testing.T, res *Result, max int) {
	t.Helper()
	levels := map[string]int{}
	for name, g := range res.AddressGroups {
		if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
			t.Fatalf("group object name %q: %v", name, errs)
		}
		group, level, i := shardOfName(t, name)
		if l, ok := levels[group]; ok && l != level {
			t.Fatalf("group %s has shards of levels %d and %d", group, l, level)
		}
		levels[group] = level
		keys := groupKeys(t, g)
		if level == 0 && len(keys) > max {
			t.Fatalf("group %s holds %d entries in one object, max %d", name, len(keys), max)
		}
		if level > 0 && level < maxShardLevel && len(keys) > max {
			t.Fatalf("shard %s holds %d entries, max %d", name, len(keys), max)
		}
		for _, k := range keys {
			if level > 0 && shardOf(entryHash(k), level) != i {
				t.Fatalf("shard %s holds %v, which belongs in shard %d", name, k, shardOf(entryHash(k), level))
			}
		}
	}
	for group, level := range levels {
		for i := range 1 << level {
			if _, ok := res.AddressGroups[ShardName(group, level, i)]; !ok {
				t.Fatalf("group %s of level %d lacks shard %d", group, level, i)
			}
		}
	}
}

// mergeShards returns the result with every split group merged back into
// one object and the rule sets naming groups instead of shards.
func mergeShards(t *testing.T, res *Result) *Result {
	t.Helper()
	out := &Result{NodeRuleSets: map[string]v1alpha1.NodeRuleSetSpec{}, AddressGroups: map[string]v1alpha1.AddressGroupSpec{}, Policies: res.Policies}
	merged := map[string][]entryKey{}
	for name, g := range res.AddressGroups {
		group := LogicalGroup(name)
		m := out.AddressGroups[group]
		m.Namespace, m.NamespaceSelector, m.PodSelector, m.NamedPort, m.FromIPBlocks = g.Namespace, g.NamespaceSelector, g.PodSelector, g.NamedPort, g.FromIPBlocks
		out.AddressGroups[group] = m
		merged[group] = append(merged[group], groupKeys(t, g)...)
	}
	for group, keys := range merged {
		slices.SortFunc(keys, compareEntryKeys)
		m := out.AddressGroups[group]
		for _, k := range keys {
			switch {
			case m.FromIPBlocks:
				m.Addresses = append(m.Addresses, netip.PrefixFrom(k.addr, int(k.port)).String())
			case m.NamedPort == nil:
				m.Addresses = append(m.Addresses, k.addr.String())
			default:
				m.Endpoints = append(m.Endpoints, v1alpha1.Endpoint{IP: k.addr.String(), Port: k.port})
			}
		}
		out.AddressGroups[group] = m
	}
	for node, spec := range res.NodeRuleSets {
		spec := *spec.DeepCopy()
		if spec.AddressGroups != nil {
			for i, name := range spec.AddressGroups {
				spec.AddressGroups[i] = LogicalGroup(name)
			}
			slices.Sort(spec.AddressGroups)
			spec.AddressGroups = slices.Compact(spec.AddressGroups)
		}
		for i := range spec.Rules {
			r := &spec.Rules[i]
			for j := range r.Peers {
				r.Peers[j].AddressGroup = LogicalGroup(r.Peers[j].AddressGroup)
			}
			r.Peers = slices.CompactFunc(r.Peers, func(a, b v1alpha1.Peer) bool {
				return a.AddressGroup != "" && a.AddressGroup == b.AddressGroup
			})
		}
		out.NodeRuleSets[node] = spec
	}
	return out
}

func TestShardNames(t *testing.T) {
	g := "ag-0123456789abcdef"
	if got := ShardName(g, 0, 0); got != g {
		t.Errorf("ShardName(%s, 0, 0) = %s, want the group's name", g, got)
	}
	if got := ShardName(g, 3, 5); got != g+"-8-5" {
		t.Errorf("ShardName(%s, 3, 5) = %s", g, got)
	}
	for _, name := range []string{g, ShardName(g, 1, 0), ShardName(g, maxShardLevel, 1<<maxShardLevel-1)} {
		if got := LogicalGroup(name); got != g {
			t.Errorf("LogicalGroup(%s) = %s, want %s", name, got, g)
		}
		if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
			t.Errorf("%s: %v", name, errs)
		}
	}
	if got := LogicalGroup("other-name-1"); got != "other-name-1" {
		t.Errorf("LogicalGroup of a name that is no shard's = %s", got)
	}
	for _, c := range []struct {
		name         string
		level, index int
		ok           bool
	}{
		{g, 0, 0, true},
		{g + "-2-1", 1, 1, true},
		{g + "-64-63", 6, 63, true},
		{g + "-64-64", 0, 0, false},
		{g + "-3-1", 0, 0, false},
		{g + "-4-01", 0, 0, false},
		{g + "-4", 0, 0, false},
		{"ag-short", 0, 0, false},
	} {
		group, level, index, ok := ParseShardName(c.name)
		if ok != c.ok || ok && (group != g || level != c.level || index != c.index) {
			t.Errorf("ParseShardName(%s) = %s %d %d %v, want %s %d %d %v", c.name, group, level, index, ok, g, c.level, c.index, c.ok)
		}
	}
}

// fixedHashes returns n entries' hashes whose low bits are given.
func fixedHashes(low ...uint64) func() []uint64 {
	return func() []uint64 {
		out := make([]uint64, len(low))
		for i, l := range low {
			out[i] = l | uint64(i+1)<<32
		}
		return out
	}
}

func TestChooseLevel(t *testing.T) {
	for _, c := range []struct {
		name    string
		prev    int
		hasPrev bool
		low     []uint64
		want    int
	}{
		{"fits in one", 0, false, []uint64{0, 1, 2, 3}, 0},
		{"over the maximum: two shards", 0, false, []uint64{0, 1, 0, 1, 0}, 1},
		{"two shards unless one overflows", 0, false, []uint64{0, 2, 4, 6, 8, 1}, 2},
		{"kept while a shard of the level below would be over half full", 1, true, []uint64{0, 1, 2}, 1},
		{"one over the maximum, then back: kept", 1, true, []uint64{0, 2, 4, 6}, 1},
		{"shrinks when half full", 1, true, []uint64{0, 1}, 0},
		{"shrinks to the least half-full level", 3, true, []uint64{0, 1, 2, 3, 4, 5, 6, 7}, 2},
		{"kept at a higher level while not half full below", 3, true, []uint64{0, 1, 2, 3, 4, 5, 6, 7, 8}, 3},
		{"grows when a shard overflows", 1, true, []uint64{0, 2, 4, 6, 8, 1}, 2},
		{"no previous level: least fitting", 3, false, []uint64{0, 1, 2, 3, 4, 5, 6, 7, 8}, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := fixedHashes(c.low...)
			got := chooseLevel(c.prev, c.hasPrev, len(c.low), h, 4)
			if got != c.want {
				t.Fatalf("chooseLevel = %d, want %d", got, c.want)
			}
			if again := chooseLevel(got, true, len(c.low), h, 4); again != got {
				t.Fatalf("chooseLevel from its own level %d = %d", got, again)
			}
		})
	}
}

// shardWorld is a cluster with one group (web pods of namespace a, the peer
// of a policy of node n1) whose pods come and go on node n2.
type shardWorld struct {
	t     *testing.T
	e     *Engine
	w     world
	max   int
	group string
}

func newShardWorld(t *testing.T, max int) *shardWorld {
	s := &shardWorld{t: t, e: NewEngineWith(Options{MaxGroupEntries: max}), w: world{}, max: max}
	for _, o := range []any{
		mkNode("n1"), mkNode("n2"), mkNS("a"),
		mkPod("a", "server", "n1", "198.19.0.1", labelsOf("app", "db")),
		mkNP("a", "db", sel("app", "db"), ingressRule(nil, podPeer(sel("app", "web")))),
	} {
		s.upsert(o)
	}
	s.e.Changes()
	res := s.e.Result()
	rs := res.NodeRuleSets["n1"]
	if len(rs.AddressGroups) != 1 {
		t.Fatalf("want one group, have %v", rs.AddressGroups)
	}
	s.group = rs.AddressGroups[0]
	return s
}

func (s *shardWorld) upsert(o any) { upsert(s.e, o); s.w[objectKey(o)] = o }
func (s *shardWorld) remove(o any) { remove(s.e, o); delete(s.w, objectKey(o)) }

func webPod(i int) *corev1.Pod {
	return mkPod("a", fmt.Sprintf("web-%d", i), "n2", fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), labelsOf("app", "web"))
}

func (s *shardWorld) level() int { return s.e.ShardLevels()[s.group] }

// check compares the engine with Compile and returns the delta and, for
// every address of the group, the object holding it.
func (s *shardWorld) check() (*Delta, map[string]string) {
	s.t.Helper()
	levels := s.e.ShardLevels()
	want := CompileWith(s.w.snapshot(), Options{MaxGroupEntries: s.max, ShardLevels: levels})
	if diff := cmp.Diff(want, s.e.Result()); diff != "" {
		s.t.Fatalf("engine differs from Compile (-compile +engine):\n%s", diff)
	}
	checkShards(s.t, want, s.max)
	where := map[string]string{}
	for name, g := range want.AddressGroups {
		for _, a := range g.Addresses {
			where[a] = name
		}
	}
	// The rule set of n1 names every shard.
	var names []string
	for name := range want.AddressGroups {
		names = append(names, name)
	}
	slices.Sort(names)
	if got := want.NodeRuleSets["n1"].AddressGroups; !slices.Equal(got, names) {
		s.t.Fatalf("rule set of n1 references %v, want every shard %v", got, names)
	}
	return s.e.Changes(), where
}

// TestShardGrowAndShrink adds members to a group one by one, then removes
// them: the group splits as it grows, never flaps between two levels, and
// merges back once small.
func TestShardGrowAndShrink(t *testing.T) {
	const max = 4
	s := newShardWorld(t, max)
	var levels []int
	for i := range 64 {
		s.upsert(webPod(i))
		s.check()
		l := s.level()
		if len(levels) > 0 && l < levels[len(levels)-1] {
			t.Fatalf("adding pod %d shrank the group from level %d to %d", i, levels[len(levels)-1], l)
		}
		levels = append(levels, l)
		if l > 0 && i+1 <= max {
			t.Fatalf("%d members, within the maximum %d, split into level %d", i+1, max, l)
		}
		if l > levels[0] && l > levels[len(levels)-2] {
			// It just grew: the member that made it grow leaving does not
			// shrink it back.
			s.remove(webPod(i))
			s.check()
			if got := s.level(); got != l {
				t.Fatalf("level %d after adding pod %d, %d after removing it again", l, i, got)
			}
			s.upsert(webPod(i))
			s.check()
		}
	}
	top := levels[len(levels)-1]
	if top < 4 {
		t.Fatalf("64 members of at most %d per shard: level %d", max, top)
	}
	prev := top
	changes := 0
	for i := 63; i >= 0; i-- {
		s.remove(webPod(i))
		s.check()
		l := s.level()
		if l > prev {
			t.Fatalf("removing pod %d grew the group from level %d to %d", i, prev, l)
		}
		if l != prev {
			changes++
			// It shrank to a level whose shards are at most half full.
			for name, g := range s.e.Result().AddressGroups {
				if n := len(g.Addresses); n > halfFull(max) {
					t.Fatalf("%d members left: shrank from level %d to %d, with %d in %s", i, prev, l, n, name)
				}
			}
		}
		prev = l
	}
	if prev != 0 {
		t.Fatalf("an empty group is at level %d", prev)
	}
	if changes == 0 || changes > top {
		t.Fatalf("shrinking from level %d to 0 took %d level changes", top, changes)
	}
}

// TestShardStable checks that a member's shard depends only on its
// address: members coming and going leave every other member where it was,
// and rewrite only the shard of their own address.
func TestShardStable(t *testing.T) {
	const max = 8
	s := newShardWorld(t, max)
	for i := range 100 {
		s.upsert(webPod(i))
	}
	_, before := s.check()
	level := s.level()
	if level < 3 {
		t.Fatalf("100 members of at most %d per shard: level %d", max, level)
	}
	rng := rand.New(rand.NewPCG(3, 3))
	present := map[int]bool{}
	for i := range 100 {
		present[i] = true
	}
	for step := range 60 {
		i := rng.IntN(120)
		p := webPod(i)
		if present[i] {
			s.remove(p)
		} else {
			s.upsert(p)
		}
		present[i] = !present[i]
		d, after := s.check()
		if got := s.level(); got != level {
			t.Fatalf("step %d: level %d, was %d (the test wants a fixed level)", step, got, level)
		}
		for a, shard := range after {
			if old, ok := before[a]; ok && old != shard {
				t.Fatalf("step %d: %s moved from %s to %s", step, a, old, shard)
			}
		}
		ip := p.Status.PodIPs[0].IP
		a := netip.MustParseAddr(ip)
		want := ShardName(s.group, level, shardOf(entryHash(entryKey{addr: a}), level))
		if len(d.AddressGroups) != 1 || d.AddressGroups[want] == nil {
			t.Fatalf("step %d: %s changed %d group objects, want only %s: %v", step, ip, len(d.AddressGroups), want, slices.Collect(mapKeys(d.AddressGroups)))
		}
		if _, ok := d.NodeRuleSets["n1"]; ok {
			t.Fatalf("step %d: a member change rewrote the rule set that references the group", step)
		}
		for a, shard := range after {
			before[a] = shard
		}
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestShardEndpoints splits an endpoint group and checks it like the
// others: Engine and Compile agree and the merged shards are the group.
func TestShardEndpoints(t *testing.T) {
	objs := []any{
		mkNode("n1"), mkNS("a"),
		mkPod("a", "client", "n1", "198.19.0.1", labelsOf("app", "client")),
		mkNP("a", "client", sel("app", "client"), policyTypes("Egress"), egressRule(ports(tcp("http")), podPeer(sel("app", "web")))),
	}
	for i := range 40 {
		objs = append(objs, mkPod("a", fmt.Sprintf("web-%d", i), "n1", fmt.Sprintf("10.0.0.%d,fd00::%d", i+1, i+1),
			labelsOf("app", "web"), containerPorts(cport("http", int32(8000+i%3), ""))))
	}
	s := snap(objs...)
	res := CompileWith(s, Options{MaxGroupEntries: 8})
	checkShards(t, res, 8)
	if len(res.AddressGroups) < 8 {
		t.Fatalf("80 endpoints of at most 8 per shard in %d objects", len(res.AddressGroups))
	}
	if diff := cmp.Diff(Compile(s), mergeShards(t, res)); diff != "" {
		t.Fatalf("merged shards differ from the unsplit group (-unsplit +merged):\n%s", diff)
	}
	e := NewEngineWith(Options{MaxGroupEntries: 8})
	for _, o := range objs {
		upsert(e, o)
	}
	if diff := cmp.Diff(CompileWith(s, Options{MaxGroupEntries: 8, ShardLevels: e.ShardLevels()}), e.Result()); diff != "" {
		t.Fatalf("engine differs from Compile (-compile +engine):\n%s", diff)
	}
}

// TestEngineShardHints checks that an Engine given the levels of a previous
// run uses them as Compile does, so that a restarted controller keeps the
// shards it wrote.
func TestEngineShardHints(t *testing.T) {
	const max = 4
	s := newShardWorld(t, max)
	for i := range 7 {
		s.upsert(webPod(i))
	}
	snapshot := s.w.snapshot()
	fresh := CompileWith(snapshot, Options{MaxGroupEntries: max})
	level := func(res *Result) int {
		for name := range res.AddressGroups {
			_, l, _ := shardOfName(t, name)
			return l
		}
		return -1
	}
	hint := 0
	for l := 1; l <= 6 && hint == 0; l++ {
		if level(CompileWith(snapshot, Options{MaxGroupEntries: max, ShardLevels: map[string]int{s.group: l}})) != level(fresh) {
			hint = l
		}
	}
	if hint == 0 {
		t.Fatalf("no previous level changes the group's level (%d without one)", level(fresh))
	}
	hints := map[string]int{s.group: hint}
	want := CompileWith(snapshot, Options{MaxGroupEntries: max, ShardLevels: hints})
	for _, e := range []*Engine{NewEngineWith(Options{MaxGroupEntries: max, ShardLevels: hints}), NewEngineWith(Options{MaxGroupEntries: max})} {
		e.HintShardLevels(hints)
		for _, o := range allObjects(snapshot) {
			upsert(e, o)
		}
		if diff := cmp.Diff(want, e.Result()); diff != "" {
			t.Fatalf("engine given level %d differs from Compile given it (-compile +engine):\n%s", hint, diff)
		}
	}
}
