package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// fakeResolver knows pods x/b (ingress isolated) and y/a (egress audited).
type fakeResolver struct {
	mu    sync.Mutex
	peers map[netip.Addr][2]string
	calls int
	// block, when set, holds Peer until it is closed.
	block chan struct{}
}

func (r *fakeResolver) LocalPod(key string, dir Direction) (string, string, []string, bool) {
	switch {
	case key == PodKey("x", "b") && dir == Ingress:
		return "x", "b", []string{"DefaultDeny/baseline", "NetworkPolicy/x/deny-all"}, true
	case key == PodKey("y", "a") && dir == Egress:
		return "y", "a", []string{"DefaultDeny/audit-all"}, true
	}
	return "", "", nil, false
}

func (r *fakeResolver) Peer(ip netip.Addr) (string, string, bool) {
	if r.block != nil {
		<-r.block
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	p, ok := r.peers[ip]
	return p[0], p[1], ok
}

// scriptSource delivers records from a function, then waits.
type scriptSource struct {
	script func(in *intake)
	done   chan struct{}
}

func (s *scriptSource) run(ctx context.Context, in *intake) error {
	s.script(in)
	close(s.done)
	<-ctx.Done()
	return nil
}

func newTestLogger(t *testing.T, cfg Config, script func(in *intake)) (*Logger, *scriptSource, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	if cfg.Output == "" {
		cfg.Output = filepath.Join(t.TempDir(), "audit.log")
	}
	cfg.Node = "node-1"
	cfg.Registerer = reg
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	src := &scriptSource{script: script, done: make(chan struct{})}
	l.src = src
	l.tick = 5 * time.Millisecond
	return l, src, reg
}

func readEvents(t *testing.T, path string) []Event {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ev Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, ev)
	}
	return out
}

// waitFor polls until cond holds; the deadline only catches a hang.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func rec(clock Clock, prefix string, payload []byte) record {
	return record{prefix: prefix, payload: payload, seen: clock.Now()}
}

