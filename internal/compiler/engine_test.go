package compiler

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// world is the set of objects an engine has been told about, by kind and key.
type world map[string]any

func (w world) snapshot() *Snapshot {
	var objs []any
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range w {
			if !yield(k) {
				return
			}
		}
	}) {
		objs = append(objs, w[k])
	}
	return snap(objs...)
}

func objectKey(o any) string {
	switch o := o.(type) {
	case *corev1.Node:
		return "node/" + o.Name
	case *corev1.Namespace:
		return "ns/" + o.Name
	case *corev1.Pod:
		return "pod/" + o.Namespace + "/" + o.Name
	case *networkingv1.NetworkPolicy:
		return "np/" + o.Namespace + "/" + o.Name
	case *v1alpha1.DefaultDeny:
		return "dd/" + o.Name
	}
	panic(fmt.Sprintf("unexpected %T", o))
}

func upsert(e *Engine, o any) {
	switch o := o.(type) {
	case *corev1.Node:
		e.UpsertNode(o)
	case *corev1.Namespace:
		e.UpsertNamespace(o)
	case *corev1.Pod:
		e.UpsertPod(o)
	case *networkingv1.NetworkPolicy:
		e.UpsertNetworkPolicy(o)
	case *v1alpha1.DefaultDeny:
		e.UpsertDefaultDeny(o)
	}
}

func remove(e *Engine, o any) {
	switch o := o.(type) {
	case *corev1.Node:
		e.DeleteNode(o.Name)
	case *corev1.Namespace:
		e.DeleteNamespace(o.Name)
	case *corev1.Pod:
		e.DeletePod(o.Namespace, o.Name)
	case *networkingv1.NetworkPolicy:
		e.DeleteNetworkPolicy(o.Namespace, o.Name)
	case *v1alpha1.DefaultDeny:
		e.DeleteDefaultDeny(o.Name)
	}
}

// mirror is what a consumer of Changes holds after applying every delta.
// It also keeps every spec a delta handed out, with a copy of its content
// then, to check that the engine does not modify what it shares.
type mirror struct {
	res    *Result
	handed []handedOut
}

type handedOut struct {
	what      string
	got, copy any // a pointer from a Delta, and a deep copy of its target
}

// unchanged reports the first spec handed out earlier whose content changed.
func (m *mirror) unchanged(t *testing.T) {
	t.Helper()
	for _, h := range m.handed {
		if diff := cmp.Diff(h.copy, h.got); diff != "" {
			t.Fatalf("%s handed out by Changes was modified later (-then +now):\n%s", h.what, diff)
		}
	}
}

func (m *mirror) apply(d *Delta) {
	for k, v := range d.NodeRuleSets {
		if v != nil {
			m.handed = append(m.handed, handedOut{"NodeRuleSet " + k, v, v.DeepCopy()})
		}
	}
	for k, v := range d.AddressGroups {
		if v != nil {
			m.handed = append(m.handed, handedOut{"AddressGroup " + k, v, v.DeepCopy()})
		}
	}
	for k, v := range d.Policies {
		if v != nil {
			c := PolicySpan{SelectedPods: v.SelectedPods, Nodes: slices.Clone(v.Nodes)}
			m.handed = append(m.handed, handedOut{"span " + k, v, &c})
		}
	}
	for k, v := range d.NodeRuleSets {
		if v == nil {
			delete(m.res.NodeRuleSets, k)
		} else {
			m.res.NodeRuleSets[k] = *v
		}
	}
	for k, v := range d.AddressGroups {
		if v == nil {
			delete(m.res.AddressGroups, k)
		} else {
			m.res.AddressGroups[k] = *v
		}
	}
	for k, v := range d.Policies {
		if v == nil {
			delete(m.res.Policies, k)
		} else {
			m.res.Policies[k] = *v
		}
	}
}

