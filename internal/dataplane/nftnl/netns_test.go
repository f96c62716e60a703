package nftnl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/netnstest"
)

// Kernel tests build a "node" network namespace with "pod" namespaces
// attached by veth pairs and /32 and /128 routes (like the ptp CNI plugin),
// program the node's table, and send real packets. They never touch the
// machine's own namespace, and use only 198.18.0.0/15 and fd00::/8.

var (
	nodeIP4 = netip.MustParseAddr("198.18.255.1")
	nodeIP6 = netip.MustParseAddr("fd00:ff::1")
)

// How long a probe waits before calling a flow blocked. A probe expected to
// pass gets longer (the machine may be busy), but less than TCP's first SYN
// retransmission (1s), so that a dropped packet is still noticed.
const (
	blockedTimeout = 400 * time.Millisecond
	allowedTimeout = 900 * time.Millisecond
)

func probeTimeout(want bool) time.Duration {
	if want {
		return allowedTimeout
	}
	return blockedTimeout
}

// Ports the pods serve TCP and UDP on.
var servedPorts = []int{80, 81, 8080}

type testPod struct {
	name     string
	ns       netns.NsHandle
	ip4, ip6 netip.Addr
}

type topology struct {
	node netns.NsHandle
	pods map[string]*testPod
}

// newTopology builds a node with the named pods; pod i (from 1) has
// 198.18.0.i and fd00::i. Every pod and the node serve TCP and UDP echo on
// servedPorts.
func newTopology(t testing.TB, names ...string) *topology {
	t.Helper()
	topo := &topology{node: newNetNS(t), pods: map[string]*testPod{}}
	netnstest.Router(t, topo.node)
	for i, name := range names {
		p := &testPod{name: name, ns: newNetNS(t),
			ip4: netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)}),
			ip6: netip.MustParseAddr("fd00::" + strconv.Itoa(i+1))}
		topo.pods[name] = p
		netnstest.Link(t, topo.node, p.ns, fmt.Sprintf("vp%d", i+1), []netip.Addr{nodeIP4, nodeIP6}, []netip.Addr{p.ip4, p.ip6})
		serve(t, p.ns)
	}
	serve(t, topo.node)
	// A veth drops what it is given until the kernel's link watcher
	// (rate limited, up to a second late) activates it on carrier.
	for i, name := range names {
		waitOperUp(t, topo.node, fmt.Sprintf("vp%d", i+1))
		waitOperUp(t, topo.pods[name].ns, "eth0")
	}
	// IPv6 addresses join their solicited-node groups only when they stop
	// being tentative (in deferred work); until then neighbour
	// solicitations are lost and cost a one-second retransmission.
	for i, name := range names {
		waitNotTentative(t, topo.node, fmt.Sprintf("vp%d", i+1))
		waitNotTentative(t, topo.pods[name].ns, "eth0")
	}
	// Warm up both families between each pod and the node, so that tests
	// start from a working network.
	for _, name := range names {
		p := topo.pods[name]
		for _, path := range []struct {
			from netns.NsHandle
			to   netip.Addr
		}{{p.ns, nodeIP4}, {p.ns, nodeIP6}, {topo.node, p.ip4}, {topo.node, p.ip6}} {
			deadline := time.Now().Add(5 * time.Second)
			for !udpEcho(path.from, path.to, servedPorts[0], 200*time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("pod %s: no UDP echo from %s", name, path.to)
				}
			}
		}
	}
	return topo
}

func waitNotTentative(t testing.TB, ns netns.NsHandle, ifname string) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		addrs, err := h.AddrList(l, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		tentative := false
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_TENTATIVE != 0 {
				tentative = true
			}
		}
		if !tentative {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s keeps tentative IPv6 addresses", ifname)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitOperUp(t testing.TB, ns netns.NsHandle, ifname string) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := h.LinkByName(ifname)
		if err != nil {
			t.Fatal(err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is %s, not up", ifname, l.Attrs().OperState)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// serve starts TCP and UDP echo servers on servedPorts in ns (dual-stack
// sockets), stopped when the test ends.
func serve(t testing.TB, ns netns.NsHandle) {
	t.Helper()
	var closers []io.Closer
	err := inNS(ns, func() error {
		for _, port := range servedPorts {
			l, err := net.Listen("tcp", "[::]:"+strconv.Itoa(port))
			if err != nil {
				return err
			}
			closers = append(closers, l)
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						_, _ = io.Copy(c, c)
					}()
				}
			}()
			u, err := net.ListenPacket("udp", "[::]:"+strconv.Itoa(port))
			if err != nil {
				return err
			}
			closers = append(closers, u)
			go func() {
				buf := make([]byte, 1500)
				for {
					n, from, err := u.ReadFrom(buf)
					if err != nil {
						return
					}
					_, _ = u.WriteTo(buf[:n], from)
				}
			}()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("starting servers: %v", err)
	}
	t.Cleanup(func() {
		for _, c := range closers {
			c.Close()
		}
	})
}

// outcome is what a probe saw. A flow the table blocks gets no answer at
// all (nftguard drops, never rejects); a refusal (a TCP reset, an ICMP
// unreachable) means the packet got through to a host that answered, so it
// never counts as blocked.
type outcome int

const (
	connected outcome = iota
	noAnswer
	refused
)

func (o outcome) String() string {
	switch o {
	case connected:
		return "connected"
	case noAnswer:
		return "no answer"
	}
	return "refused"
}

// outcomeOf classifies a dial or read error.
func outcomeOf(err error) outcome {
	var ne net.Error
	switch {
	case err == nil:
		return connected
	case errors.As(err, &ne) && ne.Timeout():
		return noAnswer
	}
	return refused
}

// tcpDial tries a TCP connection from ns to dst:port for timeout.
func tcpDial(ns netns.NsHandle, dst netip.Addr, port int, timeout time.Duration) outcome {
	o := refused
	_ = inNS(ns, func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(dst, uint16(port)).String(), timeout)
		o = outcomeOf(err)
		if err == nil {
			c.Close()
		}
		return nil
	})
	return o
}