func TestLoggerPipeline(t *testing.T) {
	clock := &fakeClock{now: t0}
	resolver := &fakeResolver{peers: map[netip.Addr][2]string{
		netip.MustParseAddr("198.18.0.1"): {"y", "a"},
	}}
	inX := Prefix{ActionDrop, Ingress, PodKey("x", "b")}.String()
	auditY := Prefix{ActionAudit, Egress, PodKey("y", "a")}.String()
	var seq uint32
	send := func(in *intake, r record) {
		in.deliver(r, &seq)
		seq++
	}

	var handedMu sync.Mutex
	var handed []Event
	onLines := func(evs []Event) {
		handedMu.Lock()
		handed = append(handed, evs...)
		handedMu.Unlock()
	}
	l, src, reg := newTestLogger(t, Config{Clock: clock, Resolver: resolver, Window: time.Second, OnLines: onLines}, func(in *intake) {
		for i := range 3 {
			send(in, rec(clock, inX, ipv4(17, v4a, v4b, udp(uint16(40000+i), 53))))
		}
		send(in, rec(clock, inX, ipv4(6, v4a, v4b, tcp(40100, 80))))
		send(in, rec(clock, auditY, ipv4(1, v4a, netip.MustParseAddr("198.18.9.9"), icmp(8, 0))))
		send(in, rec(clock, "someone-else", ipv4(17, v4a, v4b, udp(1, 2))))
		send(in, rec(clock, inX, []byte{0x45, 0}))
		seq += 2 // two records lost on the socket
		send(in, rec(clock, inX, ipv6(17, v6a, v6b, nil, udp(5000, 53))))
	})
	l.ReportRateLimited(7)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	<-src.done

	// Lost lines are written at the next ticks; flow lines wait for their
	// window to close.
	waitFor(t, "lost lines", func() bool { return l.Totals().Lost == 11 })
	if n := len(readEvents(t, l.cfg.Output)); n > 3 {
		t.Fatalf("%d lines before the window closed", n)
	}
	clock.Advance(time.Second)
	waitFor(t, "flow lines", func() bool { return l.Totals().Drops+l.Totals().AuditEvents == 6 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	at := t0.UTC()
	wantLost := map[LostReason]uint64{LostRateLimit: 7, LostBuffer: 2, LostMalformed: 2}
	wantFlows := []Event{
		{
			Time: at, Node: "node-1", Action: ActionDrop, Direction: Ingress, Protocol: ProtocolUDP,
			Src:      Endpoint{IP: v4a, Port: 40000, Namespace: "y", Pod: "a"},
			Dst:      Endpoint{IP: v4b, Port: 53, Namespace: "x", Pod: "b"},
			Policies: []string{"DefaultDeny/baseline", "NetworkPolicy/x/deny-all"}, Count: 3,
		},
		{
			Time: at, Node: "node-1", Action: ActionDrop, Direction: Ingress, Protocol: ProtocolTCP,
			Src:      Endpoint{IP: v4a, Port: 40100, Namespace: "y", Pod: "a"},
			Dst:      Endpoint{IP: v4b, Port: 80, Namespace: "x", Pod: "b"},
			Policies: []string{"DefaultDeny/baseline", "NetworkPolicy/x/deny-all"}, Count: 1,
		},
		{
			Time: at, Node: "node-1", Action: ActionAudit, Direction: Egress, Protocol: ProtocolICMP,
			Src:      Endpoint{IP: v4a, Namespace: "y", Pod: "a"},
			Dst:      Endpoint{IP: netip.MustParseAddr("198.18.9.9")},
			Policies: []string{"DefaultDeny/audit-all"}, Count: 1,
		},
		{
			Time: at, Node: "node-1", Action: ActionDrop, Direction: Ingress, Protocol: ProtocolUDP,
			Src:      Endpoint{IP: v6a, Port: 5000},
			Dst:      Endpoint{IP: v6b, Port: 53, Namespace: "x", Pod: "b"},
			Policies: []string{"DefaultDeny/baseline", "NetworkPolicy/x/deny-all"}, Count: 1,
		},
	}
	check := func(what string, got []Event) {
		t.Helper()
		lost := make(map[LostReason]uint64)
		var flows []Event
		for _, ev := range got {
			if ev.Action != ActionLost {
				flows = append(flows, ev)
				continue
			}
			if ev.Node != "node-1" || !ev.Time.Equal(at) || ev.Count == 0 {
				t.Errorf("%s: lost line %+v", what, ev)
			}
			lost[ev.Reason] += ev.Count
		}
		if !reflect.DeepEqual(lost, wantLost) {
			t.Errorf("%s: lost %v, want %v", what, lost, wantLost)
		}
		if !reflect.DeepEqual(flows, wantFlows) {
			t.Errorf("%s: lines:\n%s\nwant:\n%s", what, dump(flows), dump(wantFlows))
		}
	}
	check("file", readEvents(t, l.cfg.Output))
	check("Recent", l.Recent())
	handedMu.Lock()
	check("OnLines", handed)
	handedMu.Unlock()
	if tot := l.Totals(); tot != (Totals{Drops: 5, AuditEvents: 1, Lost: 11}) {
		t.Errorf("Totals = %+v", tot)
	}
	if got := counterValues(t, reg, "nftguard_audit_packets_total", "action"); got["drop"] != 5 || got["audit"] != 1 {
		t.Errorf("packets by action = %v", got)
	}
	if got := counterValues(t, reg, "nftguard_audit_records_lost_total", "reason"); got["malformed"] != 2 || got["buffer"] != 2 || got["ratelimit"] != 7 {
		t.Errorf("lost by reason = %v", got)
	}
	// One Peer call per distinct IP and batch, not one per packet.
	if resolver.calls > 4 {
		t.Errorf("Peer called %d times", resolver.calls)
	}
}

func dump(evs []Event) string {
	var b strings.Builder
	for _, ev := range evs {
		j, _ := json.Marshal(ev)
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

// A resolver that blocks must not block the read loop: records beyond the
// queue are counted as lost, and every record is in a line or a lost count.
func TestLoggerSlowResolverNeverBlocksIntake(t *testing.T) {
	resolver := &fakeResolver{block: make(chan struct{})}
	inX := Prefix{ActionDrop, Ingress, PodKey("x", "b")}.String()
	const records = 3000
	l, src, _ := newTestLogger(t, Config{Resolver: resolver, Window: 10 * time.Millisecond, QueueSize: 16}, func(in *intake) {
		for i := range records {
			r := rec(realClock{}, inX, ipv4(17, v4a, v4b, udp(1, uint16(i%500))))
			in.deliver(r, nil)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	select {
	case <-src.done:
	case <-time.After(30 * time.Second):
		t.Fatal("intake blocked behind the resolver")
	}
	close(resolver.block)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var logged, lost uint64
	for _, ev := range readEvents(t, l.cfg.Output) {
		switch ev.Action {
		case ActionDrop:
			logged += ev.Count
		case ActionLost:
			if ev.Reason != LostQueue {
				t.Errorf("lost line with reason %q", ev.Reason)
			}
			lost += ev.Count
		}
	}
	if lost == 0 {
		t.Error("no records lost to a full queue")
	}
	if logged+lost != records {
		t.Errorf("%d logged + %d lost, want %d records", logged, lost, records)
	}
}

func TestLoggerRunOnce(t *testing.T) {
	l, _, _ := newTestLogger(t, Config{}, func(*intake) {})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Run(ctx); err == nil {
		t.Error("second Run succeeded")
	}
	if got := readEvents(t, l.cfg.Output); len(got) != 0 {
		t.Errorf("lines without records: %v", got)
	}
}

func TestNewRejectsEmptyOutput(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("empty output accepted")
	}
}

// testPrefix is an NFLOG prefix of a drop on ingress of x/b.
var testPrefix = Prefix{ActionDrop, Ingress, PodKey("x", "b")}.String()

func gaugeValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func counterValue(t *testing.T, reg *prometheus.Registry, name, reason string) float64 {
	t.Helper()
	return counterValues(t, reg, name, "reason")[reason]
}

// TestUnwritableOutputDegrades: an output that cannot be opened (its
// directory is missing) does not stop Run: Ready says why, and once the
// directory exists the log opens and writes.
func TestUnwritableOutputDegrades(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "missing")
	changes := make(chan struct{}, 16)
	var deliver func()
	l, _, _ := newTestLogger(t, Config{Output: filepath.Join(dir, "audit.log"), Retry: 20 * time.Millisecond,
		OnReadyChange: func() { changes <- struct{}{} }}, func(in *intake) {
		deliver = func() { in.deliver(rec(realClock{}, testPrefix, ipv4(17, v4a, v4b, udp(40000, 53))), nil) }
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	waitFor(t, "Ready to report the missing directory", func() bool {
		ok, reason, msg := l.Ready()
		return !ok && reason == ReasonWriteFailed && strings.Contains(msg, "no such file or directory")
	})
	select {
	case <-changes:
	default:
		t.Error("OnReadyChange was not called when the output failed")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Ready once the directory exists", func() bool { ok, _, _ := l.Ready(); return ok })
	waitFor(t, "the source to start", func() bool { return deliver != nil })
	deliver()
	waitFor(t, "a line in the log", func() bool { return l.Totals().Drops > 0 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestFullDiskDegrades: writing to a full disk (/dev/full answers every
// write with ENOSPC) counts the lines as lost and says so in Ready, and
// Run goes on.
func TestFullDiskDegrades(t *testing.T) {
	var in0 *intake
	var mu sync.Mutex
	l, _, reg := newTestLogger(t, Config{Output: "/dev/full", MaxSize: -1, Retry: 20 * time.Millisecond}, func(in *intake) {
		mu.Lock()
		in0 = in
		mu.Unlock()
	})
	l.cfg.Window = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	waitFor(t, "the source to start", func() bool { mu.Lock(); defer mu.Unlock(); return in0 != nil })
	for i := range 3 {
		in0.deliver(rec(realClock{}, testPrefix, ipv4(17, v4a, v4b, udp(uint16(41000+i), 53))), nil)
	}
	waitFor(t, "Ready to report the full disk", func() bool {
		ok, reason, msg := l.Ready()
		return !ok && reason == ReasonWriteFailed && strings.Contains(msg, "no space left on device")
	})
	waitFor(t, "the lines counted as lost", func() bool {
		return counterValue(t, reg, "nftguard_audit_records_lost_total", "write") >= 1
	})
	if v := gaugeValue(t, reg, "nftguard_audit_ready"); v != 0 {
		t.Errorf("nftguard_audit_ready = %v with a full disk, want 0", v)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// failingSource fails its first binds, then reads.
type failingSource struct {
	fails int
	calls int
}

func (s *failingSource) run(ctx context.Context, in *intake) error {
	s.calls++
	if s.calls <= s.fails {
		return fmt.Errorf("binding NFLOG group 100: %w", unix.EBUSY)
	}
	in.bound()
	<-ctx.Done()
	return nil
}

// TestNFLOGUnavailableDegrades: a group that cannot be bound does not stop
// Run: Ready says so, it binds again every Retry, and Ready recovers.
func TestNFLOGUnavailableDegrades(t *testing.T) {
	l, _, reg := newTestLogger(t, Config{Retry: 20 * time.Millisecond}, func(*intake) {})
	src := &failingSource{fails: 3}
	l.src = src
	var sawDown atomic.Bool
	l.health.onChange = func() {
		if ok, reason, _ := l.Ready(); !ok && reason == ReasonNFLOGUnavailable {
			sawDown.Store(true)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	waitFor(t, "Ready after three failed binds", func() bool { ok, _, _ := l.Ready(); return ok && src.calls > 3 })
	if !sawDown.Load() {
		t.Error("Ready never reported NFLOGUnavailable")
	}
	if v := gaugeValue(t, reg, "nftguard_audit_ready"); v != 1 {
		t.Errorf("nftguard_audit_ready = %v once bound, want 1", v)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// switchingResolver names a pod's policies from whatever rule set is current.
type switchingResolver struct {
	mu       sync.Mutex
	policies []string
	calls    int
}

func (r *switchingResolver) lookups() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

func (r *switchingResolver) set(p ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.policies = p
}

func (r *switchingResolver) LocalPod(string, Direction) (string, string, []string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	return "x", "b", r.policies, true
}

func (r *switchingResolver) Peer(netip.Addr) (string, string, bool) { return "", "", false }

// TestLoggerAttributesPoliciesWhenRead: a line names the policies that were
// in force when its packets were dropped, even when the rule set changes
// before the line is written (its window closes later).
func TestLoggerAttributesPoliciesWhenRead(t *testing.T) {
	clock := &fakeClock{now: t0}
	resolver := &switchingResolver{}
	resolver.set("NetworkPolicy/x/old")
	inX := Prefix{ActionDrop, Ingress, PodKey("x", "b")}.String()
	var seq uint32
	l, src, _ := newTestLogger(t, Config{Clock: clock, Resolver: resolver, Window: time.Second}, func(in *intake) {
		in.deliver(rec(clock, inX, ipv4(6, v4a, v4b, tcp(40100, 80))), &seq)
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	<-src.done
	// The pod is looked up as the packet is read, before its window closes.
	waitFor(t, "the record to be read", func() bool { return resolver.lookups() > 0 })
	if n := len(readEvents(t, l.cfg.Output)); n != 0 {
		t.Fatalf("%d lines before the window closed", n)
	}
	resolver.set("NetworkPolicy/x/new")
	clock.Advance(time.Second)
	waitFor(t, "the line", func() bool { return l.Totals().Drops == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := readEvents(t, l.cfg.Output)
	if len(got) != 1 || !slices.Equal(got[0].Policies, []string{"NetworkPolicy/x/old"}) {
		t.Fatalf("lines %+v, want one naming NetworkPolicy/x/old, in force when the packet was dropped", got)
	}
}