// runEngineSequence applies random upserts and deletes of objects drawn from
// several random clusters (whose objects share names, so that upserts are
// also updates) and checks, at random points, that the engine's Result and
// the state rebuilt from its deltas both equal Compile of the same objects.
// With maxEntries > 0 groups of more entries are split into shards; the
// result is then also checked to be the unsplit one once its shards are
// merged.
func runEngineSequence(t *testing.T, rng *rand.Rand, steps, maxEntries int) {
	t.Helper()
	var pool []any
	for range 4 {
		b := make([]byte, 48+rng.IntN(160))
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		s := fuzzClusterFrom(b).snap
		for _, o := range s.Nodes {
			pool = append(pool, o)
		}
		for _, o := range s.Namespaces {
			pool = append(pool, o)
		}
		for _, o := range s.Pods {
			pool = append(pool, o)
		}
		for _, o := range s.NetworkPolicies {
			pool = append(pool, o)
		}
		for _, o := range s.DefaultDenies {
			pool = append(pool, o)
		}
	}
	if len(pool) == 0 {
		return
	}
	// Half the sequences have their policies' ipBlocks made into groups.
	inline := 0
	if rng.IntN(2) == 0 {
		inline = 1
	}
	e := NewEngineWith(Options{MaxGroupEntries: maxEntries, MaxInlineBlocks: inline})
	w := world{}
	m := &mirror{res: &Result{NodeRuleSets: map[string]v1alpha1.NodeRuleSetSpec{}, AddressGroups: map[string]v1alpha1.AddressGroupSpec{}, Policies: map[string]PolicySpan{}}}
	var log []string
	check := func() {
		t.Helper()
		s := w.snapshot()
		// The levels are the Engine's: Compile checks that they are the
		// ones it would keep (see chooseLevel).
		levels := e.ShardLevels()
		want := CompileWith(s, Options{MaxGroupEntries: maxEntries, MaxInlineBlocks: inline, ShardLevels: levels})
		if diff := cmp.Diff(want, e.Result()); diff != "" {
			t.Fatalf("after %v\nengine result differs from Compile (-compile +engine):\n%s", log, diff)
		}
		if maxEntries > 0 {
			checkShards(t, want, maxEntries)
			if diff := cmp.Diff(CompileWith(s, Options{MaxInlineBlocks: inline}), mergeShards(t, want)); diff != "" {
				t.Fatalf("after %v\nmerged shards differ from the unsplit groups (-unsplit +merged):\n%s", log, diff)
			}
		}
		checkReferences(t, e, want)
		m.unchanged(t)
		d := e.Changes()
		m.apply(d)
		if diff := cmp.Diff(want, m.res); diff != "" {
			t.Fatalf("after %v\nstate rebuilt from deltas differs from Compile (-compile +deltas):\n%s", log, diff)
		}
		if d2 := e.Changes(); !d2.Empty() {
			t.Fatalf("a second Changes without events is not empty: %+v", d2)
		}
	}
	for range steps {
		o := pool[rng.IntN(len(pool))]
		key := objectKey(o)
		if rng.IntN(4) == 0 {
			remove(e, o)
			delete(w, key)
			log = append(log, "-"+key)
		} else {
			upsert(e, o)
			w[key] = o
			log = append(log, "+"+key)
		}
		if rng.IntN(5) == 0 {
			check()
		}
	}
	check()
}

func TestEngineMatchesCompile(t *testing.T) {
	for seed := range uint64(150) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			runEngineSequence(t, rand.New(rand.NewPCG(seed, 99)), 80, 0)
		})
	}
}

// TestEngineMatchesCompileSharded is TestEngineMatchesCompile with groups
// of more than one to three entries split into shards.
func TestEngineMatchesCompileSharded(t *testing.T) {
	for seed := range uint64(150) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			runEngineSequence(t, rand.New(rand.NewPCG(seed, 98)), 80, 1+int(seed%3))
		})
	}
}

