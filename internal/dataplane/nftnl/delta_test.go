package nftnl

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/dptest"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/nfttest"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

// basePolicy isolates b's ingress to TCP 80 from group pods-a.
func basePolicy(topo *topology, members ...string) policy {
	return policy{
		ingress: map[string][]string{"b": {"from-a"}},
		rules:   []v1alpha1.Rule{ingressRule("from-a", group("pods-a"), dptest.TCP(80))},
		groups:  map[string]v1alpha1.AddressGroupSpec{"pods-a": topo.addrs(members...)},
	}
}

// tag is a group's tag as rules and elements print it.
func tag(group string) string { return fmt.Sprintf("0x%08x", render.GroupTag(group)) }

// shared4 and shared6 name the shared set holding a group.
func shared4(group string) string { return render.SharedSetName(model.IPv4, render.GroupTag(group)) }
func shared6(group string) string { return render.SharedSetName(model.IPv6, render.GroupTag(group)) }

// tagged is an element of a shared set as it prints.
func tagged(group, addr string) string { return tag(group) + " . " + addr }

// assertInSync checks that the kernel holds exactly the applied table.
func assertInSync(t testing.TB, p *Programmer) {
	t.Helper()
	d, err := p.Verify()
	if err != nil {
		t.Fatal(err)
	}
	if len(d) > 0 {
		t.Fatalf("kernel differs from the applied table:\n%s", strings.Join(d, "\n"))
	}
}

