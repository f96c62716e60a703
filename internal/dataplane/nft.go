package dataplane

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// This file translates the model to and from github.com/google/nftables
// types: rule statements to expressions, sets to set definitions, and
// elements to the kernel's element encoding.

// nftTable is table inet nftguard.
func nftTable() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
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

func nfproto(f family) byte {
	if f == ipv6 {
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_IPV4
}

// addrOffset returns the offset and length of an address in the network
// header.
func addrOffset(f family, field addrField) (off, n uint32) {
	switch {
	case f == ipv4 && field == daddr:
		return 16, 4
	case f == ipv6 && field == saddr:
		return 8, 16
	case f == ipv6 && field == daddr:
		return 24, 16
	}
	return 12, 4 // ip saddr
}

// addrPayload loads an address of the network header into reg.
func addrPayload(f family, field addrField, reg uint32) (*expr.Payload, uint32) {
	off, n := addrOffset(f, field)
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}, n
}

// familyCheck is the dependency nft adds before a network header field in
// an inet table: "meta nfproto ipv4".
func familyCheck(f family) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{nfproto(f)}},
	}
}

// compileRule returns a rule's expressions.
func compileRule(r *Rule) ([]expr.Any, error) {
	var out []expr.Any
	for _, s := range r.stmts {
		e, err := compileStmt(s)
		if err != nil {
			return nil, fmt.Errorf("rule %q: %w", r.String(), err)
		}
		out = append(out, e...)
	}
	return out, nil
}

func compileStmt(s stmt) ([]expr.Any, error) {
	switch s := s.(type) {
	case ctState:
		// ct state established,related (or: ct state invalid)
		return []expr.Any{
			&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(s.bits), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
		}, nil

	case icmpv6Types:
		// meta nfproto ipv6 meta l4proto ipv6-icmp icmpv6 type 133-137
		return append(familyCheck(ipv6),
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{protoICMPv6}},
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Range{Op: expr.CmpOpEq, Register: reg1, FromData: []byte{s.from}, ToData: []byte{s.to}},
		), nil

	case addrInSet:
		// ip saddr @set  (meta nfproto ipv4 ip saddr @set)
		p, _ := addrPayload(s.fam, s.field, reg1)
		return append(familyCheck(s.fam), p,
			&expr.Lookup{SourceRegister: reg1, SetName: s.set},
		), nil

	case taggedAddrInSet:
		// 0x0012abcd . ip saddr @ag4  (meta nfproto ipv4, then the tag
		// and the address side by side in the registers)
		p, _ := addrPayload(s.fam, s.field, nextReg(reg1, 4))
		return append(familyCheck(s.fam),
			&expr.Immediate{Register: reg1, Data: binaryutil.NativeEndian.PutUint32(s.tag)},
			p,
			&expr.Lookup{SourceRegister: reg1, SetName: s.set},
		), nil

	case addrVmap:
		// ip daddr vmap @in4  (meta nfproto ipv4 ip daddr vmap @in4)
		p, _ := addrPayload(s.fam, s.field, reg1)
		return append(familyCheck(s.fam), p,
			&expr.Lookup{SourceRegister: reg1, SetName: s.vmap, DestRegister: regVerdict, IsDestRegSet: true},
		), nil

	case endpointInSet:
		// ip daddr . meta l4proto . th dport @set
		p, n := addrPayload(s.fam, daddr, reg1)
		protoReg := nextReg(reg1, n)
		portReg := nextReg(protoReg, 1)
		return append(familyCheck(s.fam), p,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
			&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: reg1, SetName: s.set},
		), nil

	case portsVmap:
		// meta l4proto . th dport vmap @map
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Payload{DestRegister: nextReg(reg1, 1), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: reg1, SetName: s.vmap, DestRegister: regVerdict, IsDestRegSet: true},
		}, nil

	case portsInSet:
		// meta l4proto . th dport @set
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Payload{DestRegister: nextReg(reg1, 1), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: reg1, SetName: s.set},
		}, nil

	case protoIs:
		// meta l4proto tcp
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{s.proto}},
		}, nil

	case dportIn:
		// tcp dport 80  (meta l4proto tcp th dport 80), or tcp dport 80-90
		out := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{s.proto}},
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		}
		if s.from == s.to {
			return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(s.from)}), nil
		}
		return append(out, &expr.Range{Op: expr.CmpOpEq, Register: reg1,
			FromData: binaryutil.BigEndian.PutUint16(s.from), ToData: binaryutil.BigEndian.PutUint16(s.to)}), nil

	case limitRate:
		// limit rate 10/second burst 20 packets
		return []expr.Any{
			&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(s.rate), Unit: expr.LimitTimeSecond, Burst: s.burst},
		}, nil

	case nflog:
		// log prefix "..." group 100 (the GROUP and PREFIX bits select NFLOG
		// rather than the kernel log)
		return []expr.Any{
			&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: s.group, Data: []byte(s.prefix)},
		}, nil

	case Verdict:
		// accept | drop | return | jump <chain> | goto <chain>
		v, err := nftVerdict(s)
		if err != nil {
			return nil, err
		}
		return []expr.Any{v}, nil
	}
	return nil, fmt.Errorf("no expressions for %T", s)
}