// FuzzEngine runs random sequences, with groups unsplit or split into
// shards of at most one to three entries.
func FuzzEngine(f *testing.F) {
	f.Add(uint64(0), uint64(1))
	f.Add(uint64(42), uint64(7))
	f.Add(uint64(5), uint64(2))
	f.Fuzz(func(t *testing.T, a, b uint64) {
		runEngineSequence(t, rand.New(rand.NewPCG(a, b)), 60, int(a%4))
	})
}

// checkEngineFollows loads a cluster into an engine, then changes it the way
// a cluster changes (pods relabelled and replaced, namespaces relabelled,
// policies edited), checking the engine's result and the state rebuilt from
// its deltas against Compile after each step. The cluster's pods need a
// "tier" label and its namespaces an "env" label (compilertest's synthetic
// clusters have both; see synthetic_test.go).
func checkEngineFollows(t *testing.T, s *Snapshot) {
	t.Helper()
	e := NewEngine()
	w := world{}
	for _, o := range allObjects(s) {
		upsert(e, o)
		w[objectKey(o)] = o
	}
	if diff := cmp.Diff(Compile(s), e.Result()); diff != "" {
		t.Fatalf("after loading (-compile +engine):\n%s", diff)
	}
	m := &mirror{res: e.Result()}
	m.apply(e.Changes())

	rng := rand.New(rand.NewPCG(1, 1))
	for i := range 60 {
		switch i % 6 {
		case 0: // relabel a pod
			p := s.Pods[rng.IntN(len(s.Pods))].DeepCopy()
			p.Labels["tier"] = []string{"web", "api", "db", "worker"}[rng.IntN(4)]
			upsert(e, p)
			w[objectKey(p)] = p
		case 1: // a pod goes, another comes with its address
			p := s.Pods[rng.IntN(len(s.Pods))]
			e.DeletePod(p.Namespace, p.Name)
			delete(w, objectKey(p))
			q := p.DeepCopy()
			q.Name += "-new"
			q.Spec.NodeName = s.Nodes[rng.IntN(len(s.Nodes))].Name
			upsert(e, q)
			w[objectKey(q)] = q
		case 2: // relabel a namespace
			ns := s.Namespaces[rng.IntN(len(s.Namespaces))].DeepCopy()
			ns.Labels["env"] = []string{"prod", "staging", "dev"}[rng.IntN(3)]
			upsert(e, ns)
			w[objectKey(ns)] = ns
		case 3: // edit a policy
			np := s.NetworkPolicies[rng.IntN(len(s.NetworkPolicies))].DeepCopy()
			np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{Ports: ports(tcp(1000 + i))})
			upsert(e, np)
			w[objectKey(np)] = np
		case 4: // a pod is replaced under its name: scheduled, no address yet
			p := w[objectKey(s.Pods[rng.IntN(len(s.Pods))])]
			if p == nil {
				continue
			}
			q := p.(*corev1.Pod).DeepCopy()
			q.UID = types.UID(fmt.Sprintf("%s-%d", q.UID, i))
			q.Status.PodIP, q.Status.PodIPs = "", nil
			upsert(e, q)
			w[objectKey(q)] = q
		case 5: // a node is given pod CIDRs, or another one
			n := s.Nodes[rng.IntN(len(s.Nodes))].DeepCopy()
			n.Spec.PodCIDRs = []string{fmt.Sprintf("198.18.%d.1/24", i), "fd00:0:0:1::/64"}
			upsert(e, n)
			w[objectKey(n)] = n
		}
		m.unchanged(t)
		d := e.Changes()
		m.apply(d)
		if len(d.NodeRuleSets) > 2 && i%6 == 0 {
			t.Errorf("relabelling one pod rewrote %d rule sets", len(d.NodeRuleSets))
		}
		want := Compile(w.snapshot())
		if diff := cmp.Diff(want, e.Result()); diff != "" {
			t.Fatalf("step %d (-compile +engine):\n%s", i, diff)
		}
		if diff := cmp.Diff(want, m.res); diff != "" {
			t.Fatalf("step %d: state rebuilt from deltas differs from Compile (-compile +deltas):\n%s", i, diff)
		}
	}
}

