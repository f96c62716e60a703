package dropsapi

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/dropsapi/wire"
)

type mapNamer map[netip.Addr][2]string

func (m mapNamer) PodByIP(ip netip.Addr) (string, string, bool) {
	r, ok := m[ip]
	return r[0], r[1], ok
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func line(i int, ns string, policies ...string) audit.Event {
	return audit.Event{
		Time: t0.Add(time.Duration(i) * time.Second), Action: audit.ActionDrop, Direction: audit.Ingress,
		Protocol: 6,
		Src:      audit.Endpoint{IP: netip.MustParseAddr("198.18.9.9")},
		Dst:      audit.Endpoint{IP: netip.MustParseAddr("198.18.0.2"), Port: 80, Namespace: ns, Pod: "web"},
		Policies: policies, Count: 1,
	}
}

func push(s *Store, node, stream string, first uint64, lines ...audit.Event) uint64 {
	return s.Push(node, &wire.PushRequest{Node: node, Stream: stream, First: first, Lines: lines})
}

func held(s *Store, node string) []audit.Event {
	for _, nl := range s.Lines(func(*audit.Event) bool { return true }) {
		if nl.Node == node {
			return nl.Lines
		}
	}
	return nil
}

func TestStorePushSkipsLinesItHolds(t *testing.T) {
	s := NewStore(StoreConfig{})
	if next := push(s, "n1", "a", 0, line(0, "x"), line(1, "x")); next != 2 {
		t.Fatalf("next = %d, want 2", next)
	}
	// The agent sends the second line again with a third.
	if next := push(s, "n1", "a", 1, line(1, "x"), line(2, "x")); next != 3 {
		t.Fatalf("next = %d, want 3", next)
	}
	if got := len(held(s, "n1")); got != 3 {
		t.Fatalf("held %d lines, want 3 (a resent line is kept once)", got)
	}
	// A new stream (the agent restarted) starts its numbers again.
	if next := push(s, "n1", "b", 0, line(3, "x")); next != 1 {
		t.Fatalf("next after restart = %d, want 1", next)
	}
	lines := held(s, "n1")
	if len(lines) != 4 || lines[3].Node != "n1" {
		t.Fatalf("after restart held %d lines (node %q), want 4 from n1", len(lines), lines[len(lines)-1].Node)
	}
}

func TestStoreNodeNameComesFromThePusher(t *testing.T) {
	s := NewStore(StoreConfig{})
	l := line(0, "x")
	l.Node = "someone-else"
	push(s, "n1", "a", 0, l)
	if got := held(s, "n1")[0].Node; got != "n1" {
		t.Fatalf("line node = %q, want the authenticated pusher n1", got)
	}
}

func TestStoreBoundsPerNodeAndTotal(t *testing.T) {
	s := NewStore(StoreConfig{PerNode: 10, Total: 15})
	for i := range 12 {
		push(s, "busy", "a", uint64(i), line(i, "x"))
	}
	lines := held(s, "busy")
	if len(lines) != 10 || !lines[0].Time.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("busy holds %d lines from %v, want the newest 10", len(lines), lines[0].Time)
	}
	for i := range 7 {
		push(s, "quiet", "a", uint64(i), line(i, "x"))
	}
	// Past the total, the node holding the most loses its oldest.
	busy, quiet := len(held(s, "busy")), len(held(s, "quiet"))
	if busy != 8 || quiet != 7 {
		t.Fatalf("busy holds %d, quiet %d: want 8 and 7 (the bound of 15, taken from the busiest)", busy, quiet)
	}
	var nl NodeLines
	for _, x := range s.Lines(func(*audit.Event) bool { return false }) {
		if x.Node == "busy" {
			nl = x
		}
	}
	if nl.Forgotten.IsZero() || !nl.Oldest.After(nl.Forgotten) || len(nl.Lines) != 0 {
		t.Fatalf("busy: oldest %v forgotten %v lines %d: want forgotten before oldest and no lines kept", nl.Oldest, nl.Forgotten, len(nl.Lines))
	}
}

func TestStoreNamesFromMemoryAndCountsUnnamed(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, 0)
	if err != nil {
		t.Fatal(err)
	}
	namer := mapNamer{netip.MustParseAddr("198.18.9.9"): {"client", "curl"}}
	s := NewStore(StoreConfig{Namer: namer, Metrics: m})
	named := line(0, "x")
	spoofed := line(1, "x")
	spoofed.Src.IP = netip.MustParseAddr("198.19.1.1")
	push(s, "n1", "a", 0, named, spoofed)
	lines := held(s, "n1")
	if lines[0].Src.Namespace != "client" || lines[0].Src.Pod != "curl" {
		t.Fatalf("source not named: %+v", lines[0].Src)
	}
	if lines[0].Dst.Pod != "web" {
		t.Fatalf("the agent's name was replaced: %+v", lines[0].Dst)
	}
	if lines[1].Src.Namespace != "" {
		t.Fatalf("spoofed source named: %+v", lines[1].Src)
	}
	if got := testutil.ToFloat64(m.unnamedC); got != 1 {
		t.Fatalf("unnamed = %v, want 1", got)
	}
}

