// Package nfttest translates the model into github.com/google/nftables
// objects, for tests only: the encoder's equivalence test builds the same
// changes through that library and compares the messages, and benchmarks
// compare the encoder with the library's Conn.Flush. The product path never
// uses it.
package nfttest

import (
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// Table is table inet nftguard.
func Table() *nftables.Table {
	return &nftables.Table{Name: model.TableName, Family: nftables.TableFamilyINet}
}

// Registers. A 16-byte register (NFT_REG_1) overlays four 4-byte ones
// starting at NFT_REG32_00; concatenations put each field in the 4-byte
// register after the previous field.
const (
	regVerdict = unix.NFT_REG_VERDICT
	reg1       = unix.NFT_REG_1
	reg32First = unix.NFT_REG32_00
)

// nextReg returns the 4-byte register following a field of n bytes loaded
// into register r (r is NFT_REG_1 or a 4-byte register).
func nextReg(r uint32, n uint32) uint32 {
	if r == reg1 {
		r = reg32First
	}
	return r + (n+3)/4
}

func nfproto(f model.Family) byte {
	if f == model.IPv6 {
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_IPV4
}

// addrOffset returns the offset and length of an address in the network
// header.
func addrOffset(f model.Family, field model.AddrField) (off, n uint32) {
	switch {
	case f == model.IPv4 && field == model.Daddr:
		return 16, 4
	case f == model.IPv6 && field == model.Saddr:
		return 8, 16
	case f == model.IPv6 && field == model.Daddr:
		return 24, 16
	}
	return 12, 4 // ip saddr
}

// addrPayload loads an address of the network header into reg.
func addrPayload(f model.Family, field model.AddrField, reg uint32) (*expr.Payload, uint32) {
	off, n := addrOffset(f, field)
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}, n
}

// familyCheck is the dependency nft adds before a network header field in
// an inet table: "meta nfproto ipv4".
func familyCheck(f model.Family) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{nfproto(f)}},
	}
}

// Rule returns a rule's expressions.
func Rule(r *model.Rule) ([]expr.Any, error) {
	var out []expr.Any
	for _, s := range r.Stmts {
		e, err := Stmt(s)
		if err != nil {
			return nil, fmt.Errorf("rule %q: %w", r.String(), err)
		}
		out = append(out, e...)
	}
	return out, nil
}

