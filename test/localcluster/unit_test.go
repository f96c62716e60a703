package localcluster

import (
	"context"
	"errors"
	"hash/crc32"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestShopTopology(t *testing.T) {
	shop := ShopTopology()
	if len(shop.Nodes) != 2 || len(shop.Pods) != 5 {
		t.Fatalf("shop: %d nodes, %d pods; want 2, 5", len(shop.Nodes), len(shop.Pods))
	}
	perNode := map[string]int{}
	for _, p := range shop.Pods {
		perNode[p.Node]++
		for _, port := range p.Ports {
			if port.Protocol == "" {
				t.Errorf("%s: port %d has no protocol after Normalize", p.Key(), port.Port)
			}
		}
	}
	if perNode["node-1"] == 0 || perNode["node-2"] == 0 {
		t.Errorf("shop pods per node %v: want both nodes used", perNode)
	}
	one, err := shop.WithNodes(1)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range one.Pods {
		if p.Node != "node-1" {
			t.Errorf("one node: %s on %q", p.Key(), p.Node)
		}
	}
	three, err := shop.WithNodes(3)
	if err != nil {
		t.Fatal(err)
	}
	if len(three.Nodes) != 3 {
		t.Errorf("WithNodes(3): %d nodes", len(three.Nodes))
	}
}

func TestParseTopologyErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{`pods: []`, "at least one node"},
		{`nodes: [{name: n}, {name: n}]`, "listed twice"},
		{"nodes: [{name: n}]\npods: [{namespace: a, name: p, node: m}]", "not in the topology"},
		{"nodes: [{name: n}]\npods: [{namespace: a, name: p, ports: [{port: 80, protocol: ICMP}]}]", "not TCP, UDP or SCTP"},
		{"nodes: [{name: n}]\npods: [{namespace: a, name: p, ports: [{port: 80}, {port: 80}]}]", "listed twice"},
		{"nodes: [{name: n}]\npods: [{namespace: a, name: p, ports: [{name: Bad_Name, port: 80}]}]", "port name"},
		{"nodes: [{name: n}]\nbogus: 1", "unknown field"},
	} {
		_, err := ParseTopology([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.yaml, err, tc.want)
		}
	}
	top, err := ParseTopology([]byte("nodes: [{name: n1}, {name: n2}]\npods: [{namespace: a, name: p}, {namespace: a, name: q}, {namespace: b, name: r}]"))
	if err != nil {
		t.Fatal(err)
	}
	if got := []string{top.Pods[0].Node, top.Pods[1].Node, top.Pods[2].Node}; strings.Join(got, ",") != "n1,n2,n1" {
		t.Errorf("spread: %v, want n1,n2,n1", got)
	}
	if len(top.Namespaces) != 2 {
		t.Errorf("namespaces %v, want a and b added", top.Namespaces)
	}
	// YAML 1.2: y, n, on, off are strings (YAML 1.1 would make "true" of them).
	top, err = ParseTopology([]byte("nodes: [{name: n}]\nnamespaces: [{name: y, labels: {on: off}}]"))
	if err != nil {
		t.Fatal(err)
	}
	if ns := top.Namespaces[0]; ns.Name != "y" || ns.Labels["on"] != "off" {
		t.Errorf("namespace %+v, want y with on=off", ns)
	}
	if _, err := ParseTopology([]byte("nodes: [{name: n}]\nnamespaces: [{name: a, labels: {pci: true}}]")); err == nil {
		t.Error("an unquoted boolean label value was accepted")
	}
}