func allObjects(s *Snapshot) []any {
	var out []any
	for _, o := range s.Nodes {
		out = append(out, o)
	}
	for _, o := range s.Namespaces {
		out = append(out, o)
	}
	for _, o := range s.Pods {
		out = append(out, o)
	}
	for _, o := range s.NetworkPolicies {
		out = append(out, o)
	}
	for _, o := range s.DefaultDenies {
		out = append(out, o)
	}
	return out
}

// TestEnginePinnedGroups covers groups whose namespace selector names their
// namespaces, which the engine indexes by those names: pods of each named
// namespace join and leave them, pods of other namespaces never do, and
// namespace label changes that flip the selector move the pods in and out.
func TestEnginePinnedGroups(t *testing.T) {
	inXY := expr(corev1.LabelMetadataName, in, "x", "y")
	objs := []any{
		mkNode("n1"), mkNS("x", "team", "a"), mkNS("y", "team", "b"), mkNS("z", "team", "a"),
		mkNP("x", "by-name", all(), ingressRule(nil, nsPeer(inXY))),
		mkNP("y", "by-name-and-team", all(), ingressRule(nil, nsPeer(&metav1.LabelSelector{
			MatchLabels:      map[string]string{"team": "a"},
			MatchExpressions: inXY.MatchExpressions,
		}))),
		mkNP("z", "one-name", all(), egressRule(ports(tcp("http")), nsPeer(sel(corev1.LabelMetadataName, "y")))),
	}
	e := NewEngine()
	w := world{}
	step := func(what string, o any, del bool) {
		t.Helper()
		if del {
			remove(e, o)
			delete(w, objectKey(o))
		} else {
			upsert(e, o)
			w[objectKey(o)] = o
		}
		e.Changes()
		if diff := cmp.Diff(Compile(w.snapshot()), e.Result()); diff != "" {
			t.Fatalf("%s (-compile +engine):\n%s", what, diff)
		}
	}
	for _, o := range objs {
		step("load "+objectKey(o), o, false)
	}
	pods := []*corev1.Pod{
		mkPod("x", "a", "n1", "198.18.0.1"),
		mkPod("y", "b", "n1", "198.18.0.2", containerPorts(cport("http", 80, ""))),
		mkPod("z", "c", "n1", "198.18.0.3"),
		mkPod("y", "d", "n1", "198.18.0.4,fd00::4", containerPorts(cport("http", 8080, ""))),
	}
	for _, p := range pods {
		step("add "+objectKey(p), p, false)
	}
	groups := 0
	for _, g := range e.Result().AddressGroups {
		if len(g.Addresses)+len(g.Endpoints) > 0 {
			groups++
		}
	}
	if groups < 2 {
		t.Fatalf("the test cluster has %d non-empty groups, want the pinned ones filled", groups)
	}
	step("relabel y into team a", mkNS("y", "team", "a"), false)
	step("relabel x out of team a", mkNS("x", "team", "c"), false)
	step("pod of y changes port", mkPod("y", "b", "n1", "198.18.0.2", containerPorts(cport("http", 81, ""))), false)
	step("pod of y takes the address of z's", mkPod("y", "d", "n1", "198.18.0.3"), false)
	step("delete namespace y", &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "y"}}, true)
	step("delete pod of x", pods[0], true)
	step("re-create namespace y", mkNS("y", "team", "b"), false)
}

// checkReferences checks the Engine's reference count of every group
// object against the rule sets of res that list it.
func checkReferences(t *testing.T, e *Engine, res *Result) {
	t.Helper()
	for name := range res.AddressGroups {
		want := 0
		for _, rs := range res.NodeRuleSets {
			if slices.Contains(rs.AddressGroups, name) {
				want++
			}
		}
		if got := e.GroupReferences(name); got != want {
			t.Fatalf("GroupReferences(%s) = %d, want %d", name, got, want)
		}
	}
	if got := e.GroupReferences("ag-0000000000000000"); got != 0 {
		t.Fatalf("GroupReferences of a group with no output = %d", got)
	}
}
