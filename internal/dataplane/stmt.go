package dataplane

import (
	"strconv"
)

// stmt is one match or statement of a rule. Its text is nft syntax; the
// expressions it compiles to are in nft.go (compileStmt).
type stmt interface {
	text() string
	// appendText appends the text to b: rule ids hash the text of many
	// rules, which this builds without a string per statement.
	appendText(b []byte) []byte
}

// family is an address family of the inet table.
type family uint8

const (
	ipv4 family = 4
	ipv6 family = 6
)

func (f family) String() string {
	if f == ipv6 {
		return "ip6"
	}
	return "ip"
}

// appendFamilyField appends "ip saddr" and the like.
func appendFamilyField(b []byte, f family, field addrField) []byte {
	b = append(b, f.String()...)
	b = append(b, ' ')
	return append(b, field...)
}

// appendHex8 appends v as 0x and eight hex digits (fmt's %#08x).
func appendHex8(b []byte, v uint32) []byte {
	const digits = "0123456789abcdef"
	b = append(b, '0', 'x')
	for shift := 28; shift >= 0; shift -= 4 {
		b = append(b, digits[v>>shift&0xf])
	}
	return b
}

func appendUint(b []byte, v uint64) []byte { return strconv.AppendUint(b, v, 10) }

// addrField is which address of the packet a match reads.
type addrField string

const (
	saddr addrField = "saddr"
	daddr addrField = "daddr"
)

// Layer-4 protocol numbers.
const (
	protoTCP    uint8 = 6
	protoUDP    uint8 = 17
	protoICMPv6 uint8 = 58
	protoSCTP   uint8 = 132
)

func protoName(p uint8) string {
	switch p {
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	case protoSCTP:
		return "sctp"
	case protoICMPv6:
		return "ipv6-icmp"
	}
	return strconv.Itoa(int(p))
}

func appendProto(b []byte, p uint8) []byte {
	switch p {
	case protoTCP, protoUDP, protoSCTP, protoICMPv6:
		return append(b, protoName(p)...)
	}
	return appendUint(b, uint64(p))
}

// Conntrack state bits (the kernel's NF_CT_STATE_*_BIT).
const (
	ctInvalid     uint32 = 1
	ctEstablished uint32 = 2
	ctRelated     uint32 = 4
)

// ctState matches packets whose conntrack state is one of bits:
// "ct state established,related".
type ctState struct{ bits uint32 }

func (s ctState) text() string { return string(s.appendText(nil)) }

func (s ctState) appendText(b []byte) []byte {
	b = append(b, "ct state "...)
	first := true
	for _, n := range []struct {
		bit  uint32
		name string
	}{{ctInvalid, "invalid"}, {ctEstablished, "established"}, {ctRelated, "related"}} {
		if s.bits&n.bit != 0 {
			if !first {
				b = append(b, ',')
			}
			first = false
			b = append(b, n.name...)
		}
	}
	return b
}

// icmpv6Types matches ICMPv6 packets of types from..to: "icmpv6 type 133-137".
type icmpv6Types struct{ from, to uint8 }

func (s icmpv6Types) text() string { return string(s.appendText(nil)) }

func (s icmpv6Types) appendText(b []byte) []byte {
	b = append(b, "icmpv6 type "...)
	b = appendUint(b, uint64(s.from))
	b = append(b, '-')
	return appendUint(b, uint64(s.to))
}

// addrInSet matches an address against a named set: "ip saddr @set".
type addrInSet struct {
	fam   family
	field addrField
	set   string
}

func (s addrInSet) text() string { return string(s.appendText(nil)) }

func (s addrInSet) appendText(b []byte) []byte {
	b = appendFamilyField(b, s.fam, s.field)
	b = append(b, " @"...)
	return append(b, s.set...)
}

// taggedAddrInSet matches an address, with an address group's tag before
// it, against a set shared by many groups: "0x0012abcd . ip saddr @ag4".
type taggedAddrInSet struct {
	fam   family
	field addrField
	tag   uint32
	set   string
}

func (s taggedAddrInSet) text() string { return string(s.appendText(nil)) }