func TestPlanAddresses(t *testing.T) {
	nodes, pods := plan("demo", ShopTopology())
	seen := map[netip.Addr]string{}
	for _, n := range nodes {
		for _, a := range []netip.Addr{n.IPv4, n.IPv6} {
			if !clusterRangeV4.Contains(a) && !clusterRangeV6.Contains(a) {
				t.Errorf("node %s address %s outside 198.18.0.0/15 and fd00::/8", n.Name, a)
			}
		}
		if !strings.HasPrefix(n.NetNS, "ngd-demo-") {
			t.Errorf("node netns %s", n.NetNS)
		}
	}
	byNode := map[string]Node{}
	for _, n := range nodes {
		byNode[n.Name] = n
	}
	for _, p := range pods {
		n := byNode[p.Node]
		if !n.PodCIDRv4.Contains(p.IPv4) || !n.PodCIDRv6.Contains(p.IPv6) {
			t.Errorf("pod %s %s %s outside node %s's %s %s", p.Key(), p.IPv4, p.IPv6, n.Name, n.PodCIDRv4, n.PodCIDRv6)
		}
		for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
			if other, ok := seen[a]; ok {
				t.Errorf("%s of %s also belongs to %s", a, p.Key(), other)
			}
			seen[a] = p.Key()
		}
		if len(p.HostVeth) > 15 {
			t.Errorf("interface name %q is longer than 15 bytes", p.HostVeth)
		}
	}
	if got := podIPv6(2, 1).String(); got != "fd00:18:2::3" {
		t.Errorf("podIPv6(2, 1) = %s", got)
	}
	if got := podCIDRv6(2).String(); got != "fd00:18:2::/64" {
		t.Errorf("podCIDRv6(2) = %s", got)
	}
	if got := underlayIPv6(2).String(); got != "fd00:19::2" {
		t.Errorf("underlayIPv6(2) = %s", got)
	}
}

func TestSCTPPackets(t *testing.T) {
	init := sctpInit(40000, 9000, 0xdeadbeef)
	p, err := parseSCTP(init)
	if err != nil {
		t.Fatal(err)
	}
	if p.ChunkType != chunkInit || p.VerificationTag != 0 || p.InitiateTag != 0xdeadbeef || p.SrcPort != 40000 || p.DstPort != 9000 {
		t.Fatalf("INIT parsed as %+v", p)
	}
	ack, err := parseSCTP(sctpInitAck(p, 7, []byte("x/a")))
	if err != nil {
		t.Fatal(err)
	}
	if ack.ChunkType != chunkInitAck || ack.VerificationTag != 0xdeadbeef || ack.SrcPort != 9000 || ack.DstPort != 40000 || string(ack.Cookie) != "x/a" {
		t.Fatalf("INIT ACK parsed as %+v", ack)
	}
	abort, err := parseSCTP(sctpAbort(p))
	if err != nil {
		t.Fatal(err)
	}
	if abort.ChunkType != chunkAbort || abort.VerificationTag != 0xdeadbeef {
		t.Fatalf("ABORT parsed as %+v", abort)
	}
	init[20] ^= 1
	if _, err := parseSCTP(init); err == nil {
		t.Error("a corrupted INIT passed the CRC32c check")
	}
	// A known vector: the CRC32c of 32 zero bytes (RFC 3720 B.4) is 0x8a9136aa.
	if got := crc32cOf(make([]byte, 32)); got != 0x8a9136aa {
		t.Errorf("CRC32c of 32 zeros = %#x", got)
	}
}

func TestResolvePort(t *testing.T) {
	pod := Pod{Namespace: "x", Name: "a", Ports: []PortSpec{
		{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}, {Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP},
	}}
	n, proto, err := resolvePort(pod, intstrName("dns"), "")
	if err != nil || n != 53 || proto != corev1.ProtocolUDP {
		t.Errorf("dns: %d %s %v", n, proto, err)
	}
	if _, _, err := resolvePort(pod, intstrName("http"), ""); err == nil {
		t.Error("http resolved on a pod without it")
	}
	n, proto, err = resolvePort(pod, intstrInt(8080), "")
	if err != nil || n != 8080 || proto != corev1.ProtocolTCP {
		t.Errorf("8080: %d %s %v", n, proto, err)
	}
}

