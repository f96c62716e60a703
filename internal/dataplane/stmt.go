package dataplane

import (
	"fmt"
	"strconv"
	"strings"
)

// stmt is one match or statement of a rule. Its text is nft syntax; the
// expressions it compiles to are in nft.go (compileStmt).
type stmt interface {
	text() string
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

// Conntrack state bits (the kernel's NF_CT_STATE_*_BIT).
const (
	ctInvalid     uint32 = 1
	ctEstablished uint32 = 2
	ctRelated     uint32 = 4
)

// ctState matches packets whose conntrack state is one of bits:
// "ct state established,related".
type ctState struct{ bits uint32 }

func (s ctState) text() string {
	var names []string
	for _, n := range []struct {
		bit  uint32
		name string
	}{{ctInvalid, "invalid"}, {ctEstablished, "established"}, {ctRelated, "related"}} {
		if s.bits&n.bit != 0 {
			names = append(names, n.name)
		}
	}
	return "ct state " + strings.Join(names, ",")
}

// icmpv6Types matches ICMPv6 packets of types from..to: "icmpv6 type 133-137".
type icmpv6Types struct{ from, to uint8 }

func (s icmpv6Types) text() string {
	return fmt.Sprintf("icmpv6 type %d-%d", s.from, s.to)
}

// addrInSet matches an address against a named set: "ip saddr @set".
type addrInSet struct {
	fam   family
	field addrField
	set   string
}

func (s addrInSet) text() string {
	return fmt.Sprintf("%s %s @%s", s.fam, s.field, s.set)
}

// taggedAddrInSet matches an address, with an address group's tag before
// it, against a set shared by many groups: "0x0012abcd . ip saddr @ag4".
type taggedAddrInSet struct {
	fam   family
	field addrField
	tag   uint32
	set   string
}

func (s taggedAddrInSet) text() string {
	return fmt.Sprintf("0x%08x . %s %s @%s", s.tag, s.fam, s.field, s.set)
}

// addrVmap dispatches on an address through a verdict map: "ip daddr vmap @in4".
type addrVmap struct {
	fam   family
	field addrField
	vmap  string
}

func (s addrVmap) text() string {
	return fmt.Sprintf("%s %s vmap @%s", s.fam, s.field, s.vmap)
}

// endpointInSet matches destination address, protocol and port against a
// concatenated set: "ip daddr . meta l4proto . th dport @set".
type endpointInSet struct {
	fam family
	set string
}

func (s endpointInSet) text() string {
	return fmt.Sprintf("%s daddr . meta l4proto . th dport @%s", s.fam, s.set)
}

// portsInSet matches protocol and destination port against an interval
// set of port ranges: "meta l4proto . th dport @set".
type portsInSet struct{ set string }

func (s portsInSet) text() string { return "meta l4proto . th dport @" + s.set }

// portsVmap dispatches on protocol and destination port through a verdict
// map of port ranges: "meta l4proto . th dport vmap @map".
type portsVmap struct{ vmap string }

func (s portsVmap) text() string { return "meta l4proto . th dport vmap @" + s.vmap }

// protoIs matches a layer-4 protocol: "meta l4proto tcp".
type protoIs struct{ proto uint8 }

func (s protoIs) text() string { return "meta l4proto " + protoName(s.proto) }

// dportIn matches a protocol and a destination port or port range:
// "tcp dport 80", "sctp dport 1000-2000".
type dportIn struct {
	proto    uint8
	from, to uint16
}

func (s dportIn) text() string {
	if s.from == s.to {
		return fmt.Sprintf("%s dport %d", protoName(s.proto), s.from)
	}
	return fmt.Sprintf("%s dport %d-%d", protoName(s.proto), s.from, s.to)
}

// limitRate lets through rate packets a second with a burst:
// "limit rate 10/second burst 20 packets".
type limitRate struct{ rate, burst uint32 }

func (s limitRate) text() string {
	return fmt.Sprintf("limit rate %d/second burst %d packets", s.rate, s.burst)
}

// nflog logs to an NFLOG group with a prefix: `log prefix "p" group 100`.
type nflog struct {
	prefix string
	group  uint16
}

func (s nflog) text() string {
	return fmt.Sprintf("log prefix %q group %d", s.prefix, s.group)
}

// verdict ends the rule: "accept", "drop", "jump rule-x".
type verdict Verdict

func (s verdict) text() string { return Verdict(s).String() }