func nftVerdict(v Verdict) (*expr.Verdict, error) {
	kind, err := verdictKind(v)
	if err != nil {
		return nil, err
	}
	return &expr.Verdict{Kind: kind, Chain: v.Chain}, nil
}

// verdictKind returns the kernel's code of a verdict.
func verdictKind(v Verdict) (expr.VerdictKind, error) {
	switch v.Kind {
	case VerdictAccept:
		return expr.VerdictAccept, nil
	case VerdictDrop:
		return expr.VerdictDrop, nil
	case VerdictReturn:
		return expr.VerdictReturn, nil
	case VerdictJump:
		return expr.VerdictJump, nil
	case VerdictGoto:
		return expr.VerdictGoto, nil
	}
	return 0, fmt.Errorf("unknown verdict %q", v.Kind)
}

func modelVerdict(v *expr.Verdict) *Verdict {
	switch v.Kind {
	case expr.VerdictAccept:
		return &Verdict{Kind: VerdictAccept}
	case expr.VerdictDrop:
		return &Verdict{Kind: VerdictDrop}
	case expr.VerdictReturn:
		return &Verdict{Kind: VerdictReturn}
	case expr.VerdictJump:
		return &Verdict{Kind: VerdictJump, Chain: v.Chain}
	case expr.VerdictGoto:
		return &Verdict{Kind: VerdictGoto, Chain: v.Chain}
	}
	return &Verdict{Kind: VerdictKind(fmt.Sprintf("verdict(%d)", v.Kind))}
}

// ruleUserData is the comment the kernel copy of a rule carries: its id.
func ruleUserData(r *Rule) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, r.ID())
}

func ruleIDFromUserData(b []byte) string {
	s, _ := userdata.GetString(b, userdata.TypeComment)
	return strings.TrimRight(s, "\x00")
}

// Set types as google/nftables declares them.
var (
	typeEndpoint4 = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	typeEndpoint6 = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
	typePorts     = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
	typeTagged4   = nftables.MustConcatSetType(nftables.TypeMark, nftables.TypeIPAddr)
	typeTagged6   = nftables.MustConcatSetType(nftables.TypeMark, nftables.TypeIP6Addr)
)

// nftSet returns the definition of a set (without elements).
func nftSet(s *Set) *nftables.Set {
	ns := &nftables.Set{Table: nftTable(), Name: s.Name, KeyByteOrder: binaryutil.BigEndian}
	switch s.Kind {
	case SetIPv4:
		ns.KeyType = nftables.TypeIPAddr
	case SetIPv6:
		ns.KeyType = nftables.TypeIP6Addr
	case SetIPv4Interval:
		ns.KeyType, ns.Interval = nftables.TypeIPAddr, true
	case SetIPv6Interval:
		ns.KeyType, ns.Interval = nftables.TypeIP6Addr, true
	case SetEndpointIPv4:
		ns.KeyType, ns.Concatenation = typeEndpoint4, true
	case SetEndpointIPv6:
		ns.KeyType, ns.Concatenation = typeEndpoint6, true
	case SetPorts:
		ns.KeyType, ns.Concatenation, ns.Interval = typePorts, true, true
	case MapPortsVerdict:
		ns.KeyType, ns.Concatenation, ns.Interval = typePorts, true, true
		ns.IsMap, ns.DataType = true, nftables.TypeVerdict
	case SetTaggedIPv4:
		ns.KeyType, ns.Concatenation = typeTagged4, true
	case SetTaggedIPv6:
		ns.KeyType, ns.Concatenation = typeTagged6, true
	case MapIPv4Verdict:
		ns.KeyType, ns.IsMap, ns.DataType = nftables.TypeIPAddr, true, nftables.TypeVerdict
	case MapIPv6Verdict:
		ns.KeyType, ns.IsMap, ns.DataType = nftables.TypeIP6Addr, true, nftables.TypeVerdict
	}
	return ns
}

