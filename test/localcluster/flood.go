package localcluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

// FloodTarget is one destination of a Flood.
type FloodTarget struct {
	Addr     netip.AddrPort
	Protocol corev1.Protocol // TCP or UDP
	// SourcePort, for UDP, sends every datagram from this port (one flow,
	// the same 5-tuple each time); zero: an ephemeral port.
	SourcePort uint16
}

// Flood sends from inside a pod's network namespace, every interval, one
// UDP datagram or one TCP SYN (a new non-blocking connect) to each target,
// until stopped: a process that talks from the first moment it can.
type Flood struct {
	stop   chan struct{}
	done   chan error
	sent   atomic.Int64
	failed atomic.Int64
	// firstSent is when the kernel took the first packet (Unix
	// nanoseconds, 0: not yet); failedBefore, how many sends had failed
	// by then.
	firstSent    atomic.Int64
	failedBefore atomic.Int64

	mu sync.Mutex
	// connected counts, per TCP target, the connections that completed.
	connected map[netip.AddrPort]int64
}

// maxOpenConnects bounds the half-open TCP sockets a Flood keeps.
const maxOpenConnects = 64

// StartFlood starts a Flood from a pod. Send errors (no route yet, say)
// are not counted as sent and do not stop it.
func (c *Cluster) StartFlood(p Pod, targets []FloodTarget, every time.Duration) *Flood {
	f := &Flood{stop: make(chan struct{}), done: make(chan error, 1), connected: map[netip.AddrPort]int64{}}
	go func() { f.done <- inNetNS(p.NetNS, func() error { return f.run(targets, every) }) }()
	return f
}

func (f *Flood) run(targets []FloodTarget, every time.Duration) error {
	type pending struct {
		fd     int
		target netip.AddrPort
	}
	var open []pending
	defer func() {
		for _, p := range open {
			unix.Close(p.fd)
		}
	}()
	// A SYN that gets an answer completes within a tick or two: keep the
	// sockets of two rounds, to see which connections completed.
	maxOpen := max(maxOpenConnects, 2*len(targets))
	udp := map[[2]int]int{} // family, source port
	defer func() {
		for _, fd := range udp {
			unix.Close(fd)
		}
	}()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		open = slices.DeleteFunc(open, func(p pending) bool {
			if _, err := unix.Getpeername(p.fd); err != nil {
				return false // in progress, refused or unanswered
			}
			f.mu.Lock()
			f.connected[p.target]++
			f.mu.Unlock()
			unix.Close(p.fd)
			return true
		})
		for _, tg := range targets {
			family := unix.AF_INET
			if tg.Addr.Addr().Is6() {
				family = unix.AF_INET6
			}
			sa := sockaddr(tg.Addr)
			switch tg.Protocol {
			case corev1.ProtocolUDP:
				key := [2]int{family, int(tg.SourcePort)}
				fd, ok := udp[key]
				if !ok {
					var err error
					if fd, err = unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0); err != nil {
						return fmt.Errorf("opening a UDP socket: %w", err)
					}
					udp[key] = fd
					if tg.SourcePort != 0 {
						local := sockaddr(netip.AddrPortFrom(netip.IPv4Unspecified(), tg.SourcePort))
						if family == unix.AF_INET6 {
							local = sockaddr(netip.AddrPortFrom(netip.IPv6Unspecified(), tg.SourcePort))
						}
						if err := unix.Bind(fd, local); err != nil {
							return fmt.Errorf("binding UDP port %d: %w", tg.SourcePort, err)
						}
					}
				}
				f.count(unix.Sendto(fd, []byte("flood"), 0, sa) == nil)
			case corev1.ProtocolTCP:
				fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					return fmt.Errorf("opening a TCP socket: %w", err)
				}
				err = unix.Connect(fd, sa)
				f.count(err == nil || errors.Is(err, unix.EINPROGRESS))
				open = append(open, pending{fd, tg.Addr})
				if len(open) > maxOpen {
					unix.Close(open[0].fd)
					open = open[1:]
				}
			default:
				return fmt.Errorf("flood: protocol %s", tg.Protocol)
			}
		}
		select {
		case <-f.stop:
			return nil
		case <-t.C:
		}
	}
}

// count counts one send (only the Flood's goroutine calls it).
func (f *Flood) count(took bool) {
	if !took {
		f.failed.Add(1)
		return
	}
	if f.sent.Add(1) == 1 {
		f.failedBefore.Store(f.failed.Load())
		f.firstSent.Store(time.Now().UnixNano())
	}
}

// Sent is how many packets the kernel took so far (datagrams sent, SYNs
// started).
func (f *Flood) Sent() int64 { return f.sent.Load() }