// tcpConnect reports whether a TCP connection from ns to dst:port is
// established within timeout.
func tcpConnect(ns netns.NsHandle, dst netip.Addr, port int, timeout time.Duration) bool {
	return tcpDial(ns, dst, port, timeout) == connected
}

// udpProbeOnce sends a UDP datagram from ns to dst:port and waits timeout
// for its echo; a port unreachable comes back as a refusal.
func udpProbeOnce(ns netns.NsHandle, dst netip.Addr, port int, timeout time.Duration) outcome {
	o := refused
	_ = inNS(ns, func() error {
		c, err := net.Dial("udp", netip.AddrPortFrom(dst, uint16(port)).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 16)
		n, err := c.Read(buf)
		o = outcomeOf(err)
		if err == nil && string(buf[:n]) != "ping" {
			o = refused
		}
		return nil
	})
	return o
}

// udpEcho reports whether a UDP datagram from ns to dst:port gets its echo
// back within timeout.
func udpEcho(ns netns.NsHandle, dst netip.Addr, port int, timeout time.Duration) bool {
	return udpProbeOnce(ns, dst, port, timeout) == connected
}

// sctpInit builds an SCTP packet holding one INIT chunk: verification tag 0
// (as RFC 9260 requires for INIT; conntrack calls anything else invalid)
// and a valid CRC32c.
func sctpInit(srcPort, dstPort uint16, initTag uint32) []byte {
	b := make([]byte, 32)
	binary.BigEndian.PutUint16(b[0:], srcPort)
	binary.BigEndian.PutUint16(b[2:], dstPort)
	// b[4:8] verification tag 0, b[8:12] checksum (below)
	b[12] = 1                                   // chunk type INIT
	binary.BigEndian.PutUint16(b[14:], 20)      // chunk length
	binary.BigEndian.PutUint32(b[16:], initTag) // initiate tag
	binary.BigEndian.PutUint32(b[20:], 65535)   // a_rwnd
	binary.BigEndian.PutUint16(b[24:], 1)       // outbound streams
	binary.BigEndian.PutUint16(b[26:], 1)       // inbound streams
	binary.BigEndian.PutUint32(b[28:], initTag) // initial TSN
	binary.LittleEndian.PutUint32(b[8:], crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
	return b
}

// sctpDelivered sends an SCTP INIT as raw IP protocol 132 from src to
// dst:port (the kernel here has no SCTP sockets) and reports whether a raw
// socket in dstNS sees it within timeout.
func sctpDelivered(src, dstNS netns.NsHandle, dst netip.Addr, port uint16, timeout time.Duration) (bool, error) {
	tag := rand.Uint32() | 1
	srcPort := uint16(30000 + rand.IntN(20000))
	return rawDelivered(src, dstNS, dst, model.ProtoSCTP, sctpInit(srcPort, port, tag), nil, func(p []byte) bool {
		return len(p) >= 20 && binary.BigEndian.Uint16(p[0:]) == srcPort && binary.BigEndian.Uint32(p[16:]) == tag
	}, timeout)
}

// rawDelivered sends pkt (the IP payload) as raw IP protocol proto from
// src to dst, after setup (if any) on the sending socket, and reports
// whether a raw socket of that protocol in dstNS receives a payload for
// which seen is true within timeout.
func rawDelivered(src, dstNS netns.NsHandle, dst netip.Addr, proto uint8, pkt []byte, setup func(fd int) error, seen func(payload []byte) bool, timeout time.Duration) (bool, error) {
	af := unix.AF_INET
	if dst.Is6() {
		af = unix.AF_INET6
	}
	var rfd int
	if err := inNS(dstNS, func() error {
		var err error
		rfd, err = unix.Socket(af, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
		return err
	}); err != nil {
		return false, fmt.Errorf("raw receive socket: %w", err)
	}
	defer unix.Close(rfd)
	if err := inNS(src, func() error {
		fd, err := unix.Socket(af, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if setup != nil {
			if err := setup(fd); err != nil {
				return err
			}
		}
		var sa unix.Sockaddr
		if dst.Is4() {
			sa = &unix.SockaddrInet4{Addr: dst.As4()}
		} else {
			sa = &unix.SockaddrInet6{Addr: dst.As16()}
		}
		return unix.Sendto(fd, pkt, 0, sa)
	}); err != nil {
		return false, fmt.Errorf("sending raw protocol %d: %w", proto, err)
	}
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 2048)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false, nil
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		if err := unix.SetsockoptTimeval(rfd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return false, err
		}
		n, _, err := unix.Recvfrom(rfd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, err
		}
		p := buf[:n]
		if dst.Is4() && n > 20 { // IPv4 raw sockets deliver the IP header
			p = p[int(p[0]&0x0f)*4:]
		}
		if seen(p) {
			return true, nil
		}
	}
}

// expect is one probe and whether it should get through: allowed means
// connected, blocked means no answer at all.
type expect struct {
	name string
	want bool
	fn   func() (outcome, error)
}

func tcpProbe(name string, from netns.NsHandle, dst netip.Addr, port int, want bool) expect {
	return expect{name: fmt.Sprintf("%s tcp %s", name, netip.AddrPortFrom(dst, uint16(port))), want: want,
		fn: func() (outcome, error) { return tcpDial(from, dst, port, probeTimeout(want)), nil }}
}

func udpProbe(name string, from netns.NsHandle, dst netip.Addr, port int, want bool) expect {
	return expect{name: fmt.Sprintf("%s udp %s", name, netip.AddrPortFrom(dst, uint16(port))), want: want,
		fn: func() (outcome, error) { return udpProbeOnce(from, dst, port, probeTimeout(want)), nil }}
}

// sctpProbe sends an INIT and watches for it at the destination: seen is
// connected, unseen is no answer (the destination has no SCTP stack to
// refuse with).
func sctpProbe(name string, from *testPod, to *testPod, dst netip.Addr, port int, want bool) expect {
	return expect{name: fmt.Sprintf("%s sctp %s", name, netip.AddrPortFrom(dst, uint16(port))), want: want,
		fn: func() (outcome, error) {
			seen, err := sctpDelivered(from.ns, to.ns, dst, uint16(port), probeTimeout(want))
			if seen {
				return connected, err
			}
			return noAnswer, err
		}}
}

// check runs probes concurrently and reports those with the wrong outcome.
func check(t testing.TB, probes ...expect) {
	t.Helper()
	got := make([]outcome, len(probes))
	errs := make([]error, len(probes))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = p.fn()
		}()
	}
	wg.Wait()
	for i, p := range probes {
		switch {
		case errs[i] != nil:
			t.Errorf("%s: %v", p.name, errs[i])
		case p.want && got[i] != connected:
			t.Errorf("%s: %s, want connected", p.name, got[i])
		case !p.want && got[i] != noAnswer:
			t.Errorf("%s: %s, want blocked (no answer)", p.name, got[i])
		}
	}
}

