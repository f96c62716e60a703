package nftnl

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// This file turns the expressions of a rule read from the kernel back into
// the statements compileStmt produces, so that a rule read back prints as
// nft syntax and its content can be checked against the id in its comment.
// Only the shapes compileStmt writes are recognised.

var errUnknownExpr = errors.New("unknown expression")

// parseExprs decodes a rule's NFTA_RULE_EXPRESSIONS attribute.
func parseExprs(b []byte) ([]expr.Any, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	var out []expr.Any
	for ad.Next() {
		var name string
		var data []byte
		ad.Nested(func(ed *netlink.AttributeDecoder) error {
			for ed.Next() {
				switch ed.Type() {
				case unix.NFTA_EXPR_NAME:
					name = ed.String()
				case unix.NFTA_EXPR_DATA:
					data = ed.Bytes()
				}
			}
			return nil
		})
		var e expr.Any
		switch name {
		case "ct":
			e = &expr.Ct{}
		case "bitwise":
			e = &expr.Bitwise{}
		case "cmp":
			e = &expr.Cmp{}
		case "meta":
			e = &expr.Meta{}
		case "payload":
			e = &expr.Payload{}
		case "lookup":
			e = &expr.Lookup{}
		case "range":
			e = &expr.Range{}
		case "limit":
			e = &expr.Limit{}
		case "log":
			e = &expr.Log{}
		case "immediate":
			e = &expr.Immediate{}
		default:
			return nil, errUnknownExpr
		}
		if err := expr.Unmarshal(unix.NFPROTO_INET, data, e); err != nil {
			return nil, err
		}
		// A verdict is an immediate into the verdict register.
		if imm, ok := e.(*expr.Immediate); ok && imm.Register == regVerdict && len(imm.Data) == 0 {
			v := &expr.Verdict{}
			if err := expr.Unmarshal(unix.NFPROTO_INET, data, v); err != nil {
				return nil, err
			}
			e = v
		}
		out = append(out, e)
	}
	return out, ad.Err()
}