func assertPlan(t testing.TB, p *Programmer, st Stats, want ...string) {
	t.Helper()
	got := planLines(p.lastPlan)
	if len(want) == 0 {
		got = nil
		if len(p.lastPlan.Ops) > 0 {
			got = planLines(p.lastPlan)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("batch:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if st.Full {
		t.Errorf("apply was a full reconcile")
	}
}

// TestIncrementalApply: each change sends only what changed, in one
// transaction, and the kernel then holds exactly the desired table.
func TestIncrementalApply(t *testing.T) {
	topo := newTopology(t, "a", "b", "c")
	a, b, c := topo.pods["a"], topo.pods["b"], topo.pods["c"]
	p := programmer(t, topo.node)
	pol := basePolicy(topo, "a")
	st := topo.apply(t, p, pol)
	if !st.Full || st.Transactions != 1 {
		t.Fatalf("first apply: %+v", st)
	}
	assertInSync(t, p)

	// Unchanged: nothing is sent.
	st = topo.apply(t, p, pol)
	if st.Transactions != 0 || !st.Changes.Empty() {
		t.Fatalf("unchanged apply sent %+v", st)
	}

	t.Run("add a group member", func(t *testing.T) {
		pol.groups["pods-a"] = topo.addrs("a", "c")
		st := topo.apply(t, p, pol)
		assertPlan(t, p, st, "add element "+shared4("pods-a")+" { "+tagged("pods-a", "198.18.0.3")+" }", "add element "+shared6("pods-a")+" { "+tagged("pods-a", "fd00::3")+" }")
		if st.Transactions != 1 || st.Changes.ElementsAdded != 2 || st.Changes.ElementsDeleted != 0 {
			t.Fatalf("stats %+v", st)
		}
		assertInSync(t, p)
		check(t, tcpProbe("c->b", c.ns, b.ip4, 80, true), tcpProbe("c->b6", c.ns, b.ip6, 80, true))
	})

	t.Run("remove a group member", func(t *testing.T) {
		pol.groups["pods-a"] = topo.addrs("c")
		st := topo.apply(t, p, pol)
		assertPlan(t, p, st, "delete element "+shared4("pods-a")+" { "+tagged("pods-a", "198.18.0.1")+" }", "delete element "+shared6("pods-a")+" { "+tagged("pods-a", "fd00::1")+" }")
		assertInSync(t, p)
		check(t, tcpProbe("a->b", a.ns, b.ip4, 80, false), tcpProbe("c->b", c.ns, b.ip4, 80, true))
	})

	t.Run("add a pod", func(t *testing.T) {
		pol.ingress["a"] = []string{"from-a"}
		st := topo.apply(t, p, pol)
		assertPlan(t, p, st,
			"add chain in-x.a",
			"add element in4 { 198.18.0.1 : goto in-x.a }",
			"add element in6 { fd00::1 : goto in-x.a }",
			"add rule in-x.a ct state invalid drop",
			"add rule in-x.a ip saddr 198.18.0.1 accept",
			"add rule in-x.a ip6 saddr fd00::1 accept",
			"add rule in-x.a jump rule-from-a",
			`add rule in-x.a limit rate 10/second burst 20 packets log prefix "nftguard:drop:in:`+render.PodKey("x", "a")+`" group 100`,
			"add rule in-x.a drop",
		)
		assertInSync(t, p)
		check(t,
			tcpProbe("b->a", b.ns, a.ip4, 80, false),
			tcpProbe("c->a", c.ns, a.ip4, 80, true),
			tcpProbe("c->a:81", c.ns, a.ip6, 81, false),
		)
	})

	t.Run("add a rule to a pod", func(t *testing.T) {
		pol.rules = append(pol.rules, ingressRule("udp-any", nil, v1alpha1.Port{Protocol: v1alpha1.ProtocolUDP}))
		pol.ingress["b"] = []string{"from-a", "udp-any"}
		st := topo.apply(t, p, pol)
		lines := planLines(p.lastPlan)
		if len(lines) != 3 || lines[0] != "add chain rule-udp-any" || !strings.HasPrefix(lines[1], "insert rule in-x.b position ") ||
			!strings.HasSuffix(lines[1], " jump rule-udp-any") || lines[2] != "add rule rule-udp-any meta l4proto udp accept" {
			t.Fatalf("batch:\n%s", strings.Join(lines, "\n"))
		}
		if st.Changes.RulesAdded != 2 || st.Changes.RulesDeleted != 0 || st.Changes.Flushes != 0 {
			t.Fatalf("stats %+v", st)
		}
		assertInSync(t, p)
		check(t, udpProbe("a->b udp", a.ns, b.ip4, 8080, true), tcpProbe("a->b tcp", a.ns, b.ip4, 80, false))
	})

	t.Run("remove a rule", func(t *testing.T) {
		pol.ingress["b"] = []string{"udp-any"}
		st := topo.apply(t, p, pol)
		lines := planLines(p.lastPlan)
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "delete rule in-x.b handle ") {
			t.Fatalf("batch:\n%s", strings.Join(lines, "\n"))
		}
		if st.Changes != (model.Changes{RulesDeleted: 1}) {
			t.Fatalf("stats %+v", st)
		}
		assertInSync(t, p)
		check(t, tcpProbe("c->b", c.ns, b.ip4, 80, false), udpProbe("c->b udp", c.ns, b.ip4, 81, true))
	})

	t.Run("remove a pod and the rules only it used", func(t *testing.T) {
		delete(pol.ingress, "a")
		pol.rules = pol.rules[1:]
		delete(pol.groups, "pods-a")
		st := topo.apply(t, p, pol)
		assertPlan(t, p, st,
			"delete element in4 { 198.18.0.1 : goto in-x.a }",
			"delete element in6 { fd00::1 : goto in-x.a }",
			"flush chain in-x.a",
			"flush chain rule-from-a",
			"delete set "+shared4("pods-a"),
			"delete set "+shared6("pods-a"),
			"delete chain in-x.a",
			"delete chain rule-from-a",
		)
		assertInSync(t, p)
		check(t, tcpProbe("b->a", b.ns, a.ip4, 80, true))
	})
}

// TestFamilyAppears: a group's set of a family, and the rule line matching
// it, come with the family's first member and go with its last, in the one
// transaction of the membership change, and nothing else is sent.
func TestFamilyAppears(t *testing.T) {
	topo := newTopology(t, "a", "b", "c")
	a, b, c := topo.pods["a"], topo.pods["b"], topo.pods["c"]
	p := programmer(t, topo.node)
	only4 := func(pods ...string) v1alpha1.AddressGroupSpec {
		var g v1alpha1.AddressGroupSpec
		for _, name := range pods {
			g.Addresses = append(g.Addresses, topo.pods[name].ip4.String())
		}
		return g
	}
	pol := basePolicy(topo)
	pol.groups["pods-a"] = only4("a")
	topo.apply(t, p, pol)
	if got := p.applied.Set(shared6("pods-a")); got != nil {
		t.Fatalf("IPv4-only group has an IPv6 set: %v", got)
	}
	check(t,
		tcpProbe("a->b", a.ns, b.ip4, 80, true),
		tcpProbe("a->b6", a.ns, b.ip6, 80, false),
		tcpProbe("c->b", c.ns, b.ip4, 80, false),
	)

	t.Run("first IPv6 member", func(t *testing.T) {
		pol.groups["pods-a"] = topo.addrs("a")
		st := topo.apply(t, p, pol)
		assertPlan(t, p, st,
			"add set "+shared6("pods-a")+" { type mark . ipv6_addr; } { "+tagged("pods-a", "fd00::1")+" }",
			"add rule rule-from-a tcp dport 80 "+tag("pods-a")+" . ip6 saddr @"+shared6("pods-a")+" accept",
		)
		if st.Transactions != 1 || st.Changes != (model.Changes{SetsAdded: 1, ElementsAdded: 1, RulesAdded: 1}) {
			t.Fatalf("stats %+v", st)
		}
		check(t,
			tcpProbe("a->b", a.ns, b.ip4, 80, true),
			tcpProbe("a->b6", a.ns, b.ip6, 80, true),
			tcpProbe("c->b6", c.ns, b.ip6, 80, false),
			tcpProbe("a->b6:81", a.ns, b.ip6, 81, false),
		)
	})

	t.Run("IPv6 member change", func(t *testing.T) {
		g := topo.addrs("a")
		g.Addresses = append(g.Addresses, c.ip6.String())
		pol.groups["pods-a"] = g
		st := topo.apply(t, p, pol)
		assertPlan(t, p, st, "add element "+shared6("pods-a")+" { "+tagged("pods-a", "fd00::3")+" }")
		check(t, tcpProbe("c->b6", c.ns, b.ip6, 80, true), tcpProbe("c->b", c.ns, b.ip4, 80, false))
	})

	t.Run("last IPv6 member", func(t *testing.T) {
		pol.groups["pods-a"] = only4("a")
		st := topo.apply(t, p, pol)
		lines := planLines(p.lastPlan)
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "delete rule rule-from-a handle ") || lines[1] != "delete set "+shared6("pods-a") {
			t.Fatalf("batch:\n%s", strings.Join(lines, "\n"))
		}
		if st.Transactions != 1 || st.Changes != (model.Changes{SetsDeleted: 1, RulesDeleted: 1}) {
			t.Fatalf("stats %+v", st)
		}
		check(t,
			tcpProbe("a->b", a.ns, b.ip4, 80, true),
			tcpProbe("a->b6", a.ns, b.ip6, 80, false),
			tcpProbe("c->b6", c.ns, b.ip6, 80, false),
		)
	})

	t.Run("no member left", func(t *testing.T) {
		pol.groups["pods-a"] = v1alpha1.AddressGroupSpec{}
		st := topo.apply(t, p, pol)
		lines := planLines(p.lastPlan)
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "delete rule rule-from-a handle ") || lines[1] != "delete set "+shared4("pods-a") {
			t.Fatalf("batch:\n%s", strings.Join(lines, "\n"))
		}
		if st.Transactions != 1 {
			t.Fatalf("stats %+v", st)
		}
		check(t, tcpProbe("a->b", a.ns, b.ip4, 80, false), tcpProbe("a->b6", a.ns, b.ip6, 80, false))
	})

	t.Run("dual-stack at once", func(t *testing.T) {
		pol.groups["pods-a"] = topo.addrs("a")
		st := topo.apply(t, p, pol)
		assertPlan(t, p, st,
			"add set "+shared4("pods-a")+" { type mark . ipv4_addr; } { "+tagged("pods-a", "198.18.0.1")+" }",
			"add set "+shared6("pods-a")+" { type mark . ipv6_addr; } { "+tagged("pods-a", "fd00::1")+" }",
			"add rule rule-from-a tcp dport 80 "+tag("pods-a")+" . ip saddr @"+shared4("pods-a")+" accept",
			"add rule rule-from-a tcp dport 80 "+tag("pods-a")+" . ip6 saddr @"+shared6("pods-a")+" accept",
		)
		check(t, tcpProbe("a->b", a.ns, b.ip4, 80, true), tcpProbe("a->b6", a.ns, b.ip6, 80, true))
	})
}

