package nftnl

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// This file decodes the expressions of a rule read from the kernel straight
// into the statements the encoder writes (batch.stmt), so that a rule read
// back prints as nft syntax and its content can be checked against the id
// in its comment. Only the shapes the encoder writes are recognised;
// anything else makes the rule foreign.

// rawExpr is one expression of a rule: its name and the attributes of its
// data, by type.
type rawExpr struct {
	name  string
	attrs map[uint16][]byte
}

func (e rawExpr) has(typ uint16) bool {
	_, ok := e.attrs[typ]
	return ok
}

// u32 returns a 32-bit attribute.
func (e rawExpr) u32(typ uint16) (uint32, bool) {
	b, ok := e.attrs[typ]
	if !ok || len(b) != 4 {
		return 0, false
	}
	return binary.BigEndian.Uint32(b), true
}

// u32Is reports whether a 32-bit attribute is present and equal to v.
func (e rawExpr) u32Is(typ uint16, v uint32) bool {
	got, ok := e.u32(typ)
	return ok && got == v
}

// str returns a string attribute without its terminating NUL.
func (e rawExpr) str(typ uint16) string {
	return string(bytes.TrimRight(e.attrs[typ], "\x00"))
}

// value returns the NFTA_DATA_VALUE nested in an attribute.
func (e rawExpr) value(typ uint16) ([]byte, bool) {
	b, ok := e.attrs[typ]
	if !ok {
		return nil, false
	}
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, false
	}
	var v []byte
	found := false
	for ad.Next() {
		if ad.Type() == unix.NFTA_DATA_VALUE {
			v, found = ad.Bytes(), true
		}
	}
	return v, found && ad.Err() == nil
}

// reg returns the register an attribute names, as its 4-byte slot.
func (e rawExpr) reg(typ uint16) (uint32, bool) {
	r, ok := e.u32(typ)
	if !ok {
		return 0, false
	}
	return regSlot(r), true
}

var errUnknownExpr = errors.New("unknown expression")

// parseExprs decodes a rule's NFTA_RULE_EXPRESSIONS attribute.
func parseExprs(b []byte) ([]rawExpr, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	var out []rawExpr
	for ad.Next() {
		e := rawExpr{attrs: map[uint16][]byte{}}
		ad.Nested(func(ed *netlink.AttributeDecoder) error {
			for ed.Next() {
				switch ed.Type() {
				case unix.NFTA_EXPR_NAME:
					e.name = ed.String()
				case unix.NFTA_EXPR_DATA:
					ed.Nested(func(dd *netlink.AttributeDecoder) error {
						for dd.Next() {
							e.attrs[dd.Type()] = dd.Bytes()
						}
						return nil
					})
				}
			}
			return nil
		})
		if e.name == "" {
			return nil, errUnknownExpr
		}
		out = append(out, e)
	}
	return out, ad.Err()
}

// decompile returns the statements exprs were encoded from, or false.
func decompile(exprs []rawExpr) ([]model.Stmt, bool) {
	var out []model.Stmt
	for len(exprs) > 0 {
		s, n := matchStmt(exprs)
		if n == 0 {
			return nil, false
		}
		out = append(out, s)
		exprs = exprs[n:]
	}
	return out, true
}

// at returns exprs[i] when it is an expression of that name.
func at(exprs []rawExpr, i int, name string) (rawExpr, bool) {
	if i >= len(exprs) || exprs[i].name != name {
		return rawExpr{}, false
	}
	return exprs[i], true
}

// isMeta reports a load of a meta key into reg.
func isMeta(exprs []rawExpr, i int, key, reg uint32) bool {
	m, ok := at(exprs, i, "meta")
	if !ok || m.has(unix.NFTA_META_SREG) || !m.u32Is(unix.NFTA_META_KEY, key) {
		return false
	}
	r, ok := m.reg(unix.NFTA_META_DREG)
	return ok && r == regSlot(reg)
}

// cmpOp returns the data an expression compares register 1 with, by op.
func cmpOp(exprs []rawExpr, i int, op uint32) ([]byte, bool) {
	c, ok := at(exprs, i, "cmp")
	if !ok || !c.u32Is(unix.NFTA_CMP_OP, op) || !c.u32Is(unix.NFTA_CMP_SREG, reg1) {
		return nil, false
	}
	return c.value(unix.NFTA_CMP_DATA)
}

func cmpEq(exprs []rawExpr, i int) ([]byte, bool) { return cmpOp(exprs, i, unix.NFT_CMP_EQ) }