// decompile returns the statements exprs were compiled from, or false.
func decompile(exprs []expr.Any) ([]model.Stmt, bool) {
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

// at returns exprs[i] as a T, or false.
func at[T expr.Any](exprs []expr.Any, i int) (T, bool) {
	var zero T
	if i >= len(exprs) {
		return zero, false
	}
	e, ok := exprs[i].(T)
	return e, ok
}

// regSlot returns the 4-byte slot a register starts at. The kernel dumps a
// register in its shortest name: NFT_REG32_04 comes back as NFT_REG_2.
func regSlot(r uint32) uint32 {
	if r <= unix.NFT_REG_4 {
		return r * 4
	}
	return r - reg32First + 4
}

func isMeta(exprs []expr.Any, i int, key expr.MetaKey, reg uint32) bool {
	m, ok := at[*expr.Meta](exprs, i)
	return ok && m.Key == key && regSlot(m.Register) == regSlot(reg) && !m.SourceRegister
}

func cmpEq(exprs []expr.Any, i int) ([]byte, bool) {
	c, ok := at[*expr.Cmp](exprs, i)
	if !ok || c.Op != expr.CmpOpEq || c.Register != reg1 {
		return nil, false
	}
	return c.Data, true
}

func isPayload(exprs []expr.Any, i int, base expr.PayloadBase, off, n, reg uint32) bool {
	p, ok := at[*expr.Payload](exprs, i)
	return ok && p.OperationType == expr.PayloadLoad && p.Base == base && p.Offset == off && p.Len == n && regSlot(p.DestRegister) == regSlot(reg)
}

func isLookup(exprs []expr.Any, i int) (*expr.Lookup, bool) {
	l, ok := at[*expr.Lookup](exprs, i)
	if !ok || l.SourceRegister != reg1 || l.Invert {
		return nil, false
	}
	return l, true
}

// addrField returns the field a network header load of a family reads.
func addrFieldOf(f model.Family, p *expr.Payload) (model.AddrField, bool) {
	for _, field := range []model.AddrField{model.Saddr, model.Daddr} {
		want, _ := addrPayload(f, field, reg1)
		if p.Base == want.Base && p.Offset == want.Offset && p.Len == want.Len {
			return field, true
		}
	}
	return "", false
}

// matchStmt recognises the statement at the start of exprs and returns it
// with the number of expressions it spans (0: not recognised).
func matchStmt(exprs []expr.Any) (model.Stmt, int) {
	switch e := exprs[0].(type) {
	case *expr.Ct:
		b, ok1 := at[*expr.Bitwise](exprs, 1)
		c, ok2 := at[*expr.Cmp](exprs, 2)
		if e.Key == expr.CtKeySTATE && e.Register == reg1 && !e.SourceRegister && ok1 && ok2 && len(b.Mask) == 4 &&
			bytes.Equal(b.Xor, make([]byte, 4)) && c.Op == expr.CmpOpNeq && bytes.Equal(c.Data, make([]byte, 4)) {
			return model.CtState{Bits: binaryutil.NativeEndian.Uint32(b.Mask)}, 3
		}

	case *expr.Meta:
		switch {
		case isMeta(exprs, 0, expr.MetaKeyNFPROTO, reg1):
			return matchFamily(exprs)
		case isMeta(exprs, 0, expr.MetaKeyL4PROTO, reg1):
			if isPayload(exprs, 1, expr.PayloadBaseTransportHeader, 2, 2, nextReg(reg1, 1)) {
				if l, ok := isLookup(exprs, 2); ok && !l.IsDestRegSet {
					return model.PortsInSet{Set: l.SetName}, 3
				}
				if l, ok := isLookup(exprs, 2); ok && l.IsDestRegSet && l.DestRegister == regVerdict {
					return model.PortsVmap{Vmap: l.SetName}, 3
				}
				return nil, 0
			}
			proto, ok := cmpEq(exprs, 1)
			if !ok || len(proto) != 1 {
				return nil, 0
			}
			if !isPayload(exprs, 2, expr.PayloadBaseTransportHeader, 2, 2, reg1) {
				return model.ProtoIs{Proto: proto[0]}, 2
			}
			if port, ok := cmpEq(exprs, 3); ok && len(port) == 2 {
				p := binary.BigEndian.Uint16(port)
				return model.DportIn{Proto: proto[0], From: p, To: p}, 4
			}
			if r, ok := at[*expr.Range](exprs, 3); ok && r.Op == expr.CmpOpEq && r.Register == reg1 && len(r.FromData) == 2 && len(r.ToData) == 2 {
				return model.DportIn{Proto: proto[0], From: binary.BigEndian.Uint16(r.FromData), To: binary.BigEndian.Uint16(r.ToData)}, 4
			}
		}

	case *expr.Limit:
		if e.Type == expr.LimitTypePkts && e.Unit == expr.LimitTimeSecond && !e.Over && e.Rate <= 1<<32-1 {
			return model.LimitRate{Rate: uint32(e.Rate), Burst: e.Burst}, 1
		}

	case *expr.Log:
		if e.Key == 1<<unix.NFTA_LOG_GROUP|1<<unix.NFTA_LOG_PREFIX {
			return model.NFLog{Prefix: strings.TrimRight(string(e.Data), "\x00"), Group: e.Group}, 1
		}

	case *expr.Verdict:
		return *modelVerdict(e), 1
	}
	return nil, 0
}

// matchFamily recognises statements that start with "meta nfproto".
func matchFamily(exprs []expr.Any) (model.Stmt, int) {
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
	if f == model.IPv6 && isMeta(exprs, 2, expr.MetaKeyL4PROTO, reg1) {
		proto, ok := cmpEq(exprs, 3)
		r, ok2 := at[*expr.Range](exprs, 5)
		if ok && ok2 && bytes.Equal(proto, []byte{model.ProtoICMPv6}) && isPayload(exprs, 4, expr.PayloadBaseTransportHeader, 0, 1, reg1) &&
			r.Op == expr.CmpOpEq && r.Register == reg1 && len(r.FromData) == 1 && len(r.ToData) == 1 {
			return model.ICMPv6Types{From: r.FromData[0], To: r.ToData[0]}, 6
		}
		return nil, 0
	}
	if imm, ok := at[*expr.Immediate](exprs, 2); ok {
		// 0x0012abcd . ip saddr @ag4
		p, ok := at[*expr.Payload](exprs, 3)
		if !ok || regSlot(imm.Register) != regSlot(reg1) || len(imm.Data) != 4 || p.OperationType != expr.PayloadLoad ||
			regSlot(p.DestRegister) != regSlot(nextReg(reg1, 4)) {
			return nil, 0
		}
		field, ok := addrFieldOf(f, p)
		l, ok2 := isLookup(exprs, 4)
		if !ok || !ok2 || l.IsDestRegSet {
			return nil, 0
		}
		return model.TaggedAddrInSet{Family: f, Field: field, Tag: binary.NativeEndian.Uint32(imm.Data), Set: l.SetName}, 5
	}
	p, ok := at[*expr.Payload](exprs, 2)
	if !ok || p.OperationType != expr.PayloadLoad || p.DestRegister != reg1 {
		return nil, 0
	}
	field, ok := addrFieldOf(f, p)
	if !ok {
		return nil, 0
	}
	if l, ok := isLookup(exprs, 3); ok {
		switch {
		case l.IsDestRegSet && l.DestRegister == regVerdict:
			return model.AddrVmap{Family: f, Field: field, Vmap: l.SetName}, 4
		case !l.IsDestRegSet:
			return model.AddrInSet{Family: f, Field: field, Set: l.SetName}, 4
		}
		return nil, 0
	}
	protoReg := nextReg(reg1, p.Len)
	if field == model.Daddr && isMeta(exprs, 3, expr.MetaKeyL4PROTO, protoReg) &&
		isPayload(exprs, 4, expr.PayloadBaseTransportHeader, 2, 2, nextReg(protoReg, 1)) {
		if l, ok := isLookup(exprs, 5); ok && !l.IsDestRegSet {
			return model.EndpointInSet{Family: f, Set: l.SetName}, 6
		}
	}
	return nil, 0
}
