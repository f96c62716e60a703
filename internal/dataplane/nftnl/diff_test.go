package nftnl

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/dptest"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

func mustRender(t testing.TB, spec v1alpha1.NodeRuleSetSpec, groups map[string]v1alpha1.AddressGroupSpec) *model.Table {
	t.Helper()
	return mustRenderWith(t, spec, groups, render.Options{})
}

// mustRenderWith renders with options (and the tests' revoked mark).
func mustRenderWith(t testing.TB, spec v1alpha1.NodeRuleSetSpec, groups map[string]v1alpha1.AddressGroupSpec, opts render.Options) *model.Table {
	t.Helper()
	opts.RevokedMark = testRevokedMark
	tab, err := render.Render(spec, groups, opts)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

// testRevokedMark is the revoked-connection mark bit of the tables the
// tests render, as the agent's default renders one.
const testRevokedMark = 0x00800000

// asKernel copies a table the way the kernel would return it: rules with
// handles (numbered in order) and ids, no statements.
func asKernel(t *model.Table) *model.Table {
	out := &model.Table{Sets: t.Sets}
	h := uint64(1)
	for _, c := range t.Chains {
		kc := &model.Chain{Name: c.Name, Hook: c.Hook, Priority: c.Priority}
		kc.KernelSig = c.Signature()
		for _, r := range c.Rules {
			kc.Rules = append(kc.Rules, model.KernelRule(nil, r.ID(), h))
			h++
		}
		out.Chains = append(out.Chains, kc)
	}
	return out
}

func planLines(p *model.Plan) []string {
	return strings.Split(strings.TrimSuffix(p.String(), "\n"), "\n")
}

func TestDiffFromNothing(t *testing.T) {
	spec, groups := dptest.Sample()
	want := mustRender(t, spec, groups)
	p := model.Diff(nil, want)
	lines := planLines(p)
	if lines[0] != "add table inet nftguard" {
		t.Fatalf("first op %q", lines[0])
	}
	c := p.Changes()
	chains, rules, elems := want.Counts()
	if c.ChainsAdded != chains || c.RulesAdded != rules || c.ElementsAdded != elems || c.SetsAdded != len(want.Sets) {
		t.Fatalf("changes %+v, table has %d chains %d rules %d elements", c, chains, rules, elems)
	}
	if c.RulesDeleted+c.ChainsDeleted+c.SetsDeleted+c.ElementsDeleted+c.Flushes != 0 {
		t.Fatalf("deletes from nothing: %+v", c)
	}
	// Everything a rule references exists before the rule.
	defined := map[string]bool{}
	for _, o := range p.Ops {
		switch o.Kind {
		case model.OpAddChain, model.OpAddSet:
			defined[o.Name] = true
		case model.OpAddRule:
			for _, s := range o.Rule.Stmts {
				var ref string
				switch s := s.(type) {
				case model.AddrInSet:
					ref = s.Set
				case model.AddrVmap:
					ref = s.Vmap
				case model.EndpointInSet:
					ref = s.Set
				case model.PortsInSet:
					ref = s.Set
				case model.Verdict:
					ref = s.Chain
				}
				if ref != "" && !defined[ref] {
					t.Errorf("rule %q in %s references %s before it exists", o.Rule, o.Name, ref)
				}
			}
		}
	}
	if got := model.Diff(asKernel(want), want); len(got.Ops) != 0 {
		t.Fatalf("diff of a table with itself:\n%s", got)
	}
}

func TestDiffIncremental(t *testing.T) {
	spec, groups := dptest.Sample()
	base := mustRender(t, spec, groups)
	cur := asKernel(base)

	for _, tc := range []struct {
		name   string
		change func(*v1alpha1.NodeRuleSetSpec, map[string]v1alpha1.AddressGroupSpec)
		want   []string
	}{
		{
			name: "add a group member",
			change: func(_ *v1alpha1.NodeRuleSetSpec, g map[string]v1alpha1.AddressGroupSpec) {
				fe := g["shop-frontend"]
				fe.Addresses = append(slices.Clone(fe.Addresses), "198.18.1.3")
				g["shop-frontend"] = fe
			},
			want: []string{"add element " + shared4("shop-frontend") + " { " + tagged("shop-frontend", "198.18.1.3") + " }"},
		},
		{
			name: "remove a group member",
			change: func(_ *v1alpha1.NodeRuleSetSpec, g map[string]v1alpha1.AddressGroupSpec) {
				fe := g["shop-frontend"]
				fe.Addresses = []string{"198.18.1.1", "fd00::1:1"}
				g["shop-frontend"] = fe
			},
			want: []string{"delete element " + shared4("shop-frontend") + " { " + tagged("shop-frontend", "198.18.1.2") + " }"},
		},
		{
			name: "change a named-port endpoint",
			change: func(_ *v1alpha1.NodeRuleSetSpec, g map[string]v1alpha1.AddressGroupSpec) {
				h := g["shop-http"]
				h.Endpoints = []v1alpha1.Endpoint{{IP: "198.18.1.1", Port: 8081}, {IP: "198.18.1.2", Port: 80}, {IP: "fd00::1:1", Port: 8080}}
				g["shop-http"] = h
			},
			want: []string{
				"delete element ep4-shop-http { 198.18.1.1 . tcp . 8080 }",
				"add element ep4-shop-http { 198.18.1.1 . tcp . 8081 }",
			},
		},
		{
			name: "first member of a family",
			change: func(_ *v1alpha1.NodeRuleSetSpec, g map[string]v1alpha1.AddressGroupSpec) {
				m := g["monitoring"]
				m.Addresses = append(slices.Clone(m.Addresses), "fd00::2:1")
				g["monitoring"] = m
			},
			want: []string{
				// The shared IPv6 set exists already (shop-frontend).
				"add element " + shared6("monitoring") + " { " + tagged("monitoring", "fd00::2:1") + " }",
				"insert rule rule-r-monitoring position 43 " + tag("monitoring") + " . ip6 saddr @" + shared6("monitoring") + " accept",
			},
		},
		{
			name: "last endpoint of a family",
			change: func(_ *v1alpha1.NodeRuleSetSpec, g map[string]v1alpha1.AddressGroupSpec) {
				h := g["shop-http"]
				h.Endpoints = h.Endpoints[:2]
				g["shop-http"] = h
			},
			want: []string{
				"delete rule rule-r-http-named handle 41",
				"delete set ep6-shop-http",
			},
		},
		{
			name: "add a pod",
			change: func(s *v1alpha1.NodeRuleSetSpec, _ map[string]v1alpha1.AddressGroupSpec) {
				s.Pods = append(s.Pods, v1alpha1.LocalPod{Namespace: "shop", Name: "web-1", IPs: []string{"198.18.0.14"},
					Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Rules: []string{"r-frontend"}}})
			},
			want: []string{
				"add chain in-shop.web-1",
				"add element in4 { 198.18.0.14 : goto in-shop.web-1 }",
				"add rule in-shop.web-1 ct state invalid drop",
				"add rule in-shop.web-1 ip saddr 198.18.0.14 accept",
				"add rule in-shop.web-1 jump rule-r-frontend",
				`add rule in-shop.web-1 limit rate 10/second burst 20 packets log prefix "nftguard:drop:in:8f0b5a3b2c5f" group 100`,
				"add rule in-shop.web-1 drop",
			},
		},
		{
			name: "remove a rule",
			change: func(s *v1alpha1.NodeRuleSetSpec, _ map[string]v1alpha1.AddressGroupSpec) {
				s.Pods[0].Ingress.Rules = []string{"r-frontend"}
			},
			want: []string{
				"delete rule in-shop.web-0 handle 32",
				"flush chain rule-r-monitoring",
				"delete set agn4-monitoring",
				"delete set rule-r-monitoring-net4",
				"delete chain rule-r-monitoring",
			},
		},
		{
			name: "add a rule in the middle",
			change: func(s *v1alpha1.NodeRuleSetSpec, _ map[string]v1alpha1.AddressGroupSpec) {
				s.Pods[1].Egress.Rules = []string{"r-dns", "r-http-named", "r-frontend-eg", "r-external"}
				s.Rules = append(s.Rules, v1alpha1.Rule{ID: "r-frontend-eg", Direction: v1alpha1.DirectionEgress,
					Peers: []v1alpha1.Peer{{AddressGroup: "shop-frontend"}}})
			},
			want: []string{
				"add chain rule-r-frontend-eg",
				"insert rule eg-shop.client position 22 jump rule-r-frontend-eg",
				"add rule rule-r-frontend-eg " + tag("shop-frontend") + " . ip daddr @" + shared4("shop-frontend") + " accept",
				"add rule rule-r-frontend-eg " + tag("shop-frontend") + " . ip6 daddr @" + shared6("shop-frontend") + " accept",
			},
		},
		{
			name: "audit to enforce",
			change: func(s *v1alpha1.NodeRuleSetSpec, _ map[string]v1alpha1.AddressGroupSpec) {
				s.Pods[3].Ingress.Mode = v1alpha1.IsolationEnforce
			},
			want: []string{
				"delete rule in-lab.probe handle 26",
				"delete rule in-lab.probe handle 27",
				"insert rule in-lab.probe position 25 ct state invalid drop",
				`add rule in-lab.probe limit rate 10/second burst 20 packets log prefix "nftguard:drop:in:a2896f76d5e8" group 100`,
				"add rule in-lab.probe drop",
			},
		},
		{
			name: "pod deleted, its IP reused by a new pod",
			change: func(s *v1alpha1.NodeRuleSetSpec, _ map[string]v1alpha1.AddressGroupSpec) {
				s.Pods[3] = v1alpha1.LocalPod{Namespace: "lab", Name: "probe-2", IPs: []string{"198.18.0.13"},
					Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce}}
			},
			want: []string{
				"add chain in-lab.probe-2",
				"delete element eg4 { 198.18.0.13 : goto eg-lab.probe }",
				"delete element in4 { 198.18.0.13 : goto in-lab.probe }",
				"add element in4 { 198.18.0.13 : goto in-lab.probe-2 }",
				"add rule in-lab.probe-2 ct state invalid drop",
				"add rule in-lab.probe-2 ip saddr 198.18.0.13 accept",
				`add rule in-lab.probe-2 limit rate 10/second burst 20 packets log prefix "nftguard:drop:in:8d1e1b3b8bfe" group 100`,
				"add rule in-lab.probe-2 drop",
				"flush chain eg-lab.probe",
				"flush chain in-lab.probe",
				"delete chain eg-lab.probe",
				"delete chain in-lab.probe",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, g := dptest.Sample()
			tc.change(&s, g)
			p := model.Diff(cur, mustRender(t, s, g))
			got := planLines(p)
			// Pod keys in log prefixes depend on names; compare them as
			// computed.
			want := slices.Clone(tc.want)
			for i, w := range want {
				want[i] = fixPodKeys(w)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("plan:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// fixPodKeys replaces the pod key in a log prefix of an expected line by
// the real one, so expectations stay readable.
func fixPodKeys(line string) string {
	for _, p := range [][2]string{{"shop", "web-1"}, {"lab", "probe"}, {"lab", "probe-2"}} {
		if strings.Contains(line, p[0]+"."+p[1]+" ") || strings.HasSuffix(line, p[0]+"."+p[1]) {
			i := strings.Index(line, `:in:`)
			if i < 0 {
				i = strings.Index(line, `:eg:`)
			}
			if i >= 0 {
				return line[:i+4] + podKeyOf(p[0], p[1]) + line[i+16:]
			}
		}
	}
	return line
}

func podKeyOf(ns, name string) string {
	tab, _ := render.Render(v1alpha1.NodeRuleSetSpec{Pods: []v1alpha1.LocalPod{{Namespace: ns, Name: name, IPs: []string{"198.18.0.1"},
		Ingress: &v1alpha1.Isolation{}}}}, nil, render.Options{})
	rules := tab.Chain(render.PodChainName("in", ns, name)).Rules
	r := rules[len(rules)-2].String() // the log rule, before the drop
	i := strings.Index(r, ":in:")
	return r[i+4 : i+16]
}

func TestRuleOps(t *testing.T) {
	mk := func(ids ...string) []*model.Rule {
		var rs []*model.Rule
		for i, id := range ids {
			rs = append(rs, model.KernelRule(nil, id, uint64(10*(i+1))))
		}
		return rs
	}
	want := func(ids ...string) []*model.Rule {
		var rs []*model.Rule
		for _, id := range ids {
			rs = append(rs, model.KernelRule([]model.Stmt{model.Verdict{Kind: model.VerdictJump, Chain: id}}, id, 0))
		}
		return rs
	}
	for _, tc := range []struct {
		cur, want []string
		ops       string
	}{
		{[]string{"a", "b", "c"}, []string{"a", "b", "c"}, ""},
		{[]string{"a", "b", "c"}, []string{"a", "x", "c", "y"},
			"delete rule c handle 20\ninsert rule c position 30 jump x\nadd rule c jump y\n"},
		{[]string{"a", "b"}, []string{"x", "y", "a", "b"},
			"insert rule c position 10 jump x\ninsert rule c position 10 jump y\n"},
		{[]string{"a", "b", "c"}, []string{"c", "b", "a"},
			"delete rule c handle 10\ndelete rule c handle 20\nadd rule c jump b\nadd rule c jump a\n"},
		{nil, []string{"a"}, "add rule c jump a\n"},
		{[]string{"a"}, nil, "delete rule c handle 10\n"},
	} {
		p := &model.Plan{Ops: model.RuleOps("c", mk(tc.cur...), want(tc.want...))}
		if got := p.String(); got != tc.ops {
			t.Errorf("%v -> %v:\n%s\nwant\n%s", tc.cur, tc.want, got, tc.ops)
		}
	}
	// Without handles (a chain last written by this process), the chain is
	// rewritten.
	noHandles := []*model.Rule{model.KernelRule(nil, "a", 0), model.KernelRule(nil, "b", 0)}
	p := &model.Plan{Ops: model.RuleOps("c", noHandles, want("a"))}
	if got := p.String(); got != "flush chain c\nadd rule c jump a\n" {
		t.Errorf("without handles:\n%s", got)
	}
}

// TestDiffRebuild: a kernel set of the wrong type (say, written by an older
// version, or by hand) is replaced, with every rule rewritten, in order.
func TestDiffRebuild(t *testing.T) {
	spec, groups := dptest.Sample()
	want := mustRender(t, spec, groups)
	cur := asKernel(want)
	// The shared IPv4 set is an interval set of addresses in the kernel; a chain nftguard
	// no longer has is hooked with another priority.
	var sets []*model.Set
	for _, s := range cur.Sets {
		if s.Name == shared4("shop-frontend") {
			s = &model.Set{Name: s.Name, Kind: model.SetIPv4Interval}
		}
		sets = append(sets, s)
	}
	cur.Sets = sets
	cur.Chains = append(cur.Chains, &model.Chain{Name: "stale", Hook: model.HookOutput, KernelSig: "type filter hook output priority -5 policy drop"})
	p := model.Diff(cur, want)
	if !p.Rebuild {
		t.Fatal("no rebuild")
	}
	lines := planLines(p)
	if lines[0] != "flush table inet nftguard" {
		t.Fatalf("first op %q", lines[0])
	}
	for _, l := range []string{
		"flush set eg4", "flush set in4", "flush set in6",
		"delete set " + shared4("shop-frontend"), "delete chain stale",
		"add set " + shared4("shop-frontend") + " { type mark . ipv4_addr; } { " + tagged("shop-frontend", "198.18.1.1") + ", " + tagged("shop-frontend", "198.18.1.2") + " }",
	} {
		if !slices.Contains(lines, l) {
			t.Errorf("plan lacks %q:\n%s", l, p)
		}
	}
	_, rules, _ := want.Counts()
	if c := p.Changes(); c.RulesAdded != rules || c.RulesDeleted != 0 {
		t.Errorf("rebuild changes %+v, want %d rules added", c, rules)
	}
	// Deletions come before any addition.
	lastDel := -1
	firstAdd := len(lines)
	for i, l := range lines {
		if strings.HasPrefix(l, "delete") {
			lastDel = i
		}
		if strings.HasPrefix(l, "add") && i < firstAdd {
			firstAdd = i
		}
	}
	if lastDel > firstAdd {
		t.Errorf("a deletion follows an addition:\n%s", p)
	}
}

func TestSplitPlan(t *testing.T) {
	var addrs []string
	for i := range 3000 {
		addrs = append(addrs, netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}).String())
	}
	spec := v1alpha1.NodeRuleSetSpec{
		Pods: []v1alpha1.LocalPod{{Namespace: "a", Name: "b", IPs: []string{"198.18.0.1"},
			Ingress: &v1alpha1.Isolation{Rules: []string{"r"}}}},
		Rules: []v1alpha1.Rule{{ID: "r", Direction: v1alpha1.DirectionIngress, Peers: []v1alpha1.Peer{{AddressGroup: "big"}}}},
	}
	old := mustRender(t, spec, map[string]v1alpha1.AddressGroupSpec{"big": {Addresses: addrs[:2000]}})
	// The new group drops 1000 addresses and adds 1000; the pod gains a rule.
	spec.Rules = append(spec.Rules, v1alpha1.Rule{ID: "r2", Direction: v1alpha1.DirectionIngress})
	spec.Pods[0].Ingress.Rules = []string{"r", "r2"}
	next := mustRender(t, spec, map[string]v1alpha1.AddressGroupSpec{"big": {Addresses: addrs[1000:]}})
	p := model.Diff(asKernel(old), next)

	if b := splitPlan(p, defaultMaxBatchBytes); len(b) != 1 {
		t.Fatalf("%d batches under the default budget", len(b))
	}
	batches := splitPlan(p, 16<<10)
	if len(batches) < 3 {
		t.Fatalf("%d batches", len(batches))
	}
	var kinds []string
	for _, b := range batches {
		var ks []string
		for _, o := range b {
			ks = append(ks, strings.Fields(o.String())[0]+" "+strings.Fields(o.String())[1])
		}
		kinds = append(kinds, strings.Join(slices.Compact(ks), ","))
	}
	// Additions first, the structural change alone, removals last.
	main := -1
	for i, k := range kinds {
		if strings.Contains(k, "add rule") || strings.Contains(k, "insert rule") {
			main = i
		}
	}
	if main < 0 {
		t.Fatalf("no batch carries the rules: %v", kinds)
	}
	for i, k := range kinds {
		switch {
		case i < main && k != "add element":
			t.Errorf("batch %d before the main one: %s", i, k)
		case i > main && k != "delete element":
			t.Errorf("batch %d after the main one: %s", i, k)
		case i == main && strings.Contains(k, "element ag4-big"):
			t.Errorf("main batch has address set elements: %s", k)
		}
	}
	added, deleted := 0, 0
	for _, b := range batches {
		size := 0
		for _, o := range b {
			size += opBytes(o)
			if o.Kind == model.OpAddElements {
				added += len(o.Elems)
			}
			if o.Kind == model.OpDelElements {
				deleted += len(o.Elems)
			}
		}
		if size > 16<<10 && len(b) > 1 {
			t.Errorf("batch of %d bytes", size)
		}
	}
	if added != 1000 || deleted != 1000 {
		t.Fatalf("split moved %d additions and %d deletions", added, deleted)
	}
	// A rebuild is never split.
	p.Rebuild = true
	if b := splitPlan(p, 16<<10); len(b) != 1 {
		t.Fatal("rebuild split")
	}
}

// TestSplitPlanFamily: when a split delta gives a group its first member of
// a family, the new set is created (with its elements) before the batch that
// adds the rule line matching it; when it removes the last, the set is
// deleted after the rule line, in the same batch.
func TestSplitPlanFamily(t *testing.T) {
	var v4, v6 []string
	for i := range 3000 {
		v4 = append(v4, netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}).String())
		v6 = append(v6, netip.AddrFrom16([16]byte{0: 0xfd, 14: byte(i >> 8), 15: byte(i)}).String())
	}
	spec := v1alpha1.NodeRuleSetSpec{
		Pods: []v1alpha1.LocalPod{{Namespace: "a", Name: "b", IPs: []string{"198.18.0.1"},
			Ingress: &v1alpha1.Isolation{Rules: []string{"r"}}}},
		Rules: []v1alpha1.Rule{{ID: "r", Direction: v1alpha1.DirectionIngress, Peers: []v1alpha1.Peer{{AddressGroup: "big"}}}},
	}
	// Both directions also swap 1000 IPv4 members, so that the plans split.
	only4 := mustRender(t, spec, map[string]v1alpha1.AddressGroupSpec{"big": {Addresses: v4[:2000]}})
	dual := mustRender(t, spec, map[string]v1alpha1.AddressGroupSpec{"big": {Addresses: append(slices.Clone(v4[1000:]), v6[:2000]...)}})

	// index returns the batch holding the op printed with prefix.
	index := func(batches [][]model.Op, prefix string) int {
		t.Helper()
		for i, b := range batches {
			for _, o := range b {
				if strings.HasPrefix(o.String(), prefix) {
					return i
				}
			}
		}
		t.Fatalf("no %q in the batches", prefix)
		return -1
	}

	up := splitPlan(model.Diff(asKernel(only4), dual), 16<<10)
	set, elems, rule := index(up, "add set "+shared6("big")+" "), index(up, "add element "+shared6("big")+" "), index(up, "add rule rule-r "+tag("big")+" . ip6 saddr @"+shared6("big")+" accept")
	if len(up) < 3 || set > elems || elems >= rule {
		t.Fatalf("first IPv6 members: set in batch %d, elements from %d, rule in %d of %d", set, elems, rule, len(up))
	}

	down := splitPlan(model.Diff(asKernel(dual), only4), 16<<10)
	del, drop := index(down, "delete rule rule-r handle"), index(down, "delete set "+shared6("big"))
	if len(down) < 3 || del != drop {
		t.Fatalf("last IPv6 members: rule deleted in batch %d, set in %d of %d", del, drop, len(down))
	}
	ops := down[del]
	if slices.IndexFunc(ops, func(o model.Op) bool { return o.Kind == model.OpDelRule }) > slices.IndexFunc(ops, func(o model.Op) bool { return o.Kind == model.OpDelSet }) {
		t.Fatalf("set deleted before the rule that references it:\n%s", (&model.Plan{Ops: ops}).String())
	}
}

// fakeSender records the batches a Programmer sends, for tests without a
// kernel.
type fakeSender struct{ batches [][]byte }

func (f *fakeSender) send(buf []byte, ackSeq uint32) error {
	f.batches = append(f.batches, slices.Clone(buf))
	return nil
}
func (f *fakeSender) close() error { return nil }

func TestQueue(t *testing.T) {
	var addrs []string
	for i := range 5000 {
		addrs = append(addrs, netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}).String())
	}
	tab := mustRender(t, v1alpha1.NodeRuleSetSpec{
		Pods:  []v1alpha1.LocalPod{{Namespace: "a", Name: "b", IPs: []string{"198.18.0.1"}, Ingress: &v1alpha1.Isolation{Rules: []string{"r"}}}},
		Rules: []v1alpha1.Rule{{ID: "r", Direction: v1alpha1.DirectionIngress, Peers: []v1alpha1.Peer{{AddressGroup: "big"}}}},
	}, map[string]v1alpha1.AddressGroupSpec{"big": {Addresses: addrs}})
	f := &fakeSender{}
	p := &Programmer{conn: f, maxBatchBytes: defaultMaxBatchBytes, seq: 1}
	n, err := p.execute(model.Diff(nil, tab))
	if err != nil || n != 1 || len(f.batches) != 1 {
		t.Fatalf("execute: %d transactions, %d batches sent, %v", n, len(f.batches), err)
	}
	msgs := encodedMessages(t, f.batches[0])
	elems, elemMsgs, sets, rules := 0, 0, 0, 0
	for _, m := range msgs[1 : len(msgs)-1] {
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			t.Fatal(err)
		}
		attrs := map[uint16][]byte{}
		for ad.Next() {
			attrs[ad.Type()] = ad.Bytes()
		}
		str := func(typ uint16) string { return strings.TrimRight(string(attrs[typ]), "\x00") }
		switch m.Header.Type & 0xff {
		case unix.NFT_MSG_NEWSETELEM:
			if str(unix.NFTA_SET_ELEM_LIST_SET) == shared4("big") {
				k, _ := parseAttrCount(attrs[unix.NFTA_SET_ELEM_LIST_ELEMENTS])
				elems += k
				elemMsgs++
			}
		case unix.NFT_MSG_NEWSET:
			if name := str(unix.NFTA_SET_NAME); name == shared4("big") && len(attrs[unix.NFTA_SET_ID]) != 4 {
				t.Errorf("set %s created without an id", name)
			}
			sets++
		case unix.NFT_MSG_NEWRULE:
			// Rules carry their id and compile to expressions.
			id := commentOf(attrs[unix.NFTA_RULE_USERDATA])
			if k, _ := parseAttrCount(attrs[unix.NFTA_RULE_EXPRESSIONS]); k == 0 || id == "" {
				t.Errorf("rule of chain %s: %d expressions, id %q", str(unix.NFTA_RULE_CHAIN), k, id)
			}
			rules++
		}
	}
	if elems != 5000 || elemMsgs < 2 || sets == 0 || rules == 0 {
		t.Fatalf("%s: %d elements in %d messages; %d sets, %d rules", shared4("big"), elems, elemMsgs, sets, rules)
	}
	if p.seq != msgs[len(msgs)-1].Header.Seq+1 {
		t.Fatalf("next batch numbered from %d after a batch ending at %d", p.seq, msgs[len(msgs)-1].Header.Seq)
	}
}

