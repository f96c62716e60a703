package audit

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
)

var (
	v4a = netip.MustParseAddr("198.18.0.1")
	v4b = netip.MustParseAddr("198.18.0.2")
	v6a = netip.MustParseAddr("fd00::1")
	v6b = netip.MustParseAddr("fd00::2")
)

// ipv4 builds an IPv4 packet with a 20-byte header (or longer with
// options) around l4.
func ipv4(proto uint8, src, dst netip.Addr, l4 []byte, opts ...byte) []byte {
	hl := 20 + len(opts)
	b := make([]byte, hl, hl+len(l4))
	b[0] = 0x40 | byte(hl/4)
	binary.BigEndian.PutUint16(b[2:4], uint16(hl+len(l4)))
	b[8] = 64
	b[9] = proto
	s, d := src.As4(), dst.As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	copy(b[20:], opts)
	return append(b, l4...)
}

// ipv6 builds an IPv6 packet; ext is a chain of extension headers whose
// first next-header value is next, ending with the transport header l4.
func ipv6(next uint8, src, dst netip.Addr, ext, l4 []byte) []byte {
	b := make([]byte, 40, 40+len(ext)+len(l4))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:6], uint16(len(ext)+len(l4)))
	b[6] = next
	b[7] = 64
	s, d := src.As16(), dst.As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	b = append(b, ext...)
	return append(b, l4...)
}

// ports builds a transport header of n bytes starting with two ports.
func ports(src, dst uint16, n int) []byte {
	b := make([]byte, n)
	binary.BigEndian.PutUint16(b[0:2], src)
	binary.BigEndian.PutUint16(b[2:4], dst)
	return b
}

func tcp(src, dst uint16) []byte {
	b := ports(src, dst, 20)
	b[12] = 5 << 4
	b[13] = 0x02 // SYN
	return b
}

func udp(src, dst uint16) []byte  { return ports(src, dst, 8) }
func sctp(src, dst uint16) []byte { return ports(src, dst, 12) }
func icmp(typ, code uint8) []byte { return []byte{typ, code, 0, 0, 0, 1, 0, 1} }