// programmer returns a Programmer for ns, closed when the test ends.
func programmer(t testing.TB, ns netns.NsHandle) *Programmer {
	t.Helper()
	p, err := NewProgrammerInNetNS(int(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func newNetNS(t testing.TB) netns.NsHandle { return netnstest.New(t) }

func inNS(ns netns.NsHandle, fn func() error) error { return netnstest.Do(ns, fn) }

// recorder is a testing.TB that records errors instead of failing.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// TestRefusedIsNotBlocked: a deny cell passes only when the probe got no
// answer. A port nothing listens on answers with a reset (TCP) or a port
// unreachable (UDP): such a cell fails, and says the flow was refused.
func TestRefusedIsNotBlocked(t *testing.T) {
	topo := newTopology(t, "a", "b")
	a, b := topo.pods["a"], topo.pods["b"]
	const dead = 9 // nothing listens there
	r := &recorder{TB: t}
	check(r, tcpProbe("a->b dead", a.ns, b.ip4, dead, false), udpProbe("a->b dead", a.ns, b.ip6, dead, false))
	if len(r.errs) != 2 || !strings.Contains(r.errs[0], "refused, want blocked") || !strings.Contains(r.errs[1], "refused, want blocked") {
		t.Fatalf("a dead listener passed a deny cell: %q", r.errs)
	}
	check(t, tcpProbe("a->b live", a.ns, b.ip4, servedPorts[0], true))
}
