package nftnl

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// The upgrade tests start from tables that earlier releases wrote, stored
// as the raw netlink batch each release sent for a cold start
// (testdata/upgrade/*.nlbatch, with the table it held in the .nft file of
// the same name). They are replayed byte for byte, never re-encoded, so a
// change to today's model or encoder cannot change where an upgrade starts.
// Both were recorded for the topology of newTopology(t, "a", "b", "c") and
// basePolicy with members "a":
//   - first-release: a set per group and family, rule lines that match the
//     peer set before the port;
//   - e727cf3: shared tagged sets, port before peer (the layout before the
//     dataplane was split into model, render and netlink packages).

// replayBatch sends a recorded batch to the kernel of the node namespace
// as it is, and waits for the kernel's acknowledgement.
func replayBatch(t testing.TB, topo *topology, name string) {
	t.Helper()
	buf, err := os.ReadFile(filepath.Join("testdata", "upgrade", name+".nlbatch"))
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf)
	if err != nil || len(msgs) < 3 {
		t.Fatalf("recorded batch %s: %d messages, %v", name, len(msgs), err)
	}
	s, err := newBatchSocket(int(topo.node), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	// The encoder asks for the acknowledgement of the batch's last change.
	var ack uint32
	for _, m := range msgs {
		if m.Header.Flags&syscall.NLM_F_ACK != 0 {
			ack = m.Header.Seq
		}
	}
	if ack == 0 {
		t.Fatalf("recorded batch %s asks for no acknowledgement", name)
	}
	if err := s.send(buf, ack); err != nil {
		t.Fatalf("replaying %s: %v", name, err)
	}
}

// upgrade replays the recorded table of release from, checks that it
// enforces basePolicy, then starts a fresh Programmer on it with the same
// policy while a connection is established and a blocked flow is probed. It
// returns the fresh Programmer's stats.
func upgrade(t *testing.T, from string) (*Programmer, Stats) {
	topo := newTopology(t, "a", "b", "c")
	a, b, c := topo.pods["a"], topo.pods["b"], topo.pods["c"]
	replayBatch(t, topo, from)
	check(t, tcpProbe("a->b ("+from+")", a.ns, b.ip4, 80, true), tcpProbe("c->b ("+from+")", c.ns, b.ip4, 80, false))
	conn := dialIn(t, a.ns, b.ip4, 80)
	echo(t, conn, "before")
	leaks := probeLoop(t, c.ns, b.ip4, 80)

	fresh := programmer(t, topo.node)
	st := topo.apply(t, fresh, basePolicy(topo, "a"))
	echo(t, conn, "after")
	if n := leaks(); n > 0 {
		t.Fatalf("blocked flow c->b got through %d times during the upgrade", n)
	}
	assertInSync(t, fresh)
	check(t, tcpProbe("a->b", a.ns, b.ip4, 80, true), tcpProbe("a->b6", a.ns, b.ip6, 80, true), tcpProbe("c->b", c.ns, b.ip4, 80, false))
	return fresh, st
}

// TestUpgradeFromFirstRelease: an agent finding the first release's table
// rewrites it to the current layout in one transaction, while an
// established connection keeps working and a blocked flow never gets
// through.
func TestUpgradeFromFirstRelease(t *testing.T) {
	fresh, st := upgrade(t, "first-release")
	if !st.Full || st.Transactions != 1 {
		t.Fatalf("upgrade: %+v\n%s", st, fresh.lastPlan)
	}
	plan := fresh.lastPlan.String()
	for _, want := range []string{"delete set ag4-pods-a", "delete set ag6-pods-a", "add set " + shared4("pods-a")} {
		if !strings.Contains(plan, want) {
			t.Errorf("upgrade plan lacks %q:\n%s", want, plan)
		}
	}
}

// TestUpgradeFromE727cf3: the layout written before the dataplane split
// differs from today's by the rules that accept an isolated pod's traffic
// to itself (through a Service), and by where neighbour discovery is
// accepted and invalid packets are dropped (each base chain's two rules
// for them give way to two on input, with hop limit 255, and one in each
// Enforce pod chain), and by the first rule of each base chain, which drops
// revoked connections, so an agent adopts it by those rule changes, in one
// transaction, and touches nothing else. (When a release changes the
// layout, this test states the rewrite it expects.)
func TestUpgradeFromE727cf3(t *testing.T) {
	fresh, st := upgrade(t, "e727cf3")
	want := model.Changes{RulesAdded: 8, RulesDeleted: 6}
	if !st.Full || st.Transactions != 1 || st.Changes != want {
		t.Fatalf("adopting the e727cf3 table: %+v, want only %+v\n%s", st, want, fresh.lastPlan)
	}
	plan := fresh.lastPlan.String()
	for _, rule := range []string{"ip saddr 198.18.0.2 accept", "ip6 saddr fd00::2 accept", "in-x.b position 27 ct state invalid drop",
		"egress-input position 20 icmpv6 type 135-136 ip6 hoplimit 255 accept", "ingress-forward position 22 ct mark and 0x00800000 != 0x00000000 drop"} {
		if !strings.Contains(plan, rule) {
			t.Errorf("upgrade plan lacks %q:\n%s", rule, plan)
		}
	}
}