// TestAdoption simulates an agent restart: a new Programmer adopts the
// table the old one left, sending nothing when it is current and only the
// difference otherwise, while an established connection keeps working and
// a blocked flow never gets through.
func TestAdoption(t *testing.T) {
	topo := newTopology(t, "a", "b", "c")
	a, b, c := topo.pods["a"], topo.pods["b"], topo.pods["c"]
	old := programmer(t, topo.node)
	pol := basePolicy(topo, "a")
	pol.egress = map[string][]string{"c": nil}
	topo.apply(t, old, pol)

	conn := dialIn(t, a.ns, b.ip4, 80)
	echo(t, conn, "before")

	leaks := probeLoop(t, c.ns, b.ip4, 80)

	// The old agent goes away; the table stays.
	old.Close()
	echo(t, conn, "between")

	fresh := programmer(t, topo.node)
	st := topo.apply(t, fresh, pol)
	if !st.Full || st.Transactions != 0 || !st.Changes.Empty() {
		t.Fatalf("adopting the current table sent %+v:\n%s", st, fresh.lastPlan)
	}
	echo(t, conn, "adopted")

	// A restart that finds a stale table (c's egress isolation ended
	// while no agent ran): only that is removed.
	other := programmer(t, topo.node)
	delete(pol.egress, "c")
	st = topo.apply(t, other, pol)
	lines := planLines(other.lastPlan)
	if !st.Full || st.Transactions != 1 || !slices.Equal(lines, []string{
		"delete element eg4 { 198.18.0.3 : goto eg-y.c }",
		"delete element eg6 { fd00::3 : goto eg-y.c }",
		"flush chain eg-y.c",
		"delete chain eg-y.c",
	}) {
		t.Fatalf("stale adoption: %+v\n%s", st, other.lastPlan)
	}
	echo(t, conn, "after")
	assertInSync(t, other)
	if n := leaks(); n > 0 {
		t.Fatalf("blocked flow c->b got through %d times", n)
	}
	check(t, tcpProbe("a->b new", a.ns, b.ip4, 80, true), tcpProbe("c->a (c no longer isolated)", c.ns, a.ip4, 80, true))
}

