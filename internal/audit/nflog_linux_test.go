//go:build linux

package audit_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/internal/audit"
)

// The addresses live on the loopback device of a throwaway namespace:
// client 198.18.0.1 (pod y/a), isolated pod 198.18.0.2 (x/b), and
// 198.18.0.3, an address outside the cluster.
var (
	clientV4 = netip.MustParseAddr("198.18.0.1")
	podV4    = netip.MustParseAddr("198.18.0.2")
	otherV4  = netip.MustParseAddr("198.18.0.3")
	clientV6 = netip.MustParseAddr("fd00::1")
	podV6    = netip.MustParseAddr("fd00::2")
)

const (
	nflogGroup = 100
	probePort  = 9 // discard: packets sent until the reader is bound
)

type kernelResolver struct{}

func (kernelResolver) LocalPod(key string, dir audit.Direction) (string, string, []string, bool) {
	switch {
	case key == audit.PodKey("x", "b") && dir == audit.Ingress:
		return "x", "b", []string{"NetworkPolicy/x/deny-all"}, true
	case key == audit.PodKey("y", "a") && dir == audit.Egress:
		return "y", "a", []string{"DefaultDeny/baseline"}, true
	}
	return "", "", nil, false
}

func (kernelResolver) Peer(ip netip.Addr) (string, string, bool) {
	if ip == clientV4 || ip == clientV6 {
		return "y", "a", true
	}
	return "", "", false
}

// newNetNS creates a network namespace, closed at the end of the test. The
// thread that creates it is never unlocked, so it exits with its goroutine
// instead of going back to the pool inside the namespace.
func newNetNS(t *testing.T) netns.NsHandle {
	t.Helper()
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.New()
		ch <- result{ns, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("creating network namespace: %v", r.err)
	}
	t.Cleanup(func() { _ = r.ns.Close() })
	return r.ns
}

// inNetNS runs fn on a thread in ns; sockets fn opens stay in ns. Like
// newNetNS, the thread is discarded afterwards.
func inNetNS(t *testing.T, ns netns.NsHandle, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func setupAddresses(t *testing.T, ns netns.NsHandle) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{clientV4, podV4, otherV4, clientV6, podV6} {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}}
		if a.Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(lo, addr); err != nil {
			t.Fatalf("adding %v: %v", a, err)
		}
	}
}

// installRules programs, in ns only:
//
//	table inet nftguard {
//	  chain input { type filter hook input priority filter; policy accept;
//	    meta nfproto ipv4 ip daddr 198.18.0.2 limit rate 1000/second burst 1000 packets log prefix "nftguard:drop:in:<x/b>" group 100
//	    meta nfproto ipv4 ip daddr 198.18.0.2 drop
//	    meta nfproto ipv6 ip6 daddr fd00::2 limit rate 1000/second burst 1000 packets log prefix "nftguard:drop:in:<x/b>" group 100
//	    meta nfproto ipv6 ip6 daddr fd00::2 drop
//	  }
//	  chain output { type filter hook output priority filter; policy accept;
//	    meta nfproto ipv4 ip daddr 198.18.0.3 log prefix "nftguard:audit:eg:<y/a>" group 100
//	  }
//	}
func installRules(t *testing.T, ns netns.NsHandle) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	accept := nftables.ChainPolicyAccept
	table := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "nftguard"})
	input := c.AddChain(&nftables.Chain{
		Name: "input", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	output := c.AddChain(&nftables.Chain{
		Name: "output", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	daddr := func(a netip.Addr) []expr.Any {
		proto, off := byte(unix.NFPROTO_IPV4), uint32(16)
		if a.Is6() {
			proto, off = unix.NFPROTO_IPV6, 24
		}
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(a.BitLen() / 8)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
		}
	}
	log := func(p audit.Prefix) *expr.Log {
		return &expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: nflogGroup, Data: []byte(p.String())}
	}
	limit := &expr.Limit{Type: expr.LimitTypePkts, Rate: 1000, Unit: expr.LimitTimeSecond, Burst: 1000}
	inX := audit.Prefix{Action: audit.ActionDrop, Direction: audit.Ingress, PodKey: audit.PodKey("x", "b")}
	for _, a := range []netip.Addr{podV4, podV6} {
		c.AddRule(&nftables.Rule{Table: table, Chain: input, Exprs: append(daddr(a), limit, log(inX))})
		c.AddRule(&nftables.Rule{Table: table, Chain: input, Exprs: append(daddr(a), &expr.Verdict{Kind: expr.VerdictDrop})})
	}
	egY := audit.Prefix{Action: audit.ActionAudit, Direction: audit.Egress, PodKey: audit.PodKey("y", "a")}
	c.AddRule(&nftables.Rule{Table: table, Chain: output, Exprs: append(daddr(otherV4), log(egY))})
	if err := c.Flush(); err != nil {
		t.Fatalf("installing nftables rules: %v", err)
	}
}

// sendUDP sends n datagrams from one unconnected socket (which ignores the
// port unreachable errors of a destination without a listener).
func sendUDP(src, dst netip.Addr, port uint16, n int) error {
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)))
	if err != nil {
		return err
	}
	defer conn.Close()
	for range n {
		if _, err := conn.WriteToUDPAddrPort([]byte("nftguard audit test"), netip.AddrPortFrom(dst, port)); err != nil {
			return err
		}
	}
	return nil
}

func TestNFLOGKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace with nftables rules")
	}
	ns := newNetNS(t)
	setupAddresses(t, ns)
	installRules(t, ns)

	out := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.New(audit.Config{
		Node:       "node-1",
		Group:      nflogGroup,
		NetNS:      int(ns),
		Output:     out,
		Window:     300 * time.Millisecond,
		Resolver:   kernelResolver{},
		Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()

	// Probe until the reader is bound: packets logged before are not kept.
	deadline := time.Now().Add(20 * time.Second)
	for !slices.ContainsFunc(l.Recent(), func(ev audit.Event) bool { return ev.Dst.Port == probePort }) {
		if time.Now().After(deadline) {
			t.Fatal("no probe logged")
		}
		select {
		case err := <-done:
			t.Fatalf("Run: %v", err)
		default:
		}
		inNetNS(t, ns, func() error { return sendUDP(clientV4, podV4, probePort, 1) })
		time.Sleep(100 * time.Millisecond)
	}

	inNetNS(t, ns, func() error {
		if err := sendUDP(clientV4, podV4, 53, 3); err != nil {
			return err
		}
		if err := sendUDP(clientV6, podV6, 53, 1); err != nil {
			return err
		}
		if err := sendUDP(clientV4, otherV4, 7000, 2); err != nil {
			return err
		}
		// One SYN: the dial gives up long before the first retransmission.
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: clientV4.AsSlice()}, Timeout: 200 * time.Millisecond}
		if conn, err := d.Dial("tcp", "198.18.0.2:8080"); err == nil {
			conn.Close()
			return errors.New("TCP connection to an isolated pod succeeded")
		}
		icmp, err := net.ListenPacket("ip4:icmp", clientV4.String())
		if err != nil {
			return err
		}
		defer icmp.Close()
		echo := []byte{8, 0, 0xf7, 0xfe, 0, 1, 0, 0} // echo request, id 1, seq 0, checksum
		_, err = icmp.WriteTo(echo, &net.IPAddr{IP: podV4.AsSlice()})
		return err
	})

	mk := func(action audit.Action, dir audit.Direction, proto audit.Protocol, src, dst audit.Endpoint, policy string, count uint64) audit.Event {
		return audit.Event{Node: "node-1", Action: action, Direction: dir, Protocol: proto, Src: src, Dst: dst, Policies: []string{policy}, Count: count}
	}
	ya := func(ip netip.Addr, port uint16) audit.Endpoint {
		return audit.Endpoint{IP: ip, Port: port, Namespace: "y", Pod: "a"}
	}
	xb := func(ip netip.Addr, port uint16) audit.Endpoint {
		return audit.Endpoint{IP: ip, Port: port, Namespace: "x", Pod: "b"}
	}
	deny, baseline := "NetworkPolicy/x/deny-all", "DefaultDeny/baseline"
	want := []audit.Event{
		mk(audit.ActionDrop, audit.Ingress, audit.ProtocolUDP, ya(clientV4, 0), xb(podV4, 53), deny, 3),
		mk(audit.ActionDrop, audit.Ingress, audit.ProtocolUDP, ya(clientV6, 0), xb(podV6, 53), deny, 1),
		mk(audit.ActionAudit, audit.Egress, audit.ProtocolUDP, ya(clientV4, 0), audit.Endpoint{IP: otherV4, Port: 7000}, baseline, 2),
		mk(audit.ActionDrop, audit.Ingress, audit.ProtocolTCP, ya(clientV4, 0), xb(podV4, 8080), deny, 1),
		mk(audit.ActionDrop, audit.Ingress, audit.ProtocolICMP, ya(clientV4, 0), xb(podV4, 0), deny, 1),
	}
	// normalize drops what the test cannot predict: times and source ports.
	normalize := func(evs []audit.Event) []audit.Event {
		var out []audit.Event
		for _, ev := range evs {
			if ev.Dst.Port == probePort {
				continue
			}
			if ev.Action != audit.ActionLost && (ev.Time.IsZero() || time.Since(ev.Time) > time.Minute) {
				t.Errorf("line time %v", ev.Time)
			}
			ev.Time = time.Time{}
			if ev.Protocol == audit.ProtocolUDP || ev.Protocol == audit.ProtocolTCP {
				if ev.Src.Port == 0 {
					t.Errorf("no source port in %+v", ev)
				}
				ev.Src.Port = 0
			}
			out = append(out, ev)
		}
		return out
	}
	deadline = time.Now().Add(20 * time.Second)
	for len(normalize(l.Recent())) < len(want) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}

	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []audit.Event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		t.Logf("line: %s", sc.Text())
		var ev audit.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		lines = append(lines, ev)
	}
	got := normalize(lines)
	if !reflect.DeepEqual(got, want) {
		var b strings.Builder
		for _, ev := range got {
			j, _ := json.Marshal(ev)
			b.Write(j)
			b.WriteByte('\n')
		}
		t.Errorf("lines (times and source ports cleared, probes left out):\n%s\nwant %d lines: %+v", b.String(), len(want), want)
	}
}
