package localcluster

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Family is an IP family.
type Family string

const (
	IPv4 Family = "IPv4"
	IPv6 Family = "IPv6"
)

// Outcome is what a probe saw.
type Outcome string

const (
	// Connected: the target answered with its name.
	Connected Outcome = "connected"
	// Refused: an answer other than the target's name: a TCP reset, an
	// ICMP error (port, protocol, host or network unreachable,
	// administratively prohibited) or an SCTP ABORT. Nothing serves the
	// port, or something rejected the packet; a policy drop never answers,
	// so a refusal is never a denied connection.
	Refused Outcome = "refused"
	// Blocked: no answer at all within the timeout, which is what a
	// policy drop looks like.
	Blocked Outcome = "blocked"
)

// DefaultProbeTimeout bounds a probe that gets no answer. It is below
// TCP's first SYN retransmission, so a dropped SYN is never retried.
const DefaultProbeTimeout = 900 * time.Millisecond

// ProbeRequest is one connection attempt from a pod to a pod.
type ProbeRequest struct {
	From, To string // "namespace/name"
	// Port is a number, or the name of one of the target's ports.
	Port intstr.IntOrString
	// Protocol is TCP, UDP or SCTP. Default: a named port's protocol, else TCP.
	Protocol corev1.Protocol
	Family   Family        // default IPv4
	Timeout  time.Duration // default DefaultProbeTimeout
	// Service probes the target's own Service ClusterIP (real nodes: IPv4,
	// the Service port equal to the container port), as upstream's
	// conformance suite does, instead of the pod's address.
	Service bool
}

// ProbeResult is what a probe saw.
type ProbeResult struct {
	From, To string
	Protocol corev1.Protocol
	Dst      netip.AddrPort
	Outcome  Outcome
	// Reply is the name the target answered with.
	Reply  string
	Detail string
	Took   time.Duration
	// Err is a problem of the harness (unknown pod, port not declared,
	// namespace gone, answer from the wrong pod): no verdict.
	Err error
}

// Reachable reports whether the probe connected.
func (r ProbeResult) Reachable() bool { return r.Err == nil && r.Outcome == Connected }

// Blocked reports whether the probe got no answer at all: what a denied
// cell must show. A refusal is not blocked: a dead listener on a port the
// policy allows answers with a reset or an ICMP error.
func (r ProbeResult) Blocked() bool { return r.Err == nil && r.Outcome == Blocked }

func (r ProbeResult) String() string {
	if r.Err != nil {
		return fmt.Sprintf("%s -> %s: error: %v", r.From, r.To, r.Err)
	}
	s := fmt.Sprintf("%s -> %s %s/%s: %s", r.From, r.To, r.Dst, r.Protocol, r.Outcome)
	if r.Detail != "" {
		s += " (" + r.Detail + ")"
	}
	return s + fmt.Sprintf(" in %s", r.Took.Round(time.Millisecond))
}

// Probe connects over IPv4 from one pod to another on a port (a number, or
// a name the target declares) and reports whether the target answered with
// its name. Refusals and timeouts are false with a nil error (ProbeWith
// tells them apart); err is for problems of the harness.
func (c *Cluster) Probe(ctx context.Context, from, to string, port intstr.IntOrString, protocol corev1.Protocol) (bool, error) {
	r := c.ProbeWith(ctx, ProbeRequest{From: from, To: to, Port: port, Protocol: protocol})
	return r.Reachable(), r.Err
}