func TestParsePacket(t *testing.T) {
	withPorts := func(p Packet, sp, dp uint16) Packet {
		p.HasPorts, p.SrcPort, p.DstPort = true, sp, dp
		return p
	}
	withICMP := func(p Packet, typ, code uint8) Packet {
		p.HasICMP, p.ICMPType, p.ICMPCode = true, typ, code
		return p
	}
	base4 := func(proto Protocol) Packet { return Packet{Src: v4a, Dst: v4b, Protocol: proto} }
	base6 := func(proto Protocol) Packet { return Packet{Src: v6a, Dst: v6b, Protocol: proto} }

	laterFrag4 := ipv4(17, v4a, v4b, udp(1, 2))
	binary.BigEndian.PutUint16(laterFrag4[6:8], 185) // offset 185*8
	firstFrag4 := ipv4(17, v4a, v4b, udp(1000, 53))
	binary.BigEndian.PutUint16(firstFrag4[6:8], 0x2000) // more fragments, offset 0
	// Total length 22 trims the 6 bytes of padding after it: 2 bytes of UDP.
	padded4 := ipv4(17, v4a, v4b, []byte{0, 1, 0, 2, 0, 0, 0, 0})
	binary.BigEndian.PutUint16(padded4[2:4], 22)
	bigTCP4 := ipv4(6, v4a, v4b, tcp(40000, 443))
	binary.BigEndian.PutUint16(bigTCP4[2:4], 0)

	hopByHop := []byte{60, 0, 1, 4, 0, 0, 0, 0}                          // next: destination options
	destOpts := []byte{17, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} // next: UDP, 16 bytes
	fragFirst := []byte{6, 0, 0, 1, 0, 0, 0, 7}                          // next: TCP, offset 0, M
	fragLater := []byte{6, 0, 0x05, 0x00, 0, 0, 0, 7}                    // next: TCP, offset 160
	auth := []byte{132, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2}                 // next: SCTP, (1+2)*4 bytes

	for _, tc := range []struct {
		name string
		in   []byte
		want Packet
	}{
		{"IPv4 TCP", ipv4(6, v4a, v4b, tcp(40000, 80)), withPorts(base4(ProtocolTCP), 40000, 80)},
		{"IPv4 UDP", ipv4(17, v4a, v4b, udp(5353, 53)), withPorts(base4(ProtocolUDP), 5353, 53)},
		{"IPv4 SCTP", ipv4(132, v4a, v4b, sctp(9999, 81)), withPorts(base4(ProtocolSCTP), 9999, 81)},
		{"IPv4 ICMP echo", ipv4(1, v4a, v4b, icmp(8, 0)), withICMP(base4(ProtocolICMP), 8, 0)},
		{"IPv4 ICMP unreachable", ipv4(1, v4a, v4b, icmp(3, 3)), withICMP(base4(ProtocolICMP), 3, 3)},
		{"IPv4 options", ipv4(6, v4a, v4b, tcp(1, 2), 1, 1, 1, 0), withPorts(base4(ProtocolTCP), 1, 2)},
		{"IPv4 GRE", ipv4(47, v4a, v4b, []byte{0, 0, 8, 0}), base4(47)},
		{"IPv4 first fragment", firstFrag4, withPorts(base4(ProtocolUDP), 1000, 53)},
		{"IPv4 later fragment", laterFrag4, base4(ProtocolUDP)},
		{"IPv4 padding trimmed", padded4, base4(ProtocolUDP)},
		{"IPv4 total length 0", bigTCP4, withPorts(base4(ProtocolTCP), 40000, 443)},
		{"IPv4 TCP cut short", ipv4(6, v4a, v4b, []byte{0, 1, 0}), base4(ProtocolTCP)},
		{"IPv4 TCP ports only", ipv4(6, v4a, v4b, []byte{0, 1, 0, 2}), withPorts(base4(ProtocolTCP), 1, 2)},
		{"IPv4 ICMP cut short", ipv4(1, v4a, v4b, []byte{8}), base4(ProtocolICMP)},
		{"IPv4 no transport", ipv4(17, v4a, v4b, nil), base4(ProtocolUDP)},
		{"IPv6 TCP", ipv6(6, v6a, v6b, nil, tcp(40000, 80)), withPorts(base6(ProtocolTCP), 40000, 80)},
		{"IPv6 UDP", ipv6(17, v6a, v6b, nil, udp(5353, 53)), withPorts(base6(ProtocolUDP), 5353, 53)},
		{"IPv6 SCTP", ipv6(132, v6a, v6b, nil, sctp(9999, 81)), withPorts(base6(ProtocolSCTP), 9999, 81)},
		{"IPv6 ICMPv6 echo", ipv6(58, v6a, v6b, nil, icmp(128, 0)), withICMP(base6(ProtocolICMPv6), 128, 0)},
		{"IPv6 hop-by-hop and destination options", ipv6(0, v6a, v6b, append(hopByHop, destOpts...), udp(7, 8)), withPorts(base6(ProtocolUDP), 7, 8)},
		{"IPv6 first fragment", ipv6(44, v6a, v6b, fragFirst, tcp(3, 4)), withPorts(base6(ProtocolTCP), 3, 4)},
		{"IPv6 later fragment", ipv6(44, v6a, v6b, fragLater, tcp(3, 4)), base6(ProtocolTCP)},
		{"IPv6 authentication header", ipv6(51, v6a, v6b, auth, sctp(5, 6)), withPorts(base6(ProtocolSCTP), 5, 6)},
		{"IPv6 no next header", ipv6(59, v6a, v6b, nil, nil), base6(59)},
		{"IPv6 extension header cut short", ipv6(0, v6a, v6b, []byte{17}, nil), base6(0)},
		{"IPv6 extension header longer than packet", ipv6(0, v6a, v6b, []byte{17, 200}, nil), base6(17)},
		{"IPv6 UDP cut short", ipv6(17, v6a, v6b, nil, []byte{1, 2}), base6(ProtocolUDP)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePacket(tc.in)
			if err != nil {
				t.Fatalf("ParsePacket: %v", err)
			}
			if got != tc.want {
				t.Errorf("ParsePacket = %+v\nwant            %+v", got, tc.want)
			}
		})
	}
}