// payloadLoad returns the base, offset and length of a header load into
// reg.
func payloadLoad(exprs []rawExpr, i int, reg uint32) (base, off, n uint32, ok bool) {
	p, ok := at(exprs, i, "payload")
	if !ok || p.has(unix.NFTA_PAYLOAD_SREG) || p.has(unix.NFTA_PAYLOAD_CSUM_TYPE) {
		return 0, 0, 0, false
	}
	if r, ok := p.reg(unix.NFTA_PAYLOAD_DREG); !ok || r != regSlot(reg) {
		return 0, 0, 0, false
	}
	base, ok1 := p.u32(unix.NFTA_PAYLOAD_BASE)
	off, ok2 := p.u32(unix.NFTA_PAYLOAD_OFFSET)
	n, ok3 := p.u32(unix.NFTA_PAYLOAD_LEN)
	return base, off, n, ok1 && ok2 && ok3
}

func isPayload(exprs []rawExpr, i int, base, off, n, reg uint32) bool {
	b, o, l, ok := payloadLoad(exprs, i, reg)
	return ok && b == base && o == off && l == n
}

// lookup is a set lookup from register 1: a match, or with vmap set a
// verdict map lookup.
type lookup struct {
	set    string
	vmap   bool
	invert bool // a match when the key is not in the set
}

// isLookup recognises a lookup; only plain address matches may be
// inverted (isInvertedLookup).
func isLookup(exprs []rawExpr, i int) (lookup, bool) {
	l, ok := isInvertedLookup(exprs, i)
	return l, ok && !l.invert
}

func isInvertedLookup(exprs []rawExpr, i int) (lookup, bool) {
	l, ok := at(exprs, i, "lookup")
	if !ok || !l.u32Is(unix.NFTA_LOOKUP_SREG, reg1) {
		return lookup{}, false
	}
	out := lookup{set: l.str(unix.NFTA_LOOKUP_SET)}
	if flags, ok := l.u32(unix.NFTA_LOOKUP_FLAGS); ok {
		switch flags {
		case 0:
		case unix.NFT_LOOKUP_F_INV:
			out.invert = true
		default:
			return lookup{}, false
		}
	}
	if l.has(unix.NFTA_LOOKUP_DREG) {
		if out.invert || !l.u32Is(unix.NFTA_LOOKUP_DREG, regVerdict) {
			return lookup{}, false
		}
		out.vmap = true
	}
	return out, out.set != ""
}

// addrFieldOf returns the address a network header load of a family reads.
func addrFieldOf(f model.Family, base, off, n uint32) (model.AddrField, bool) {
	if base != unix.NFT_PAYLOAD_NETWORK_HEADER {
		return "", false
	}
	for _, field := range []model.AddrField{model.Saddr, model.Daddr} {
		if o, l := addrOffset(f, field); o == off && l == n {
			return field, true
		}
	}
	return "", false
}

// verdictOf decodes an immediate into the verdict register.
func verdictOf(e rawExpr) (model.Verdict, bool) {
	if !e.u32Is(unix.NFTA_IMMEDIATE_DREG, regVerdict) {
		return model.Verdict{}, false
	}
	data, ok := e.attrs[unix.NFTA_IMMEDIATE_DATA]
	if !ok {
		return model.Verdict{}, false
	}
	v, ok := decodeVerdict(data)
	return v, ok
}

// decodeVerdict reads the NFTA_DATA_VERDICT in a nested data attribute.
func decodeVerdict(data []byte) (model.Verdict, bool) {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return model.Verdict{}, false
	}
	var v model.Verdict
	found := false
	for ad.Next() {
		if ad.Type() != unix.NFTA_DATA_VERDICT {
			continue
		}
		var code int32
		var chain string
		hasCode := false
		ad.Nested(func(vd *netlink.AttributeDecoder) error {
			vd.ByteOrder = binary.BigEndian
			for vd.Next() {
				switch vd.Type() {
				case unix.NFTA_VERDICT_CODE:
					code, hasCode = int32(vd.Uint32()), true
				case unix.NFTA_VERDICT_CHAIN:
					chain = vd.String()
				}
			}
			return nil
		})
		if hasCode {
			v, found = modelVerdict(code, chain), true
		}
	}
	return v, found && ad.Err() == nil
}

