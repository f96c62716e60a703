package model

import (
	"net/netip"
	"strconv"
)

// Stmt is one match or statement of a rule. Its text is nft syntax; the
// encoding is package nftnl's (its batch encoder and decoder).
type Stmt interface {
	text() string
	// appendText appends the text to b: rule ids hash the text of many
	// rules, which this builds without a string per statement.
	appendText(b []byte) []byte
}

// Family is an address family of the inet table.
type Family uint8

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "ip6"
	}
	return "ip"
}

// appendFamilyField appends "ip saddr" and the like.
func appendFamilyField(b []byte, f Family, field AddrField) []byte {
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

// AddrField is which address of the packet a match reads.
type AddrField string

const (
	Saddr AddrField = "saddr"
	Daddr AddrField = "daddr"
)

// Layer-4 protocol numbers.
const (
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoICMPv6 uint8 = 58
	ProtoSCTP   uint8 = 132
)

// ProtoName names a layer-4 protocol as nft does (tcp, udp, sctp,
// ipv6-icmp), or by its number.
func ProtoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoSCTP:
		return "sctp"
	case ProtoICMPv6:
		return "ipv6-icmp"
	}
	return strconv.Itoa(int(p))
}

func appendProto(b []byte, p uint8) []byte {
	switch p {
	case ProtoTCP, ProtoUDP, ProtoSCTP, ProtoICMPv6:
		return append(b, ProtoName(p)...)
	}
	return appendUint(b, uint64(p))
}

// Conntrack state bits (the kernel's NF_CT_STATE_*_BIT).
const (
	CtInvalid     uint32 = 1
	CtEstablished uint32 = 2
	CtRelated     uint32 = 4
	CtNew         uint32 = 8
)

// CtState matches packets whose conntrack state is one of bits:
// "ct state established,related".
type CtState struct{ Bits uint32 }

func (s CtState) text() string { return string(s.appendText(nil)) }

func (s CtState) appendText(b []byte) []byte {
	b = append(b, "ct state "...)
	first := true
	for _, n := range []struct {
		bit  uint32
		name string
	}{{CtInvalid, "invalid"}, {CtEstablished, "established"}, {CtRelated, "related"}, {CtNew, "new"}} {
		if s.Bits&n.bit != 0 {
			if !first {
				b = append(b, ',')
			}
			first = false
			b = append(b, n.name...)
		}
	}
	return b
}

// CtMark matches packets whose connection's conntrack mark has any of
// bits set: "ct mark and 0x00800000 != 0x00000000".
type CtMark struct{ Bits uint32 }

func (s CtMark) text() string { return string(s.appendText(nil)) }

func (s CtMark) appendText(b []byte) []byte {
	b = append(b, "ct mark and "...)
	b = appendHex8(b, s.Bits)
	return append(b, " != 0x00000000"...)
}

// ICMPv6Types matches ICMPv6 packets of types from..to: "icmpv6 type
// 135-136". With HopLimit set, only packets with that hop limit: "icmpv6
// type 135-136 ip6 hoplimit 255" (a packet with hop limit 255 was sent on
// the link it arrives on: no router forwarded it).
type ICMPv6Types struct {
	From, To uint8
	HopLimit uint8
}

func (s ICMPv6Types) text() string { return string(s.appendText(nil)) }

func (s ICMPv6Types) appendText(b []byte) []byte {
	b = append(b, "icmpv6 type "...)
	b = appendUint(b, uint64(s.From))
	b = append(b, '-')
	b = appendUint(b, uint64(s.To))
	if s.HopLimit != 0 {
		b = append(b, " ip6 hoplimit "...)
		b = appendUint(b, uint64(s.HopLimit))
	}
	return b
}

// AddrIs matches one address: "ip saddr 198.18.1.3". The family is the
// address's.
type AddrIs struct {
	Field AddrField
	Addr  netip.Addr
}

// Family is the family of the address matched.
func (s AddrIs) Family() Family {
	if s.Addr.Is4() {
		return IPv4
	}
	return IPv6
}

func (s AddrIs) text() string { return string(s.appendText(nil)) }

func (s AddrIs) appendText(b []byte) []byte {
	b = appendFamilyField(b, s.Family(), s.Field)
	b = append(b, ' ')
	return s.Addr.AppendTo(b)
}

// AddrInSet matches an address against a named set: "ip saddr @set", or
// with Invert an address not in it: "ip saddr != @set".
type AddrInSet struct {
	Family Family
	Field  AddrField
	Set    string
	Invert bool
}

func (s AddrInSet) text() string { return string(s.appendText(nil)) }

func (s AddrInSet) appendText(b []byte) []byte {
	b = appendFamilyField(b, s.Family, s.Field)
	if s.Invert {
		b = append(b, " !="...)
	}
	b = append(b, " @"...)
	return append(b, s.Set...)
}

// TaggedAddrInSet matches an address, with an address group's tag before
// it, against a set shared by many groups: "0x0012abcd . ip saddr @ag4".
type TaggedAddrInSet struct {
	Family Family
	Field  AddrField
	Tag    uint32
	Set    string
}

func (s TaggedAddrInSet) text() string { return string(s.appendText(nil)) }

func (s TaggedAddrInSet) appendText(b []byte) []byte {
	b = appendTagged(b, s.Tag, s.Family, s.Field)
	b = append(b, " @"...)
	return append(b, s.Set...)
}