// ProbeWith runs one probe and reports what it saw.
func (c *Cluster) ProbeWith(ctx context.Context, req ProbeRequest) ProbeResult {
	res := ProbeResult{From: req.From, To: req.To}
	from, ok := c.Pod(req.From)
	if !ok {
		res.Err = fmt.Errorf("no pod %q", req.From)
		return res
	}
	to, ok := c.Pod(req.To)
	if !ok {
		res.Err = fmt.Errorf("no pod %q", req.To)
		return res
	}
	number, proto, err := resolvePort(to, req.Port, req.Protocol)
	if err != nil {
		res.Err = err
		return res
	}
	fam := req.Family
	if fam == "" {
		fam = IPv4
	}
	timeout := req.Timeout
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	res.Protocol = proto
	res.Dst = netip.AddrPortFrom(to.IP(fam), uint16(number))
	if req.Service {
		if !to.ServiceIP.IsValid() || fam != IPv4 {
			res.Err = fmt.Errorf("pod %s has no %s Service address", to.Key(), fam)
			return res
		}
		res.Dst = netip.AddrPortFrom(to.ServiceIP, uint16(number))
	}
	start := time.Now()
	deadline := start.Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	err = inNetNS(from.NetNS, func() error {
		var err error
		switch proto {
		case corev1.ProtocolTCP:
			res.Outcome, res.Reply, res.Detail, err = probeTCP(res.Dst, deadline)
		case corev1.ProtocolUDP:
			res.Outcome, res.Reply, res.Detail, err = probeUDP(res.Dst, deadline)
		case corev1.ProtocolSCTP:
			res.Outcome, res.Reply, res.Detail, err = probeSCTP(res.Dst, deadline)
		}
		return err
	})
	res.Took = time.Since(start)
	if err != nil {
		res.Err = err
		return res
	}
	if res.Outcome == Connected && res.Reply != to.Key() {
		res.Err = fmt.Errorf("%s answered %q, not %q", res.Dst, res.Reply, to.Key())
	}
	return res
}

// resolvePort turns a port number or name into a number and protocol.
func resolvePort(to Pod, port intstr.IntOrString, proto corev1.Protocol) (int32, corev1.Protocol, error) {
	if port.Type == intstr.String {
		for _, p := range to.Ports {
			if p.Name == port.StrVal && (proto == "" || p.Protocol == proto) {
				return p.Port, p.Protocol, nil
			}
		}
		return 0, "", fmt.Errorf("pod %s declares no port named %q", to.Key(), port.StrVal)
	}
	if port.IntVal < 1 || port.IntVal > 65535 {
		return 0, "", fmt.Errorf("port %d is not between 1 and 65535", port.IntVal)
	}
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	switch proto {
	case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
	default:
		return 0, "", fmt.Errorf("protocol %q is not TCP, UDP or SCTP", proto)
	}
	return port.IntVal, proto, nil
}

// classify turns a socket error into an outcome: a timeout is Blocked, an
// answer from the network (a reset, an ICMP error) Refused. Any other error
// is the harness's: no verdict.
func classify(err error) (Outcome, string, error) {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return Blocked, "no answer", nil
	case errors.Is(err, syscall.ECONNREFUSED):
		return Refused, "connection refused", nil
	case errors.Is(err, syscall.ECONNRESET):
		return Refused, "connection reset", nil
	case errors.Is(err, syscall.ENOPROTOOPT):
		return Refused, "protocol unreachable", nil
	case errors.Is(err, syscall.EHOSTUNREACH):
		return Refused, "host unreachable", nil
	case errors.Is(err, syscall.ENETUNREACH):
		return Refused, "network unreachable", nil
	case errors.Is(err, syscall.EACCES):
		return Refused, "administratively prohibited", nil
	}
	return "", "", fmt.Errorf("probe socket: %w", err)
}

func probeTCP(dst netip.AddrPort, deadline time.Time) (Outcome, string, string, error) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		o, why, err := classify(err)
		return o, "", why, err
	}
	defer conn.Close()
	// The handshake went through, so the policies let the connection in:
	// the server sends its name at once, but give it a moment past a short
	// probe timeout. A server that stays silent is the harness's problem.
	if grace := time.Now().Add(time.Second); grace.After(deadline) {
		deadline = grace
	}
	_ = conn.SetReadDeadline(deadline)
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", "", "", fmt.Errorf("%s accepted the connection but sent no name: %w", dst, err)
	}
	return Connected, strings.TrimSpace(line), "", nil
}