func Stmt(s model.Stmt) ([]expr.Any, error) {
	switch s := s.(type) {
	case model.CtState:
		// ct state established,related (or: ct state invalid)
		return ctBitsSet(expr.CtKeySTATE, s.Bits), nil

	case model.CtMark:
		// ct mark and 0x00800000 != 0x00000000
		return ctBitsSet(expr.CtKeyMARK, s.Bits), nil

	case model.ICMPv6Types:
		// meta nfproto ipv6 meta l4proto ipv6-icmp icmpv6 type 135-136 [ip6 hoplimit 255]
		out := append(familyCheck(model.IPv6),
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{model.ProtoICMPv6}},
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Range{Op: expr.CmpOpEq, Register: reg1, FromData: []byte{s.From}, ToData: []byte{s.To}},
		)
		if s.HopLimit != 0 {
			out = append(out,
				&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 7, Len: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{s.HopLimit}})
		}
		return out, nil

	case model.AddrIs:
		// ip saddr 198.18.1.3  (meta nfproto ipv4 ip saddr 198.18.1.3)
		p, _ := addrPayload(s.Family(), s.Field, reg1)
		return append(familyCheck(s.Family()), p,
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: s.Addr.AsSlice()},
		), nil

	case model.AddrInSet:
		// ip saddr [!=] @set  (meta nfproto ipv4 ip saddr [!=] @set)
		p, _ := addrPayload(s.Family, s.Field, reg1)
		return append(familyCheck(s.Family), p,
			&expr.Lookup{SourceRegister: reg1, SetName: s.Set, Invert: s.Invert},
		), nil

	case model.TaggedAddrInSet:
		// 0x0012abcd . ip saddr @ag4  (meta nfproto ipv4, then the tag
		// and the address side by side in the registers)
		p, _ := addrPayload(s.Family, s.Field, nextReg(reg1, 4))
		return append(familyCheck(s.Family),
			&expr.Immediate{Register: reg1, Data: binaryutil.NativeEndian.PutUint32(s.Tag)},
			p,
			&expr.Lookup{SourceRegister: reg1, SetName: s.Set},
		), nil

	case model.AddrVmap:
		// ip daddr vmap @in4  (meta nfproto ipv4 ip daddr vmap @in4)
		p, _ := addrPayload(s.Family, s.Field, reg1)
		return append(familyCheck(s.Family), p,
			&expr.Lookup{SourceRegister: reg1, SetName: s.Vmap, DestRegister: regVerdict, IsDestRegSet: true},
		), nil

	case model.EndpointInSet:
		// ip daddr . meta l4proto . th dport @set
		p, n := addrPayload(s.Family, model.Daddr, reg1)
		protoReg := nextReg(reg1, n)
		portReg := nextReg(protoReg, 1)
		return append(familyCheck(s.Family), p,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
			&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: reg1, SetName: s.Set},
		), nil

	case model.TaggedEndpointInSet:
		// 0x0012abcd . ip daddr . meta l4proto . th dport @set
		addrReg := nextReg(reg1, 4)
		p, n := addrPayload(s.Family, s.Field, addrReg)
		protoReg := nextReg(addrReg, n)
		return append(familyCheck(s.Family),
			&expr.Immediate{Register: reg1, Data: binaryutil.NativeEndian.PutUint32(s.Tag)},
			p,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
			&expr.Payload{DestRegister: nextReg(protoReg, 1), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: reg1, SetName: s.Set},
		), nil

	case model.PortsVmap:
		// meta l4proto . th dport vmap @map
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Payload{DestRegister: nextReg(reg1, 1), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: reg1, SetName: s.Vmap, DestRegister: regVerdict, IsDestRegSet: true},
		}, nil

	case model.Counter:
		return []expr.Any{&expr.Counter{}}, nil

	case model.IifnameInSet:
		// iifname @set
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
			&expr.Lookup{SourceRegister: reg1, SetName: s.Set},
		}, nil

	case model.PortsInSet:
		// meta l4proto . th dport @set
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Payload{DestRegister: nextReg(reg1, 1), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: reg1, SetName: s.Set},
		}, nil

	case model.ProtoIs:
		// meta l4proto tcp
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{s.Proto}},
		}, nil

	case model.DportIn:
		// tcp dport 80  (meta l4proto tcp th dport 80), or tcp dport 80-90
		out := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{s.Proto}},
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		}
		if s.From == s.To {
			return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(s.From)}), nil
		}
		return append(out, &expr.Range{Op: expr.CmpOpEq, Register: reg1,
			FromData: binaryutil.BigEndian.PutUint16(s.From), ToData: binaryutil.BigEndian.PutUint16(s.To)}), nil

	case model.LimitRate:
		// limit rate 10/second burst 20 packets
		return []expr.Any{
			&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(s.Rate), Unit: expr.LimitTimeSecond, Burst: s.Burst},
		}, nil

	case model.NFLog:
		// log prefix "..." group 100 (the GROUP and PREFIX bits select NFLOG
		// rather than the kernel log)
		return []expr.Any{
			&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: s.Group, Data: []byte(s.Prefix)},
		}, nil

	case model.Verdict:
		// accept | drop | return | jump <chain> | goto <chain>
		v, err := nftVerdict(s)
		if err != nil {
			return nil, err
		}
		return []expr.Any{v}, nil
	}
	return nil, fmt.Errorf("no expressions for %T", s)
}

// verdictKind returns the library's code of a verdict.
func verdictKind(v model.Verdict) (expr.VerdictKind, error) {
	switch v.Kind {
	case model.VerdictAccept:
		return expr.VerdictAccept, nil
	case model.VerdictDrop:
		return expr.VerdictDrop, nil
	case model.VerdictReturn:
		return expr.VerdictReturn, nil
	case model.VerdictJump:
		return expr.VerdictJump, nil
	case model.VerdictGoto:
		return expr.VerdictGoto, nil
	}
	return 0, fmt.Errorf("unknown verdict %q", v.Kind)
}

func nftVerdict(v model.Verdict) (*expr.Verdict, error) {
	kind, err := verdictKind(v)
	if err != nil {
		return nil, err
	}
	return &expr.Verdict{Kind: kind, Chain: v.Chain}, nil
}

// UserData is the comment the kernel copy of a rule carries: its id.
func UserData(r *model.Rule) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, r.ID())
}