func (s taggedAddrInSet) appendText(b []byte) []byte {
	b = appendHex8(b, s.tag)
	b = append(b, " . "...)
	b = appendFamilyField(b, s.fam, s.field)
	b = append(b, " @"...)
	return append(b, s.set...)
}

// addrVmap dispatches on an address through a verdict map: "ip daddr vmap @in4".
type addrVmap struct {
	fam   family
	field addrField
	vmap  string
}

func (s addrVmap) text() string { return string(s.appendText(nil)) }

func (s addrVmap) appendText(b []byte) []byte {
	b = appendFamilyField(b, s.fam, s.field)
	b = append(b, " vmap @"...)
	return append(b, s.vmap...)
}

// endpointInSet matches destination address, protocol and port against a
// concatenated set: "ip daddr . meta l4proto . th dport @set".
type endpointInSet struct {
	fam family
	set string
}

func (s endpointInSet) text() string { return string(s.appendText(nil)) }

func (s endpointInSet) appendText(b []byte) []byte {
	b = append(b, s.fam.String()...)
	b = append(b, " daddr . meta l4proto . th dport @"...)
	return append(b, s.set...)
}

// portsInSet matches protocol and destination port against an interval
// set of port ranges: "meta l4proto . th dport @set".
type portsInSet struct{ set string }

func (s portsInSet) text() string { return "meta l4proto . th dport @" + s.set }

func (s portsInSet) appendText(b []byte) []byte {
	b = append(b, "meta l4proto . th dport @"...)
	return append(b, s.set...)
}

// portsVmap dispatches on protocol and destination port through a verdict
// map of port ranges: "meta l4proto . th dport vmap @map".
type portsVmap struct{ vmap string }

func (s portsVmap) text() string { return "meta l4proto . th dport vmap @" + s.vmap }

func (s portsVmap) appendText(b []byte) []byte {
	b = append(b, "meta l4proto . th dport vmap @"...)
	return append(b, s.vmap...)
}

// protoIs matches a layer-4 protocol: "meta l4proto tcp".
type protoIs struct{ proto uint8 }

func (s protoIs) text() string { return "meta l4proto " + protoName(s.proto) }

func (s protoIs) appendText(b []byte) []byte {
	b = append(b, "meta l4proto "...)
	return appendProto(b, s.proto)
}

// dportIn matches a protocol and a destination port or port range:
// "tcp dport 80", "sctp dport 1000-2000".
type dportIn struct {
	proto    uint8
	from, to uint16
}

func (s dportIn) text() string { return string(s.appendText(nil)) }

func (s dportIn) appendText(b []byte) []byte {
	b = appendProto(b, s.proto)
	b = append(b, " dport "...)
	b = appendUint(b, uint64(s.from))
	if s.from != s.to {
		b = append(b, '-')
		b = appendUint(b, uint64(s.to))
	}
	return b
}

// limitRate lets through rate packets a second with a burst:
// "limit rate 10/second burst 20 packets".
type limitRate struct{ rate, burst uint32 }

func (s limitRate) text() string { return string(s.appendText(nil)) }

func (s limitRate) appendText(b []byte) []byte {
	b = append(b, "limit rate "...)
	b = appendUint(b, uint64(s.rate))
	b = append(b, "/second burst "...)
	b = appendUint(b, uint64(s.burst))
	return append(b, " packets"...)
}

// nflog logs to an NFLOG group with a prefix: `log prefix "p" group 100`.
type nflog struct {
	prefix string
	group  uint16
}

func (s nflog) text() string { return string(s.appendText(nil)) }

func (s nflog) appendText(b []byte) []byte {
	b = append(b, "log prefix "...)
	b = strconv.AppendQuote(b, s.prefix) // as fmt's %q
	b = append(b, " group "...)
	return appendUint(b, uint64(s.group))
}

// A Verdict ends a rule: "accept", "drop", "jump rule-x".
func (v Verdict) text() string { return v.String() }

func (v Verdict) appendText(b []byte) []byte {
	b = append(b, v.Kind...)
	if v.Chain != "" {
		b = append(b, ' ')
		b = append(b, v.Chain...)
	}
	return b
}