// parseAttrCount counts the attributes of a list.
func parseAttrCount(b []byte) (int, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return 0, err
	}
	n := 0
	for ad.Next() {
		n++
	}
	return n, ad.Err()
}

// encodedExprs encodes a rule with the batch encoder and returns its
// NFTA_RULE_EXPRESSIONS attribute, or the encoder's error.
func encodedExprs(t *testing.T, r *model.Rule) ([]byte, error) {
	t.Helper()
	b := newBatch(1, 0)
	b.addRule("c", r, false, 0)
	buf, _, _, err := b.finish()
	if err != nil {
		return nil, err
	}
	msgs := encodedMessages(t, buf)
	ad, err := netlink.NewAttributeDecoder(msgs[1].Data[4:])
	if err != nil {
		t.Fatal(err)
	}
	for ad.Next() {
		if ad.Type() == unix.NFTA_RULE_EXPRESSIONS {
			return ad.Bytes(), nil
		}
	}
	t.Fatalf("rule %q encoded without expressions", r)
	return nil, nil
}

// TestEncodeEveryStatement encodes every statement the renderer uses, and
// refuses a verdict the kernel does not know.
func TestEncodeEveryStatement(t *testing.T) {
	spec, groups := dptest.SampleWithPodRanges()
	tab := mustRender(t, spec, groups)
	kinds := map[string]bool{}
	for _, c := range tab.Chains {
		for _, r := range c.Rules {
			if _, err := encodedExprs(t, r); err != nil {
				t.Fatal(err)
			}
			for _, s := range r.Stmts {
				kinds[fmt.Sprintf("%T", s)] = true
				if s, ok := s.(model.AddrInSet); ok && s.Invert {
					kinds["inverted model.AddrInSet"] = true
				}
			}
		}
	}
	if !kinds["inverted model.AddrInSet"] {
		t.Error("sample table has no inverted set match")
	}
	for _, k := range []string{"model.CtState", "model.CtMark", "model.ICMPv6Types", "model.AddrInSet", "model.AddrVmap",
		"model.EndpointInSet", "model.PortsInSet", "model.DportIn", "model.LimitRate", "model.NFLog", "model.Verdict"} {
		if !kinds[k] {
			t.Errorf("sample table has no %s", k)
		}
	}
	if _, err := encodedExprs(t, model.NewRule(model.ProtoIs{Proto: model.ProtoUDP})); err != nil {
		t.Fatal(err)
	}
	for _, v := range []model.Verdict{{Kind: "reject"}, {Kind: model.VerdictJump}, {Kind: model.VerdictGoto}} {
		if _, err := encodedExprs(t, model.NewRule(v)); err == nil {
			t.Errorf("verdict %q encodes", v)
		}
	}
}