// eachKernelElement calls fn with each element as the kernel stores it.
// Interval sets of one field are stored as a start element and, unless the
// range runs to the last address, an end element one past the range
// flagged IntervalEnd; concatenated interval sets take the inclusive end as
// KeyEnd.
func eachKernelElement(kind SetKind, elems []Element, fn func(nftables.SetElement)) {
	for i := range elems {
		e := &elems[i]
		switch {
		case kind.isRBTree():
			fn(nftables.SetElement{Key: e.Key})
			if next, ok := increment(e.KeyEnd); ok {
				fn(nftables.SetElement{Key: next, IntervalEnd: true})
			}
		case kind == SetPorts:
			fn(nftables.SetElement{Key: e.Key, KeyEnd: e.KeyEnd})
		case kind == MapPortsVerdict:
			v := &expr.Verdict{Kind: expr.VerdictDrop}
			if e.Verdict != nil {
				if nv, err := nftVerdict(*e.Verdict); err == nil {
					v = nv
				}
			}
			fn(nftables.SetElement{Key: e.Key, KeyEnd: e.KeyEnd, VerdictData: v})
		case e.Verdict != nil:
			v, err := nftVerdict(*e.Verdict)
			if err != nil {
				v = &expr.Verdict{Kind: expr.VerdictDrop}
			}
			fn(nftables.SetElement{Key: e.Key, VerdictData: v})
		default:
			fn(nftables.SetElement{Key: e.Key})
		}
	}
}

// modelElements decodes elements read from the kernel.
func modelElements(kind SetKind, elems []nftables.SetElement) []Element {
	if !kind.isRBTree() {
		out := make([]Element, 0, len(elems))
		for _, e := range elems {
			m := Element{Key: e.Key}
			if kind == SetPorts || kind == MapPortsVerdict {
				m.KeyEnd = e.KeyEnd
				if m.KeyEnd == nil {
					m.KeyEnd = e.Key
				}
			}
			if e.VerdictData != nil {
				m.Verdict = modelVerdict(e.VerdictData)
			}
			out = append(out, m)
		}
		slices.SortFunc(out, func(a, b Element) int { return compareElements(&a, &b) })
		return out
	}
	// Pair starts with the end element that follows them. At one key an
	// end sorts before a start (the end of the range below).
	sorted := slices.Clone(elems)
	slices.SortFunc(sorted, func(a, b nftables.SetElement) int {
		if c := bytes.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		switch {
		case a.IntervalEnd == b.IntervalEnd:
			return 0
		case a.IntervalEnd:
			return -1
		}
		return 1
	})
	var out []Element
	var start []byte
	for _, e := range sorted {
		switch {
		case !e.IntervalEnd:
			if start != nil { // a start without an end: keep it as one address
				out = append(out, Element{Key: start, KeyEnd: start})
			}
			start = e.Key
		case start != nil:
			out = append(out, Element{Key: start, KeyEnd: decrement(e.Key)})
			start = nil
		}
	}
	if start != nil { // runs to the last address
		out = append(out, Element{Key: start, KeyEnd: bytes.Repeat([]byte{0xff}, len(start))})
	}
	return out
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

func decrement(b []byte) []byte {
	out := slices.Clone(b)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]--
		if out[i] != 0xff {
			break
		}
	}
	return out
}

// elementBytes estimates the netlink size of an element (attribute headers
// and padding included), to keep messages and batches bounded.
func align4(n int) int { return (n + 3) &^ 3 }

// nftChain returns the definition of a chain.
func nftChain(c *Chain) *nftables.Chain {
	nc := &nftables.Chain{Name: c.Name, Table: nftTable()}
	if c.IsBase() {
		policy := nftables.ChainPolicyAccept
		nc.Type = nftables.ChainTypeFilter
		nc.Policy = &policy
		nc.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(c.Priority))
		switch c.Hook {
		case HookForward:
			nc.Hooknum = nftables.ChainHookForward
		case HookInput:
			nc.Hooknum = nftables.ChainHookInput
		case HookOutput:
			nc.Hooknum = nftables.ChainHookOutput
		}
	}
	return nc
}

// modelChain describes a chain read from the kernel (without rules).
func modelChain(nc *nftables.Chain) *Chain {
	c := &Chain{Name: nc.Name}
	if nc.Hooknum == nil {
		c.sig = "regular"
		return c
	}
	policy := "accept"
	if nc.Policy != nil && *nc.Policy == nftables.ChainPolicyDrop {
		policy = "drop"
	}
	var prio int32
	if nc.Priority != nil {
		prio = int32(*nc.Priority)
	}
	hook := fmt.Sprintf("hook%d", *nc.Hooknum)
	switch *nc.Hooknum {
	case *nftables.ChainHookForward:
		hook = string(HookForward)
	case *nftables.ChainHookInput:
		hook = string(HookInput)
	case *nftables.ChainHookOutput:
		hook = string(HookOutput)
	}
	c.Hook, c.Priority = Hook(hook), prio
	c.sig = fmt.Sprintf("type %s hook %s priority %d policy %s", nc.Type, hook, prio, policy)
	return c
}
