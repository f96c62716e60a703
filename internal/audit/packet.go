package audit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// ErrMalformed is wrapped by ParsePacket's errors: the payload is not a
// readable IPv4 or IPv6 header.
var ErrMalformed = errors.New("malformed packet")

// maxExtensionHeaders bounds the IPv6 extension headers ParsePacket walks.
const maxExtensionHeaders = 8

// Packet holds the header fields of a logged packet that the audit log uses.
type Packet struct {
	Src, Dst netip.Addr
	// Protocol is the transport protocol: for IPv6, the first header after
	// the extension headers.
	Protocol Protocol
	// HasPorts is true when SrcPort and DstPort were read: TCP, UDP and SCTP
	// (their common header starts with the two ports), in the first fragment,
	// with at least four bytes of transport header.
	HasPorts         bool
	SrcPort, DstPort uint16
	// HasICMP is true when ICMPType and ICMPCode were read (ICMP, ICMPv6).
	HasICMP            bool
	ICMPType, ICMPCode uint8
}

// ParsePacket reads an IPv4 or IPv6 packet as NFLOG delivers it (from the
// network header on, possibly cut short by the copy range). It returns an
// error wrapping ErrMalformed when the network header is missing, cut short
// or invalid. A transport header that is cut short, absent (a later
// fragment) or unknown is not an error: the ports or ICMP fields are left
// unset. ParsePacket never panics and does not keep b.
func ParsePacket(b []byte) (Packet, error) {
	if len(b) == 0 {
		return Packet{}, fmt.Errorf("%w: empty payload", ErrMalformed)
	}
	switch b[0] >> 4 {
	case 4:
		return parseIPv4(b)
	case 6:
		return parseIPv6(b)
	default:
		return Packet{}, fmt.Errorf("%w: IP version %d", ErrMalformed, b[0]>>4)
	}
}

func parseIPv4(b []byte) (Packet, error) {
	if len(b) < 20 {
		return Packet{}, fmt.Errorf("%w: IPv4 header cut short at %d bytes", ErrMalformed, len(b))
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < 20 {
		return Packet{}, fmt.Errorf("%w: IPv4 header length %d", ErrMalformed, ihl)
	}
	if len(b) < ihl {
		return Packet{}, fmt.Errorf("%w: IPv4 header of %d bytes cut short at %d", ErrMalformed, ihl, len(b))
	}
	p := Packet{
		Src:      netip.AddrFrom4([4]byte(b[12:16])),
		Dst:      netip.AddrFrom4([4]byte(b[16:20])),
		Protocol: Protocol(b[9]),
	}
	if binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
		return p, nil // a later fragment: no transport header
	}
	// The total length trims link-layer padding; 0 (TSO, BIG TCP) or a value
	// beyond the copy range leaves the payload as it is.
	if total := int(binary.BigEndian.Uint16(b[2:4])); total >= ihl && total < len(b) {
		b = b[:total]
	}
	parseTransport(&p, b[ihl:])
	return p, nil
}

func parseIPv6(b []byte) (Packet, error) {
	if len(b) < 40 {
		return Packet{}, fmt.Errorf("%w: IPv6 header cut short at %d bytes", ErrMalformed, len(b))
	}
	p := Packet{
		Src: netip.AddrFrom16([16]byte(b[8:24])),
		Dst: netip.AddrFrom16([16]byte(b[24:40])),
	}
	if payload := int(binary.BigEndian.Uint16(b[4:6])); payload != 0 && 40+payload < len(b) {
		b = b[:40+payload]
	}
	next, off := b[6], 40
	for range maxExtensionHeaders {
		var size int
		switch next {
		case 0, 43, 60, 135, 139, 140: // hop-by-hop, routing, destination options, mobility, HIP, shim6
			if len(b) < off+2 {
				p.Protocol = Protocol(next)
				return p, nil
			}
			size = (int(b[off+1]) + 1) * 8
		case 44: // fragment
			if len(b) < off+8 {
				p.Protocol = Protocol(next)
				return p, nil
			}
			if binary.BigEndian.Uint16(b[off+2:off+4])>>3 != 0 {
				p.Protocol = Protocol(b[off])
				return p, nil // a later fragment: no transport header
			}
			size = 8
		case 51: // authentication header
			if len(b) < off+2 {
				p.Protocol = Protocol(next)
				return p, nil
			}
			size = (int(b[off+1]) + 2) * 4
		default:
			p.Protocol = Protocol(next)
			if off <= len(b) {
				parseTransport(&p, b[off:])
			}
			return p, nil
		}
		next = b[off]
		off += size
	}
	// Too many extension headers: name the one we stopped at.
	p.Protocol = Protocol(next)
	return p, nil
}

// parseTransport reads ports or ICMP type and code from the start of the
// transport header, when present in full.
func parseTransport(p *Packet, b []byte) {
	switch p.Protocol {
	case ProtocolTCP, ProtocolUDP, ProtocolSCTP:
		if len(b) >= 4 {
			p.HasPorts = true
			p.SrcPort = binary.BigEndian.Uint16(b[0:2])
			p.DstPort = binary.BigEndian.Uint16(b[2:4])
		}
	case ProtocolICMP, ProtocolICMPv6:
		if len(b) >= 2 {
			p.HasICMP = true
			p.ICMPType, p.ICMPCode = b[0], b[1]
		}
	}
}