func dialIn(t testing.TB, ns netns.NsHandle, dst netip.Addr, port int) net.Conn {
	t.Helper()
	var conn net.Conn
	if err := inNS(ns, func() error {
		var err error
		conn, err = net.DialTimeout("tcp", netip.AddrPortFrom(dst, uint16(port)).String(), time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func echo(t testing.TB, conn net.Conn, msg string) {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte(msg + "\n")); err != nil {
		t.Fatalf("established connection, %s: %v", msg, err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || line != msg+"\n" {
		t.Fatalf("established connection, %s: read %q, %v", msg, line, err)
	}
}

// probeLoop keeps opening TCP connections that must be blocked until the
// test calls the returned function, which returns how many got through.
func probeLoop(t testing.TB, from netns.NsHandle, dst netip.Addr, port int) func() int {
	var leaks atomic.Int32
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if tcpConnect(from, dst, port, blockedTimeout) {
					leaks.Add(1)
				}
			}
		}()
	}
	var once sync.Once
	done := func() int {
		once.Do(func() { close(stop); wg.Wait() })
		return int(leaks.Load())
	}
	t.Cleanup(func() { done() })
	return done
}

// TestDriftRepair tampers with the table through google/nftables, as
// someone running nft would, and checks that Verify notices and Apply
// repairs.
func TestDriftRepair(t *testing.T) {
	topo := newTopology(t, "a", "b", "c")
	a, b, c := topo.pods["a"], topo.pods["b"], topo.pods["c"]
	p := programmer(t, topo.node)
	pol := basePolicy(topo, "a")
	desired, err := render.Render(topo.spec(pol), pol.groups, render.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Apply(desired); err != nil {
		t.Fatal(err)
	}
	tamper, err := nftables.New(nftables.WithNetNSFd(int(topo.node)))
	if err != nil {
		t.Fatal(err)
	}
	tab := nfttest.Table()

	repair := func(t *testing.T, mention string) Stats {
		t.Helper()
		d, err := p.Verify()
		if err != nil {
			t.Fatal(err)
		}
		if len(d) == 0 || !strings.Contains(strings.Join(d, "\n"), mention) {
			t.Fatalf("drift %q does not mention %q", d, mention)
		}
		st, err := p.Apply(desired)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Full {
			t.Errorf("repair was not a full reconcile")
		}
		assertInSync(t, p)
		return st
	}

	t.Run("flushed chain", func(t *testing.T) {
		tamper.FlushChain(&nftables.Chain{Name: "in-x.b", Table: tab})
		if err := tamper.Flush(); err != nil {
			t.Fatal(err)
		}
		// An empty pod chain returns to the base chain: c gets in.
		check(t, tcpProbe("c->b (tampered)", c.ns, b.ip4, 80, true))
		st := repair(t, "add rule in-x.b jump rule-from-a")
		// Its invalid-state drop, two self-accept rules, the jump, the log
		// and the drop.
		if st.Changes.RulesAdded != 6 || st.Changes.ElementsAdded != 0 {
			t.Errorf("repair sent %+v", st.Changes)
		}
		check(t, tcpProbe("c->b", c.ns, b.ip4, 80, false), tcpProbe("a->b", a.ns, b.ip4, 80, true))
	})

	t.Run("deleted element", func(t *testing.T) {
		key := binary.NativeEndian.AppendUint32(nil, render.GroupTag("pods-a"))
		if err := tamper.SetDeleteElements(nfttest.Set(&model.Set{Name: shared4("pods-a"), Kind: model.SetTaggedIPv4}),
			[]nftables.SetElement{{Key: append(key, a.ip4.AsSlice()...)}}); err != nil {
			t.Fatal(err)
		}
		if err := tamper.Flush(); err != nil {
			t.Fatal(err)
		}
		check(t, tcpProbe("a->b (tampered)", a.ns, b.ip4, 80, false))
		st := repair(t, "add element "+shared4("pods-a")+" { "+tagged("pods-a", "198.18.0.1")+" }")
		if st.Changes != (model.Changes{ElementsAdded: 1}) {
			t.Errorf("repair sent %+v", st.Changes)
		}
		check(t, tcpProbe("a->b", a.ns, b.ip4, 80, true))
	})

	t.Run("rule added by hand", func(t *testing.T) {
		tamper.InsertRule(&nftables.Rule{Table: tab, Chain: &nftables.Chain{Name: "in-x.b", Table: tab},
			Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
		if err := tamper.Flush(); err != nil {
			t.Fatal(err)
		}
		check(t, tcpProbe("c->b (tampered)", c.ns, b.ip4, 80, true))
		st := repair(t, "delete rule in-x.b handle")
		if st.Changes != (model.Changes{RulesDeleted: 1}) {
			t.Errorf("repair sent %+v", st.Changes)
		}
		check(t, tcpProbe("c->b", c.ns, b.ip4, 80, false))
	})

	t.Run("deleted table", func(t *testing.T) {
		tamper.DelTable(tab)
		if err := tamper.Flush(); err != nil {
			t.Fatal(err)
		}
		check(t, tcpProbe("c->b (no table)", c.ns, b.ip4, 80, true))
		repair(t, "add table inet nftguard")
		check(t, tcpProbe("c->b", c.ns, b.ip4, 80, false), tcpProbe("a->b", a.ns, b.ip4, 80, true))
	})

	t.Run("drift found by the next apply", func(t *testing.T) {
		// Without Verify, an incremental apply that meets a missing
		// object fails and retries at once as a full reconcile.
		tamper.FlushSet(&nftables.Set{Table: tab, Name: shared4("pods-a")})
		if err := tamper.Flush(); err != nil {
			t.Fatal(err)
		}
		pol.groups["pods-a"] = topo.addrs("b")
		next, err := render.Render(topo.spec(pol), pol.groups, render.Options{})
		if err != nil {
			t.Fatal(err)
		}
		st, err := p.Apply(next)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Full {
			t.Fatalf("apply over a flushed set: %+v", st)
		}
		assertInSync(t, p)
	})

	t.Run("set of the wrong type", func(t *testing.T) {
		// Someone left the shared IPv6 set as an interval set of addresses: it is
		// replaced in one rebuilding transaction.
		st, err := p.Apply(desired)
		if err != nil {
			t.Fatal(err)
		}
		_ = st
		tamper.FlushTable(tab)
		tamper.DelSet(&nftables.Set{Table: tab, Name: shared6("pods-a")})
		if err := tamper.AddSet(&nftables.Set{Table: tab, Name: shared6("pods-a"), KeyType: nftables.TypeIP6Addr, Interval: true}, nil); err != nil {
			t.Fatal(err)
		}
		if err := tamper.Flush(); err != nil {
			t.Fatal(err)
		}
		d, err := p.Verify()
		if err != nil || len(d) == 0 {
			t.Fatalf("drift %v, %v", d, err)
		}
		st, err = p.Apply(desired)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Rebuild || st.Transactions != 1 {
			t.Fatalf("stats %+v", st)
		}
		assertInSync(t, p)
		check(t, tcpProbe("c->b", c.ns, b.ip4, 80, false), tcpProbe("a->b6", a.ns, b.ip6, 80, true))
	})
}