// Failed is how many sends the kernel refused so far (no interface or no
// route yet, say).
func (f *Flood) Failed() int64 { return f.failed.Load() }

// FirstSent returns when the kernel took the Flood's first packet (zero if
// it has not yet) and how many sends it had refused before: a Flood that
// began before its namespace could send anywhere has refusals before its
// first packet.
func (f *Flood) FirstSent() (time.Time, int64) {
	ns := f.firstSent.Load()
	if ns == 0 {
		return time.Time{}, f.failed.Load()
	}
	return time.Unix(0, ns), f.failedBefore.Load()
}

// Connected returns, per TCP target, how many of its connections
// completed (the target answered the SYN), as seen so far.
func (f *Flood) Connected() map[netip.AddrPort]int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.connected)
}

// Stop ends the Flood and reports an error that ended it early.
func (f *Flood) Stop() error {
	select {
	case <-f.stop:
	default:
		close(f.stop)
	}
	return <-f.done
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// Capture counts, on a pod's interface, the packets that arrive from given
// source addresses (an AF_PACKET socket: it sees what the wire delivers,
// before the pod's own stack, whatever the protocol).
type Capture struct {
	fd      int
	sources map[netip.Addr]bool // empty: every source
	done    chan struct{}
	stopped atomic.Bool

	mu       sync.Mutex
	count    int64
	first    time.Time
	bySource map[netip.Addr]*seen
}

// seen is what a Capture counted from one source.
type seen struct {
	count int64
	first time.Time
}

// CaptureFrom starts counting what a pod receives from the sources; with
// none, from every source (SeenFrom tells them apart), for a sender whose
// addresses are not known yet.
func (c *Cluster) CaptureFrom(pod string, sources ...netip.Addr) (*Capture, error) {
	p, ok := c.Pod(pod)
	if !ok {
		return nil, fmt.Errorf("no pod %q", pod)
	}
	cp := &Capture{sources: map[netip.Addr]bool{}, done: make(chan struct{}), bySource: map[netip.Addr]*seen{}}
	for _, s := range sources {
		cp.sources[s] = true
	}
	proto := int(htons(unix.ETH_P_ALL))
	err := inNetNS(p.NetNS, func() error {
		ifc, err := net.InterfaceByName(podInterface)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("opening a packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("binding the packet socket to %s: %w", podInterface, err)
		}
		tv := unix.Timeval{Usec: 100000}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		cp.fd = fd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capturing on %s: %w", pod, err)
	}
	go cp.read()
	return cp, nil
}

// read counts until Close; the socket is closed here, so that no other
// goroutine closes it while a read is under way.
func (cp *Capture) read() {
	defer close(cp.done)
	defer unix.Close(cp.fd)
	buf := make([]byte, 65536)
	for !cp.stopped.Load() {
		n, from, err := unix.Recvfrom(cp.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		now := time.Now()
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		src, ok := sourceAddr(buf[:n])
		if !ok || (len(cp.sources) > 0 && !cp.sources[src]) {
			continue
		}
		cp.mu.Lock()
		if cp.count == 0 {
			cp.first = now
		}
		cp.count++
		s := cp.bySource[src]
		if s == nil {
			s = &seen{first: now}
			cp.bySource[src] = s
		}
		s.count++
		cp.mu.Unlock()
	}
}

// sourceAddr reads the source address of an IPv4 or IPv6 packet.
func sourceAddr(pkt []byte) (netip.Addr, bool) {
	if len(pkt) < 1 {
		return netip.Addr{}, false
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) >= 20 {
			return netip.AddrFrom4([4]byte(pkt[12:16])), true
		}
	case 6:
		if len(pkt) >= 40 {
			return netip.AddrFrom16([16]byte(pkt[8:24])), true
		}
	}
	return netip.Addr{}, false
}

// Seen returns how many packets arrived from the sources, and when the
// first did (zero if none).
func (cp *Capture) Seen() (int64, time.Time) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.count, cp.first
}

// SeenFrom returns how many of the packets counted came from the given
// sources, and when the first of them did (zero if none).
func (cp *Capture) SeenFrom(sources ...netip.Addr) (int64, time.Time) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	var n int64
	var first time.Time
	for _, src := range slices.Compact(slices.SortedFunc(slices.Values(sources), netip.Addr.Compare)) {
		if s := cp.bySource[src]; s != nil {
			n += s.count
			if first.IsZero() || s.first.Before(first) {
				first = s.first
			}
		}
	}
	return n, first
}

// Close stops counting.
func (cp *Capture) Close() {
	cp.stopped.Store(true)
	<-cp.done
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