// appendTagged appends a tag and the address after it: "0x0012abcd . ip
// saddr".
func appendTagged(b []byte, tag uint32, f Family, field AddrField) []byte {
	b = appendHex8(b, tag)
	b = append(b, " . "...)
	return appendFamilyField(b, f, field)
}

// AddrVmap dispatches on an address through a verdict map: "ip daddr vmap @in4".
type AddrVmap struct {
	Family Family
	Field  AddrField
	Vmap   string
}

func (s AddrVmap) text() string { return string(s.appendText(nil)) }

func (s AddrVmap) appendText(b []byte) []byte {
	b = appendFamilyField(b, s.Family, s.Field)
	b = append(b, " vmap @"...)
	return append(b, s.Vmap...)
}

// EndpointInSet matches destination address, protocol and port against a
// concatenated set: "ip daddr . meta l4proto . th dport @set".
type EndpointInSet struct {
	Family Family
	Set    string
}

func (s EndpointInSet) text() string { return string(s.appendText(nil)) }

func (s EndpointInSet) appendText(b []byte) []byte {
	b = append(b, s.Family.String()...)
	b = append(b, " daddr . meta l4proto . th dport @"...)
	return append(b, s.Set...)
}

// IifnameInSet matches the packet's input interface against a set of
// interface names: "iifname @set".
type IifnameInSet struct{ Set string }

func (s IifnameInSet) text() string { return "iifname @" + s.Set }

func (s IifnameInSet) appendText(b []byte) []byte {
	b = append(b, "iifname @"...)
	return append(b, s.Set...)
}

// PortsInSet matches protocol and destination port against an interval
// set of port ranges: "meta l4proto . th dport @set".
type PortsInSet struct{ Set string }

func (s PortsInSet) text() string { return "meta l4proto . th dport @" + s.Set }

func (s PortsInSet) appendText(b []byte) []byte {
	b = append(b, "meta l4proto . th dport @"...)
	return append(b, s.Set...)
}

// PortsVmap dispatches on protocol and destination port through a verdict
// map of port ranges: "meta l4proto . th dport vmap @map".
type PortsVmap struct{ Vmap string }

func (s PortsVmap) text() string { return "meta l4proto . th dport vmap @" + s.Vmap }

func (s PortsVmap) appendText(b []byte) []byte {
	b = append(b, "meta l4proto . th dport vmap @"...)
	return append(b, s.Vmap...)
}

// ProtoIs matches a layer-4 protocol: "meta l4proto tcp".
type ProtoIs struct{ Proto uint8 }

func (s ProtoIs) text() string { return "meta l4proto " + ProtoName(s.Proto) }

func (s ProtoIs) appendText(b []byte) []byte {
	b = append(b, "meta l4proto "...)
	return appendProto(b, s.Proto)
}

// DportIn matches a protocol and a destination port or port range:
// "tcp dport 80", "sctp dport 1000-2000".
type DportIn struct {
	Proto    uint8
	From, To uint16
}

func (s DportIn) text() string { return string(s.appendText(nil)) }

func (s DportIn) appendText(b []byte) []byte {
	b = appendProto(b, s.Proto)
	b = append(b, " dport "...)
	b = appendUint(b, uint64(s.From))
	if s.From != s.To {
		b = append(b, '-')
		b = appendUint(b, uint64(s.To))
	}
	return b
}

// LimitRate lets through rate packets a second with a burst:
// "limit rate 10/second burst 20 packets".
type LimitRate struct{ Rate, Burst uint32 }

func (s LimitRate) text() string { return string(s.appendText(nil)) }

func (s LimitRate) appendText(b []byte) []byte {
	b = append(b, "limit rate "...)
	b = appendUint(b, uint64(s.Rate))
	b = append(b, "/second burst "...)
	b = appendUint(b, uint64(s.Burst))
	return append(b, " packets"...)
}

// Counter counts the packets and bytes that reach it: "counter". The
// product's tables have none; a copy made by Counted, used only for
// measuring, has one first in every rule. Read back from the kernel it
// carries the counts, which its text leaves out.
type Counter struct{ Packets, Bytes uint64 }

func (s Counter) text() string { return "counter" }

func (s Counter) appendText(b []byte) []byte { return append(b, "counter"...) }

// NFLog logs to an NFLOG group with a prefix: `log prefix "p" group 100`.
type NFLog struct {
	Prefix string
	Group  uint16
}

func (s NFLog) text() string { return string(s.appendText(nil)) }

func (s NFLog) appendText(b []byte) []byte {
	b = append(b, "log prefix "...)
	b = strconv.AppendQuote(b, s.Prefix) // as fmt's %q
	b = append(b, " group "...)
	return appendUint(b, uint64(s.Group))
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

// TaggedEndpointInSet matches an address, with a tag before it and the
// protocol and destination port after it, against an interval set shared
// by many tags: "0x0012abcd . ip daddr . meta l4proto . th dport @set".
type TaggedEndpointInSet struct {
	Family Family
	Field  AddrField
	Tag    uint32
	Set    string
}

func (s TaggedEndpointInSet) text() string { return string(s.appendText(nil)) }

func (s TaggedEndpointInSet) appendText(b []byte) []byte {
	b = appendTagged(b, s.Tag, s.Family, s.Field)
	b = append(b, " . meta l4proto . th dport @"...)
	return append(b, s.Set...)
}