// Set types as google/nftables declares them.
var (
	typeEndpoint4 = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	typeEndpoint6 = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
	typePorts     = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
	typeTagged4   = nftables.MustConcatSetType(nftables.TypeMark, nftables.TypeIPAddr)
	typeTagged6   = nftables.MustConcatSetType(nftables.TypeMark, nftables.TypeIP6Addr)
	typeTaggedEP4 = nftables.MustConcatSetType(nftables.TypeMark, nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	typeTaggedEP6 = nftables.MustConcatSetType(nftables.TypeMark, nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
)

// Set returns the definition of a set (without elements).
func Set(s *model.Set) *nftables.Set {
	ns := &nftables.Set{Table: Table(), Name: s.Name, KeyByteOrder: binaryutil.BigEndian}
	switch s.Kind {
	case model.SetIPv4:
		ns.KeyType = nftables.TypeIPAddr
	case model.SetIPv6:
		ns.KeyType = nftables.TypeIP6Addr
	case model.SetIPv4Interval:
		ns.KeyType, ns.Interval = nftables.TypeIPAddr, true
	case model.SetIPv6Interval:
		ns.KeyType, ns.Interval = nftables.TypeIP6Addr, true
	case model.SetEndpointIPv4:
		ns.KeyType, ns.Concatenation = typeEndpoint4, true
	case model.SetEndpointIPv6:
		ns.KeyType, ns.Concatenation = typeEndpoint6, true
	case model.SetPorts:
		ns.KeyType, ns.Concatenation, ns.Interval = typePorts, true, true
	case model.MapPortsVerdict:
		ns.KeyType, ns.Concatenation, ns.Interval = typePorts, true, true
		ns.IsMap, ns.DataType = true, nftables.TypeVerdict
	case model.SetTaggedIPv4:
		ns.KeyType, ns.Concatenation = typeTagged4, true
	case model.SetTaggedIPv6:
		ns.KeyType, ns.Concatenation = typeTagged6, true
	case model.MapIPv4Verdict:
		ns.KeyType, ns.IsMap, ns.DataType = nftables.TypeIPAddr, true, nftables.TypeVerdict
	case model.MapIPv6Verdict:
		ns.KeyType, ns.IsMap, ns.DataType = nftables.TypeIP6Addr, true, nftables.TypeVerdict
	case model.SetIfnames:
		ns.KeyType = nftables.TypeIFName
	case model.MapIPv4VerdictInterval:
		ns.KeyType, ns.IsMap, ns.DataType, ns.Interval = nftables.TypeIPAddr, true, nftables.TypeVerdict, true
	case model.MapIPv6VerdictInterval:
		ns.KeyType, ns.IsMap, ns.DataType, ns.Interval = nftables.TypeIP6Addr, true, nftables.TypeVerdict, true
	case model.SetTaggedEndpointIPv4:
		ns.KeyType, ns.Concatenation, ns.Interval = typeTaggedEP4, true, true
	case model.SetTaggedEndpointIPv6:
		ns.KeyType, ns.Concatenation, ns.Interval = typeTaggedEP6, true, true
	}
	return ns
}

// eachElement calls fn with each element as the kernel stores it.
// Interval sets of one field are stored as a start element and, unless the
// range runs to the last address, an end element one past the range
// flagged IntervalEnd; concatenated interval sets take the inclusive end as
// KeyEnd.
func eachElement(kind model.SetKind, elems []model.Element, fn func(nftables.SetElement)) error {
	for i := range elems {
		e := &elems[i]
		var v *expr.Verdict
		if kind.IsMap() {
			if e.Verdict == nil {
				return fmt.Errorf("map element %x has no verdict", e.Key)
			}
			var err error
			if v, err = nftVerdict(*e.Verdict); err != nil {
				return err
			}
		}
		switch {
		case kind.IsRBTree():
			fn(nftables.SetElement{Key: e.Key, VerdictData: v})
			if next, ok := increment(e.KeyEnd); ok {
				fn(nftables.SetElement{Key: next, IntervalEnd: true})
			}
		case kind.IsConcatInterval():
			fn(nftables.SetElement{Key: e.Key, KeyEnd: e.KeyEnd, VerdictData: v})
		default:
			fn(nftables.SetElement{Key: e.Key, VerdictData: v})
		}
	}
	return nil
}

// increment returns b+1 as a big-endian number, and false when b is all ones.
func increment(b []byte) ([]byte, bool) {
	out := slices.Clone(b)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			return out, true
		}
	}
	return nil, false
}

// Chain returns the definition of a chain.
func Chain(c *model.Chain) *nftables.Chain {
	nc := &nftables.Chain{Name: c.Name, Table: Table()}
	if c.IsBase() {
		policy := nftables.ChainPolicyAccept
		nc.Type = nftables.ChainTypeFilter
		nc.Policy = &policy
		nc.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(c.Priority))
		switch c.Hook {
		case model.HookForward:
			nc.Hooknum = nftables.ChainHookForward
		case model.HookInput:
			nc.Hooknum = nftables.ChainHookInput
		case model.HookOutput:
			nc.Hooknum = nftables.ChainHookOutput
		}
	}
	return nc
}

// Elements returns elements as the library encodes them.
func Elements(kind model.SetKind, elems []model.Element) ([]nftables.SetElement, error) {
	var out []nftables.SetElement
	err := eachElement(kind, elems, func(e nftables.SetElement) { out = append(out, e) })
	return out, err
}

// ctBitsSet tests that any of bits is set in a conntrack key (state, mark).
func ctBitsSet(key expr.CtKey, bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: key},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
	}
}