func crc32cOf(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

func intstrName(s string) intstr.IntOrString { return intstr.FromString(s) }
func intstrInt(n int32) intstr.IntOrString   { return intstr.FromInt32(n) }

// TestClassify: only a timeout is blocked; a reset or an ICMP error is a
// refusal; any other socket error gives no verdict.
func TestClassify(t *testing.T) {
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", err)}
	}
	for _, tc := range []struct {
		err  error
		want Outcome
	}{
		{os.ErrDeadlineExceeded, Blocked},
		{context.DeadlineExceeded, Blocked},
		{opErr(syscall.ECONNREFUSED), Refused},
		{opErr(syscall.ECONNRESET), Refused},
		{opErr(syscall.ENOPROTOOPT), Refused},
		{opErr(syscall.EHOSTUNREACH), Refused},
		{opErr(syscall.ENETUNREACH), Refused},
		{opErr(syscall.EACCES), Refused},
		{opErr(syscall.EPERM), ""},
		{errors.New("something else"), ""},
	} {
		got, why, err := classify(tc.err)
		if got != tc.want || (tc.want == "") != (err != nil) {
			t.Errorf("classify(%v) = %q (%s), error %v; want %q", tc.err, got, why, err, tc.want)
		}
	}
	for _, r := range []ProbeResult{
		{Outcome: Refused, Detail: "connection refused"},
		{Outcome: Connected},
		{Outcome: Blocked, Err: errors.New("harness")},
	} {
		if r.Blocked() {
			t.Errorf("%v counts as blocked: a denied cell would pass on it", r)
		}
	}
	if !(ProbeResult{Outcome: Blocked}).Blocked() {
		t.Error("a probe with no answer does not count as blocked")
	}
}

// TestParseICMPError reads the errors a kernel without SCTP sends for an
// INIT: ICMP protocol unreachable and ICMPv6 unrecognized next header,
// each quoting the INIT's IP header and ports.
func TestParseICMPError(t *testing.T) {
	init := sctpInit(40000, 9000, 7)
	v4 := append([]byte{3, 2, 0, 0, 0, 0, 0, 0}, // type 3 code 2, checksum, unused
		0x45, 0, 0, 52, 0, 0, 0, 0, 64, protoSCTP, 0, 0, 198, 18, 0, 1, 198, 18, 1, 2)
	v4 = append(v4, init...)
	e, ok := parseICMPError(v4, false)
	want := icmpError{what: "ICMP protocol unreachable", proto: protoSCTP, dst: netip.MustParseAddrPort("198.18.1.2:9000"), srcPort: 40000}
	if !ok || e != want {
		t.Errorf("ICMP: %+v %v, want %+v", e, ok, want)
	}
	v6 := []byte{4, 1, 0, 0, 0, 0, 0, 40} // type 4 code 1, checksum, pointer to the next header field
	v6 = append(v6, 0x60, 0, 0, 0, 0, byte(len(init)), protoSCTP, 64)
	v6 = append(v6, netip.MustParseAddr("fd00::1").AsSlice()...)
	v6 = append(v6, netip.MustParseAddr("fd00::1:2").AsSlice()...)
	v6 = append(v6, init...)
	e, ok = parseICMPError(v6, true)
	want = icmpError{what: "ICMPv6 unrecognized next header", proto: protoSCTP, dst: netip.MustParseAddrPort("[fd00::1:2]:9000"), srcPort: 40000}
	if !ok || e != want {
		t.Errorf("ICMPv6: %+v %v, want %+v", e, ok, want)
	}
	// An echo reply and a truncated quote are no errors about a probe.
	if _, ok := parseICMPError([]byte{0, 0, 0, 0, 0, 1, 0, 1}, false); ok {
		t.Error("an echo reply parsed as an error")
	}
	if _, ok := parseICMPError(v4[:30], false); ok {
		t.Error("a quote without the ports parsed")
	}
	if _, ok := parseICMPError([]byte{128, 0, 0, 0, 0, 1, 0, 1}, true); ok {
		t.Error("an ICMPv6 echo request parsed as an error")
	}
}