func probeUDP(dst netip.AddrPort, deadline time.Time) (Outcome, string, string, error) {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
	if err != nil {
		o, why, err := classify(err)
		return o, "", why, err
	}
	defer conn.Close()
	buf := make([]byte, 512)
	// Resend a few times within the deadline: a datagram may be lost
	// while the neighbour entry resolves. An ICMP error about an earlier
	// datagram shows up on the next write or read.
	const every = 250 * time.Millisecond
	for time.Now().Before(deadline) {
		if _, err := conn.Write([]byte("probe\n")); err != nil {
			o, why, err := classify(err)
			if err != nil || o == Refused {
				return o, "", why, err
			}
		}
		_ = conn.SetReadDeadline(minTime(time.Now().Add(every), deadline))
		n, err := conn.Read(buf)
		if err == nil {
			return Connected, strings.TrimSpace(string(buf[:n])), "", nil
		}
		if o, why, err := classify(err); err != nil || o == Refused {
			return o, "", why, err
		}
	}
	return Blocked, "", "no answer", nil
}

// sctpAnswer is what came back to an SCTP probe.
type sctpAnswer struct {
	outcome       Outcome
	reply, detail string
}

func probeSCTP(dst netip.AddrPort, deadline time.Time) (Outcome, string, string, error) {
	network, icmpNetwork := "ip4:132", "ip4:icmp"
	if dst.Addr().Is6() {
		network, icmpNetwork = "ip6:132", "ip6:ipv6-icmp"
	}
	conn, err := net.ListenIP(network, nil)
	if err != nil {
		return "", "", "", fmt.Errorf("raw SCTP socket: %w", err)
	}
	defer conn.Close()
	// The kernel has no SCTP: where no pod server holds a raw SCTP socket,
	// it answers an INIT with an ICMP error, which only a raw ICMP socket
	// sees.
	icmp, err := net.ListenIP(icmpNetwork, nil)
	if err != nil {
		return "", "", "", fmt.Errorf("raw ICMP socket: %w", err)
	}
	defer icmp.Close()
	src := uint16(32768 + rand.IntN(28000))
	tag := rand.Uint32() | 1
	init := sctpInit(src, dst.Port(), tag)
	to := &net.IPAddr{IP: dst.Addr().AsSlice()}
	answers := make(chan sctpAnswer, 2)
	go readSCTPAnswer(conn, dst, src, tag, answers)
	go readICMPAnswer(icmp, dst, src, protoSCTP, answers)
	timeout := time.NewTimer(time.Until(deadline))
	defer timeout.Stop()
	resend := time.NewTicker(250 * time.Millisecond)
	defer resend.Stop()
	for {
		if _, err := conn.WriteTo(init, to); err != nil {
			o, why, err := classify(err)
			if err != nil || o == Refused {
				return o, "", why, err
			}
		}
		select {
		case a := <-answers:
			return a.outcome, a.reply, a.detail, nil
		case <-timeout.C:
			return Blocked, "", "no answer", nil
		case <-resend.C:
		}
	}
}

// readPackets reads a raw socket until the socket closes or match returns
// true for a packet.
func readPackets(conn *net.IPConn, match func(pkt []byte, from net.Addr) bool) {
	buf := make([]byte, 65536)
	for {
		n, from, err := conn.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err == nil && match(buf[:n], from) {
			return
		}
	}
}

// readSCTPAnswer reads the raw SCTP socket until it finds the answer to
// the INIT from src with tag (INIT ACK or ABORT) or the socket closes.
func readSCTPAnswer(conn *net.IPConn, dst netip.AddrPort, src uint16, tag uint32, answers chan<- sctpAnswer) {
	readPackets(conn, func(buf []byte, from net.Addr) bool {
		ip, ok := netip.AddrFromSlice(from.(*net.IPAddr).IP)
		if !ok || ip.Unmap() != dst.Addr() {
			return false
		}
		pkt, err := parseSCTP(buf)
		if err != nil || pkt.SrcPort != dst.Port() || pkt.DstPort != src || pkt.VerificationTag != tag {
			return false
		}
		switch pkt.ChunkType {
		case chunkInitAck:
			answers <- sctpAnswer{outcome: Connected, reply: string(pkt.Cookie)}
			return true
		case chunkAbort:
			answers <- sctpAnswer{outcome: Refused, detail: "ABORT"}
			return true
		}
		return false
	})
}