func TestParsePacketMalformed(t *testing.T) {
	full4 := ipv4(6, v4a, v4b, tcp(1, 2))
	full6 := ipv6(6, v6a, v6b, nil, tcp(1, 2))
	shortIHL := ipv4(6, v4a, v4b, tcp(1, 2))
	shortIHL[0] = 0x44
	longIHL := ipv4(6, v4a, v4b, nil)
	longIHL[0] = 0x4f // 60-byte header in a 20-byte packet
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"version 0", make([]byte, 60)},
		{"version 5", append([]byte{0x50}, make([]byte, 59)...)},
		{"IPv4 one byte", full4[:1]},
		{"IPv4 19 bytes", full4[:19]},
		{"IPv4 header length 16", shortIHL},
		{"IPv4 header length past the end", longIHL},
		{"IPv6 one byte", full6[:1]},
		{"IPv6 39 bytes", full6[:39]},
		// Garbage whose first byte happens to be 0x4X or 0x6X reads as a
		// (nonsensical) packet: that is harmless, not detectable.
		{"garbage", []byte("\xde\xad\xbe\xef\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13")},
		{"IPv4 header length 0", append([]byte{0x40}, make([]byte, 39)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ParsePacket(tc.in)
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("ParsePacket = %+v, %v; want ErrMalformed", p, err)
			}
		})
	}
}

func TestProtocolText(t *testing.T) {
	for p, s := range map[Protocol]string{
		ProtocolTCP: "TCP", ProtocolUDP: "UDP", ProtocolSCTP: "SCTP",
		ProtocolICMP: "ICMP", ProtocolICMPv6: "ICMPv6", 47: "47", 0: "0", 255: "255",
	} {
		if got := p.String(); got != s {
			t.Errorf("Protocol(%d).String() = %q, want %q", p, got, s)
		}
		var back Protocol
		if err := back.UnmarshalText([]byte(s)); err != nil || back != p {
			t.Errorf("UnmarshalText(%q) = %d, %v; want %d", s, back, err, p)
		}
	}
	var p Protocol
	for _, s := range []string{"", "tcp", "256", "-1", "GRE"} {
		if err := p.UnmarshalText([]byte(s)); err == nil {
			t.Errorf("UnmarshalText(%q) = %d, want an error", s, p)
		}
	}
}

func FuzzParsePacket(f *testing.F) {
	f.Add(ipv4(6, v4a, v4b, tcp(1, 2)))
	f.Add(ipv4(17, v4a, v4b, udp(1, 2), 1, 1, 1, 0))
	f.Add(ipv4(1, v4a, v4b, icmp(8, 0)))
	f.Add(ipv6(17, v6a, v6b, nil, udp(1, 2)))
	f.Add(ipv6(0, v6a, v6b, []byte{44, 0, 1, 4, 0, 0, 0, 0, 132, 0, 0, 1, 0, 0, 0, 7}, sctp(1, 2)))
	f.Add(ipv6(58, v6a, v6b, nil, icmp(128, 0)))
	f.Add([]byte{0x45})
	f.Add([]byte{0x60, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		in := append([]byte(nil), b...)
		p, err := ParsePacket(b)
		if string(in) != string(b) {
			t.Fatal("ParsePacket modified its input")
		}
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if !p.Src.IsValid() || !p.Dst.IsValid() {
			t.Fatalf("addresses missing: %+v", p)
		}
		if p.Src.Is4() != (b[0]>>4 == 4) || p.Dst.Is4() != p.Src.Is4() {
			t.Fatalf("address family does not match version %d: %+v", b[0]>>4, p)
		}
		switch p.Protocol {
		case ProtocolTCP, ProtocolUDP, ProtocolSCTP:
		default:
			if p.HasPorts {
				t.Fatalf("ports for protocol %v", p.Protocol)
			}
		}
		if p.HasICMP && p.Protocol != ProtocolICMP && p.Protocol != ProtocolICMPv6 {
			t.Fatalf("ICMP fields for protocol %v", p.Protocol)
		}
	})
}
