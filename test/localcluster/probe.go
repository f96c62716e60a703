package localcluster

import (
	"bufio"
	"context"
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
	// Refused: the target's namespace answered that nothing serves the
	// port (TCP reset, ICMP port unreachable, SCTP ABORT).
	Refused Outcome = "refused"
	// Blocked: no answer within the timeout, or a network unreachable.
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
// a name the target declares) and reports whether the target answered.
// Refusals and timeouts are false with a nil error; err is for problems of
// the harness.
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

// classify turns a socket error into an outcome.
func classify(err error) (Outcome, string) {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return Refused, "connection refused"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return Blocked, "no answer"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return Blocked, "host unreachable"
	case errors.Is(err, syscall.ENETUNREACH):
		return Blocked, "network unreachable"
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return Blocked, "administratively prohibited"
	case errors.Is(err, syscall.ECONNRESET):
		return Refused, "connection reset"
	case errors.Is(err, syscall.ENOPROTOOPT):
		return Refused, "protocol unreachable"
	}
	return Blocked, err.Error()
}

func probeTCP(dst netip.AddrPort, deadline time.Time) (Outcome, string, string, error) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		o, why := classify(err)
		return o, "", why, nil
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(deadline)
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		o, why := classify(err)
		return o, "", "connected, then " + why, nil
	}
	return Connected, strings.TrimSpace(line), "", nil
}

func probeUDP(dst netip.AddrPort, deadline time.Time) (Outcome, string, string, error) {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
	if err != nil {
		o, why := classify(err)
		return o, "", why, nil
	}
	defer conn.Close()
	buf := make([]byte, 512)
	// Resend a few times within the deadline: a datagram may be lost
	// while the neighbour entry resolves.
	const every = 250 * time.Millisecond
	var last error
	for time.Now().Before(deadline) {
		if _, err := conn.Write([]byte("probe\n")); err != nil {
			o, why := classify(err)
			if o == Refused {
				return o, "", why, nil
			}
			last = err
		}
		_ = conn.SetReadDeadline(minTime(time.Now().Add(every), deadline))
		n, err := conn.Read(buf)
		if err == nil {
			return Connected, strings.TrimSpace(string(buf[:n])), "", nil
		}
		if o, why := classify(err); o == Refused {
			return o, "", why, nil
		}
		last = err
	}
	o, why := classify(last)
	return o, "", why, nil
}

func probeSCTP(dst netip.AddrPort, deadline time.Time) (Outcome, string, string, error) {
	network := "ip4:132"
	if dst.Addr().Is6() {
		network = "ip6:132"
	}
	conn, err := net.ListenIP(network, nil)
	if err != nil {
		return "", "", "", fmt.Errorf("raw SCTP socket: %w", err)
	}
	defer conn.Close()
	src := uint16(32768 + rand.IntN(28000))
	tag := rand.Uint32() | 1
	init := sctpInit(src, dst.Port(), tag)
	to := &net.IPAddr{IP: dst.Addr().AsSlice()}
	buf := make([]byte, 65536)
	const every = 250 * time.Millisecond
	for time.Now().Before(deadline) {
		if _, err := conn.WriteTo(init, to); err != nil {
			o, why := classify(err)
			if o == Blocked && time.Now().Add(every).After(deadline) {
				return o, "", why, nil
			}
		}
		resend := minTime(time.Now().Add(every), deadline)
		for {
			_ = conn.SetReadDeadline(resend)
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				// An ICMP error queued on the raw socket may be about
				// another probe's packet from this pod: only an SCTP
				// answer counts.
				continue
			}
			ip, ok := netip.AddrFromSlice(from.(*net.IPAddr).IP)
			if !ok || ip.Unmap() != dst.Addr() {
				continue
			}
			pkt, err := parseSCTP(buf[:n])
			if err != nil || pkt.SrcPort != dst.Port() || pkt.DstPort != src || pkt.VerificationTag != tag {
				continue
			}
			switch pkt.ChunkType {
			case chunkInitAck:
				return Connected, string(pkt.Cookie), "", nil
			case chunkAbort:
				return Refused, "", "ABORT", nil
			}
		}
	}
	return Blocked, "", "no answer", nil
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
			pr := ProbeRequest{From: from, To: to, Port: req.Port, Protocol: req.Protocol, Family: req.Family, Timeout: req.Timeout}
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