// matchStmt recognises the statement at the start of exprs and returns it
// with the number of expressions it spans (0: not recognised).
func matchStmt(exprs []rawExpr) (model.Stmt, int) {
	e := exprs[0]
	switch e.name {
	case "ct":
		// ct state ... or ct mark and ... != 0: a key, a mask, a test for
		// any bit set.
		b, ok1 := at(exprs, 1, "bitwise")
		state, mark := e.u32Is(unix.NFTA_CT_KEY, unix.NFT_CT_STATE), e.u32Is(unix.NFTA_CT_KEY, unix.NFT_CT_MARK)
		if !ok1 || !(state || mark) || e.has(unix.NFTA_CT_SREG) || !e.u32Is(unix.NFTA_CT_DREG, reg1) ||
			!b.u32Is(unix.NFTA_BITWISE_SREG, reg1) || !b.u32Is(unix.NFTA_BITWISE_DREG, reg1) || !b.u32Is(unix.NFTA_BITWISE_LEN, 4) {
			return nil, 0
		}
		mask, ok2 := b.value(unix.NFTA_BITWISE_MASK)
		xor, ok3 := b.value(unix.NFTA_BITWISE_XOR)
		zero, ok4 := cmpOp(exprs, 2, unix.NFT_CMP_NEQ)
		if ok2 && ok3 && ok4 && len(mask) == 4 && bytes.Equal(xor, make([]byte, 4)) && bytes.Equal(zero, make([]byte, 4)) {
			if mark {
				return model.CtMark{Bits: binary.NativeEndian.Uint32(mask)}, 3
			}
			return model.CtState{Bits: binary.NativeEndian.Uint32(mask)}, 3
		}

	case "meta":
		switch {
		case isMeta(exprs, 0, unix.NFT_META_NFPROTO, reg1):
			return matchFamily(exprs)
		case isMeta(exprs, 0, unix.NFT_META_IIFNAME, reg1):
			if l, ok := isLookup(exprs, 1); ok && !l.vmap {
				return model.IifnameInSet{Set: l.set}, 2
			}
			return nil, 0
		case isMeta(exprs, 0, unix.NFT_META_L4PROTO, reg1):
			if isPayload(exprs, 1, unix.NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, nextReg(reg1, 1)) {
				l, ok := isLookup(exprs, 2)
				switch {
				case !ok:
					return nil, 0
				case l.vmap:
					return model.PortsVmap{Vmap: l.set}, 3
				}
				return model.PortsInSet{Set: l.set}, 3
			}
			proto, ok := cmpEq(exprs, 1)
			if !ok || len(proto) != 1 {
				return nil, 0
			}
			if !isPayload(exprs, 2, unix.NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, reg1) {
				return model.ProtoIs{Proto: proto[0]}, 2
			}
			if port, ok := cmpEq(exprs, 3); ok && len(port) == 2 {
				p := binary.BigEndian.Uint16(port)
				return model.DportIn{Proto: proto[0], From: p, To: p}, 4
			}
			if from, to, ok := rangeEq(exprs, 3, 2); ok {
				return model.DportIn{Proto: proto[0], From: binary.BigEndian.Uint16(from), To: binary.BigEndian.Uint16(to)}, 4
			}
		}

	case "limit":
		rate, ok1 := e.attrs[unix.NFTA_LIMIT_RATE]
		burst, ok2 := e.u32(unix.NFTA_LIMIT_BURST)
		flags, _ := e.u32(unix.NFTA_LIMIT_FLAGS)
		if ok1 && ok2 && len(rate) == 8 && flags == 0 && e.u32Is(unix.NFTA_LIMIT_TYPE, unix.NFT_LIMIT_PKTS) &&
			bytes.Equal(e.attrs[unix.NFTA_LIMIT_UNIT], binary.BigEndian.AppendUint64(nil, nftLimitTimeSecond)) {
			if r := binary.BigEndian.Uint64(rate); r <= 1<<32-1 {
				return model.LimitRate{Rate: uint32(r), Burst: burst}, 1
			}
		}

	case "counter":
		nbytes, ok1 := e.attrs[unix.NFTA_COUNTER_BYTES]
		packets, ok2 := e.attrs[unix.NFTA_COUNTER_PACKETS]
		if ok1 && ok2 && len(nbytes) == 8 && len(packets) == 8 {
			return model.Counter{Packets: binary.BigEndian.Uint64(packets), Bytes: binary.BigEndian.Uint64(nbytes)}, 1
		}

	case "log":
		group, ok := e.attrs[unix.NFTA_LOG_GROUP]
		if ok && len(group) == 2 && e.has(unix.NFTA_LOG_PREFIX) && len(e.attrs) == 2 {
			return model.NFLog{Prefix: e.str(unix.NFTA_LOG_PREFIX), Group: binary.BigEndian.Uint16(group)}, 1
		}

	case "immediate":
		if v, ok := verdictOf(e); ok {
			return v, 1
		}
	}
	return nil, 0
}