func TestStoreCountsOncePerPolicy(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, 2)
	if err != nil {
		t.Fatal(err)
	}
	s := NewStore(StoreConfig{Metrics: m})
	two := line(0, "shop", "NetworkPolicy/shop/a", "DefaultDeny/base")
	two.Count = 5
	none := line(1, "shop")
	third := line(2, "shop", "NetworkPolicy/shop/c")
	eg := line(3, "", "NetworkPolicy/shop/a")
	eg.Direction = audit.Egress
	eg.Src.Namespace = "shop"
	lost := audit.Event{Time: t0, Action: audit.ActionLost, Count: 7, Reason: "overrun"}
	push(s, "n1", "a", 0, two, none, third, eg, lost)

	got := map[wire.DropCount]bool{}
	for _, c := range s.Counts(func(*wire.DropCount) bool { return true }) {
		got[c] = true
	}
	want := []wire.DropCount{
		{Policy: "NetworkPolicy/shop/a", Namespace: "shop", Direction: audit.Ingress, Action: audit.ActionDrop, Packets: 5},
		{Policy: "DefaultDeny/base", Namespace: "shop", Direction: audit.Ingress, Action: audit.ActionDrop, Packets: 5},
		{Policy: "", Namespace: "shop", Direction: audit.Ingress, Action: audit.ActionDrop, Packets: 1},
		{Policy: "NetworkPolicy/shop/c", Namespace: "shop", Direction: audit.Ingress, Action: audit.ActionDrop, Packets: 1},
		{Policy: "NetworkPolicy/shop/a", Namespace: "shop", Direction: audit.Egress, Action: audit.ActionDrop, Packets: 1},
	}
	for _, w := range want {
		if !got[w] {
			t.Errorf("missing count %+v in %+v", w, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d counts, want %d (lost lines are not counted)", len(got), len(want))
	}
	if d, a, since := s.PolicyCounts("NetworkPolicy/shop/a"); d != 6 || a != 0 || !since.Equal(s.Started()) {
		t.Errorf("policy a: dropped %d audited %d since %v, want 6 (both directions), 0", d, a, since)
	}
	if v := testutil.ToFloat64(m.drops.WithLabelValues("NetworkPolicy/shop/a", "ingress", "drop")); v != 5 {
		t.Errorf("metric for a = %v, want 5", v)
	}
	if v := testutil.ToFloat64(m.drops.WithLabelValues("unknown", "ingress", "drop")); v != 1 {
		t.Errorf("metric unknown = %v, want 1", v)
	}
	// The cap is 2 policy values: the third policy is "other".
	if v := testutil.ToFloat64(m.drops.WithLabelValues("other", "ingress", "drop")); v != 1 {
		t.Errorf("metric other = %v, want 1", v)
	}
}

func TestStoreGapIsCounted(t *testing.T) {
	m, err := NewMetrics(nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	s := NewStore(StoreConfig{Metrics: m})
	push(s, "n1", "a", 0, line(0, "x"))
	if next := push(s, "n1", "a", 5, line(5, "x")); next != 6 {
		t.Fatalf("next = %d, want 6", next)
	}
	if got := testutil.ToFloat64(m.gapC); got != 4 {
		t.Fatalf("gap = %v, want 4", got)
	}
}

func TestSubscriptionDeliversAndEndsWhenBehind(t *testing.T) {
	s := NewStore(StoreConfig{PerNode: 4 * subscriptionBuffer, Total: 8 * subscriptionBuffer})
	sub := s.Subscribe()
	push(s, "n1", "a", 0, line(0, "x"))
	select {
	case ev := <-sub.C:
		if ev.Node != "n1" {
			t.Fatalf("delivered line from %q", ev.Node)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no line delivered")
	}
	for i := range subscriptionBuffer + 1 {
		push(s, "n1", "a", uint64(i+1), line(i+1, "x"))
	}
	n := 0
	for range sub.C {
		n++
	}
	if n != subscriptionBuffer || !sub.Overflowed() {
		t.Fatalf("read %d lines, overflowed %v: want %d then the end", n, sub.Overflowed(), subscriptionBuffer)
	}
	sub.Close() // closing an ended subscription is harmless

	other := s.Subscribe()
	other.Close()
	if _, ok := <-other.C; ok || other.Overflowed() {
		t.Fatal("a closed subscription delivered or reported overflow")
	}
}

func TestOwnerNamespace(t *testing.T) {
	in := line(0, "dst")
	in.Src.Namespace = "src"
	out := in
	out.Direction = audit.Egress
	lost := audit.Event{Action: audit.ActionLost}
	for _, c := range []struct {
		ev   audit.Event
		want string
	}{{in, "dst"}, {out, "src"}, {lost, ""}} {
		if got := OwnerNamespace(&c.ev); got != c.want {
			t.Errorf("%s %s: owner %q, want %q", c.ev.Action, c.ev.Direction, got, c.want)
		}
	}
}