// readICMPAnswer reads a raw ICMP socket until it finds an error about a
// packet of protocol proto from port src to dst, or the socket closes.
func readICMPAnswer(conn *net.IPConn, dst netip.AddrPort, src uint16, proto uint8, answers chan<- sctpAnswer) {
	readPackets(conn, func(buf []byte, _ net.Addr) bool {
		e, ok := parseICMPError(buf, dst.Addr().Is6())
		if ok && e.proto == proto && e.dst == dst && e.srcPort == src {
			answers <- sctpAnswer{outcome: Refused, detail: e.what}
			return true
		}
		return false
	})
}

// icmpError is an ICMP error message and the packet it quotes.
type icmpError struct {
	what    string // e.g. "ICMP protocol unreachable"
	proto   uint8  // the quoted packet's protocol (next header)
	dst     netip.AddrPort
	srcPort uint16
}

// parseICMPError decodes an ICMP (or, with v6, ICMPv6) destination
// unreachable or parameter problem message without its IP header, with the
// start of the packet it quotes: IP header (IPv6 without extension
// headers) and the first four bytes of the transport header, the ports.
func parseICMPError(b []byte, v6 bool) (icmpError, bool) {
	if len(b) < 8 {
		return icmpError{}, false
	}
	typ, code, q := b[0], b[1], b[8:]
	var e icmpError
	if !v6 {
		if typ != 3 || len(q) < 20 || q[0]>>4 != 4 {
			return e, false
		}
		e.what = map[uint8]string{0: "ICMP network unreachable", 1: "ICMP host unreachable", 2: "ICMP protocol unreachable",
			3: "ICMP port unreachable", 9: "ICMP network prohibited", 10: "ICMP host prohibited", 13: "ICMP administratively prohibited"}[code]
		ihl := int(q[0]&0x0f) * 4
		if ihl < 20 || len(q) < ihl+4 {
			return e, false
		}
		e.proto = q[9]
		e.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(q[16:20])), binary.BigEndian.Uint16(q[ihl+2:]))
		e.srcPort = binary.BigEndian.Uint16(q[ihl:])
	} else {
		switch {
		case typ == 1:
			e.what = map[uint8]string{0: "ICMPv6 no route", 1: "ICMPv6 administratively prohibited", 3: "ICMPv6 address unreachable",
				4: "ICMPv6 port unreachable", 5: "ICMPv6 source address failed policy", 6: "ICMPv6 reject route"}[code]
		case typ == 4 && code == 1:
			e.what = "ICMPv6 unrecognized next header"
		default:
			return e, false
		}
		if len(q) < 44 || q[0]>>4 != 6 {
			return e, false
		}
		e.proto = q[6]
		e.dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(q[24:40])), binary.BigEndian.Uint16(q[42:]))
		e.srcPort = binary.BigEndian.Uint16(q[40:])
	}
	if e.what == "" {
		e.what = fmt.Sprintf("ICMP type %d code %d", typ, code)
	}
	return e, true
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// MatrixRequest is a probe from every pod of From to every pod of To.
type MatrixRequest struct {
	// Port is a number or a name; zero probes each target's first port.
	Port     intstr.IntOrString
	Protocol corev1.Protocol
	Family   Family
	From, To []string // default: every pod
	Timeout  time.Duration
	// Service probes each target's Service ClusterIP (ProbeRequest.Service).
	Service bool
	// Parallel bounds the probes in flight (default 8).
	Parallel int
}

// Matrix is the outcome of a MatrixRequest.
type Matrix struct {
	Request  MatrixRequest
	From, To []string
	// Results[i][j] is the probe from From[i] to To[j].
	Results [][]ProbeResult
}