// rangeEq returns the bounds of a range match of register 1 whose bounds
// have n bytes.
func rangeEq(exprs []rawExpr, i, n int) (from, to []byte, ok bool) {
	r, ok := at(exprs, i, "range")
	if !ok || !r.u32Is(unix.NFTA_RANGE_OP, unix.NFT_RANGE_EQ) || !r.u32Is(unix.NFTA_RANGE_SREG, reg1) {
		return nil, nil, false
	}
	from, ok1 := r.value(unix.NFTA_RANGE_FROM_DATA)
	to, ok2 := r.value(unix.NFTA_RANGE_TO_DATA)
	return from, to, ok1 && ok2 && len(from) == n && len(to) == n
}

// matchFamily recognises statements that start with "meta nfproto".
func matchFamily(exprs []rawExpr) (model.Stmt, int) {
	fb, ok := cmpEq(exprs, 1)
	if !ok || len(fb) != 1 {
		return nil, 0
	}
	var f model.Family
	switch fb[0] {
	case unix.NFPROTO_IPV4:
		f = model.IPv4
	case unix.NFPROTO_IPV6:
		f = model.IPv6
	default:
		return nil, 0
	}
	if f == model.IPv6 && isMeta(exprs, 2, unix.NFT_META_L4PROTO, reg1) {
		proto, ok := cmpEq(exprs, 3)
		from, to, ok2 := rangeEq(exprs, 5, 1)
		if ok && ok2 && bytes.Equal(proto, []byte{model.ProtoICMPv6}) && isPayload(exprs, 4, unix.NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1, reg1) {
			s := model.ICMPv6Types{From: from[0], To: to[0]}
			if isPayload(exprs, 6, unix.NFT_PAYLOAD_NETWORK_HEADER, 7, 1, reg1) {
				hl, ok := cmpEq(exprs, 7)
				if !ok || len(hl) != 1 || hl[0] == 0 {
					return nil, 0
				}
				s.HopLimit = hl[0]
				return s, 8
			}
			return s, 6
		}
		return nil, 0
	}
	if imm, ok := at(exprs, 2, "immediate"); ok {
		// 0x0012abcd . ip saddr @ag4
		tag, ok1 := imm.value(unix.NFTA_IMMEDIATE_DATA)
		r, ok2 := imm.reg(unix.NFTA_IMMEDIATE_DREG)
		base, off, n, ok3 := payloadLoad(exprs, 3, nextReg(reg1, 4))
		if !ok1 || !ok2 || !ok3 || r != regSlot(reg1) || len(tag) != 4 {
			return nil, 0
		}
		field, ok := addrFieldOf(f, base, off, n)
		if !ok {
			return nil, 0
		}
		if l, ok := isLookup(exprs, 4); ok && !l.vmap {
			return model.TaggedAddrInSet{Family: f, Field: field, Tag: binary.NativeEndian.Uint32(tag), Set: l.set}, 5
		}
		// 0x0012abcd . ip daddr . meta l4proto . th dport @set
		protoReg := nextReg(nextReg(reg1, 4), n)
		if isMeta(exprs, 4, unix.NFT_META_L4PROTO, protoReg) &&
			isPayload(exprs, 5, unix.NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, nextReg(protoReg, 1)) {
			if l, ok := isLookup(exprs, 6); ok && !l.vmap {
				return model.TaggedEndpointInSet{Family: f, Field: field, Tag: binary.NativeEndian.Uint32(tag), Set: l.set}, 7
			}
		}
		return nil, 0
	}
	base, off, n, ok := payloadLoad(exprs, 2, reg1)
	if !ok {
		return nil, 0
	}
	field, ok := addrFieldOf(f, base, off, n)
	if !ok {
		return nil, 0
	}
	if v, ok := cmpEq(exprs, 3); ok && uint32(len(v)) == n {
		a, _ := netip.AddrFromSlice(v)
		return model.AddrIs{Field: field, Addr: a}, 4
	}
	if l, ok := isInvertedLookup(exprs, 3); ok {
		if l.vmap {
			return model.AddrVmap{Family: f, Field: field, Vmap: l.set}, 4
		}
		return model.AddrInSet{Family: f, Field: field, Set: l.set, Invert: l.invert}, 4
	}
	protoReg := nextReg(reg1, n)
	if field == model.Daddr && isMeta(exprs, 3, unix.NFT_META_L4PROTO, protoReg) &&
		isPayload(exprs, 4, unix.NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, nextReg(protoReg, 1)) {
		if l, ok := isLookup(exprs, 5); ok && !l.vmap {
			return model.EndpointInSet{Family: f, Set: l.set}, 6
		}
	}
	return nil, 0
}