// TestDecompile: every rule the renderer writes decodes back from its
// encoded expressions to the same text, hence the same id.
func TestDecompile(t *testing.T) {
	spec, groups := dptest.SampleWithPodRanges()
	tab := mustRender(t, spec, groups)
	extra := []*model.Rule{model.NewRule(model.ProtoIs{Proto: model.ProtoUDP}, model.Verdict{Kind: model.VerdictAccept}), model.NewRule(model.DportIn{Proto: model.ProtoSCTP, From: 9, To: 9}, model.Verdict{Kind: model.VerdictGoto, Chain: "x"})}
	for _, c := range append(tab.Chains, &model.Chain{Name: "extra", Rules: extra}) {
		for _, r := range c.Rules {
			raw, err := encodedExprs(t, r)
			if err != nil {
				t.Fatal(err)
			}
			exprs, err := parseExprs(raw)
			if err != nil {
				t.Fatal(err)
			}
			stmts, ok := decompile(exprs)
			if !ok {
				t.Errorf("%s: %q does not decompile", c.Name, r)
				continue
			}
			back := &model.Rule{Stmts: stmts}
			if back.String() != r.String() || back.ID() != r.ID() {
				t.Errorf("%s: %q decompiles to %q", c.Name, r, back)
			}
		}
	}
}