// Matrix probes from every pod to every pod, in parallel.
func (c *Cluster) Matrix(ctx context.Context, req MatrixRequest) *Matrix {
	m := &Matrix{Request: req, From: req.From, To: req.To}
	if len(m.From) == 0 {
		for _, p := range c.Pods() {
			m.From = append(m.From, p.Key())
		}
	}
	if len(m.To) == 0 {
		for _, p := range c.Pods() {
			m.To = append(m.To, p.Key())
		}
	}
	par := req.Parallel
	if par <= 0 {
		par = 8
	}
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	m.Results = make([][]ProbeResult, len(m.From))
	for i, from := range m.From {
		m.Results[i] = make([]ProbeResult, len(m.To))
		for j, to := range m.To {
			pr := ProbeRequest{From: from, To: to, Port: req.Port, Protocol: req.Protocol, Family: req.Family, Timeout: req.Timeout, Service: req.Service}
			if req.Port.Type == intstr.Int && req.Port.IntVal == 0 {
				target, ok := c.Pod(to)
				if !ok || len(target.Ports) == 0 {
					m.Results[i][j] = ProbeResult{From: from, To: to, Err: fmt.Errorf("pod %s declares no port", to)}
					continue
				}
				pr.Port, pr.Protocol = intstr.FromInt32(target.Ports[0].Port), target.Ports[0].Protocol
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				m.Results[i][j] = c.ProbeWith(ctx, pr)
			}()
		}
	}
	wg.Wait()
	return m
}

// Result is the probe from one pod to another.
func (m *Matrix) Result(from, to string) (ProbeResult, bool) {
	for i, f := range m.From {
		for j, t := range m.To {
			if f == from && t == to {
				return m.Results[i][j], true
			}
		}
	}
	return ProbeResult{}, false
}

// cell is a result as the table shows it.
func cell(r ProbeResult) string {
	switch {
	case r.Err != nil && strings.Contains(r.Err.Error(), "declares no port"):
		return "-"
	case r.Err != nil:
		return "error"
	case r.Outcome == Connected:
		return "ok"
	case r.Outcome == Refused:
		return "refused"
	}
	return "X"
}

// String renders the matrix as a table: rows are sources, columns targets
// with the port probed; "ok" connected, "X" blocked, "refused", "-" the
// target has no such port.
func (m *Matrix) String() string {
	var b strings.Builder
	header := []string{"FROM \\ TO"}
	ports := []string{""}
	for j, to := range m.To {
		header = append(header, to)
		port := ""
		for i := range m.From {
			if r := m.Results[i][j]; r.Err == nil || r.Dst.IsValid() {
				port = fmt.Sprintf("%d/%s", r.Dst.Port(), r.Protocol)
				break
			}
		}
		ports = append(ports, port)
	}
	rows := [][]string{header, ports}
	for i, from := range m.From {
		row := []string{from}
		for j := range m.To {
			row = append(row, cell(m.Results[i][j]))
		}
		rows = append(rows, row)
	}
	width := make([]int, len(header))
	for _, row := range rows {
		for k, s := range row {
			width[k] = max(width[k], len(s))
		}
	}
	for _, row := range rows {
		for k, s := range row {
			if k == len(row)-1 {
				b.WriteString(s)
			} else {
				fmt.Fprintf(&b, "%-*s  ", width[k], s)
			}
		}
		b.WriteString("\n")
	}
	var errs []string
	for i := range m.From {
		for j := range m.To {
			if r := m.Results[i][j]; r.Err != nil && cell(r) == "error" {
				errs = append(errs, r.String())
			}
		}
	}
	if len(errs) > 0 {
		b.WriteString("errors:\n  " + strings.Join(errs, "\n  ") + "\n")
	}
	return b.String()
}

// Counts returns how many probes connected, were blocked, refused, or failed.
func (m *Matrix) Counts() (connected, blocked, refused, errs int) {
	for _, row := range m.Results {
		for _, r := range row {
			switch {
			case r.Err != nil:
				errs++
			case r.Outcome == Connected:
				connected++
			case r.Outcome == Refused:
				refused++
			default:
				blocked++
			}
		}
	}
	return
}
