package nftnl

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// batch encodes one nftables transaction (batch begin, the changes, batch
// end) straight into a single buffer, as nft does: no message or attribute
// is built apart and copied, and only the last change asks for an
// acknowledgement (the kernel reports every failing message whatever its
// flags, and acknowledges once the whole batch is committed or aborted).
//
// Building the same messages through google/nftables took a quarter of a
// cold start, most of it allocating and copying attributes (see
// docs/benchmarks.md); encode_test.go checks this encoder against that
// library message by message.
type batch struct {
	buf []byte
	// seq is the sequence number of the next message.
	seq uint32
	// msg is the offset of the open message, last the offset of the last
	// finished change; -1 when there is none.
	msg, last int
	// changes counts the messages between begin and end.
	changes int
	// setID numbers the sets the batch creates.
	setID uint32
	err   error
}

// Netlink framing sizes.
const (
	nlmsgHeaderLen = unix.SizeofNlMsghdr // 16
	nfgenHeaderLen = 4
	attrHeaderLen  = unix.SizeofNlAttr // 4
)

// newBatch starts a batch whose messages are numbered from seq.
func newBatch(seq uint32, sizeHint int) *batch {
	b := &batch{buf: make([]byte, 0, max(sizeHint, 4096)), seq: seq, msg: -1, last: -1}
	b.open(unix.NFNL_MSG_BATCH_BEGIN, unix.NLM_F_REQUEST, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)
	b.seal()
	return b
}

// finish ends the batch and returns its bytes and the sequence number of
// the message whose acknowledgement ends the exchange; ok is false when
// the batch holds no change.
func (b *batch) finish() (buf []byte, ackSeq uint32, ok bool, err error) {
	if b.err != nil {
		return nil, 0, false, b.err
	}
	if b.changes == 0 {
		return nil, 0, false, nil
	}
	flags := binary.NativeEndian.Uint16(b.buf[b.last+6:])
	binary.NativeEndian.PutUint16(b.buf[b.last+6:], flags|unix.NLM_F_ACK)
	ackSeq = binary.NativeEndian.Uint32(b.buf[b.last+8:])
	b.open(unix.NFNL_MSG_BATCH_END, unix.NLM_F_REQUEST, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)
	b.seal()
	return b.buf, ackSeq, true, nil
}

// grow makes room for n more bytes.
func (b *batch) grow(n int) []byte {
	l := len(b.buf)
	if cap(b.buf)-l < n {
		nb := make([]byte, l, 2*cap(b.buf)+n)
		copy(nb, b.buf)
		b.buf = nb
	}
	b.buf = b.buf[:l+n]
	return b.buf[l:]
}

// open starts a message: netlink header, then the nfgenmsg header.
func (b *batch) open(typ, flags uint16, family uint8, resID uint16) {
	b.msg = len(b.buf)
	h := b.grow(nlmsgHeaderLen + nfgenHeaderLen)
	binary.NativeEndian.PutUint32(h[0:], 0) // length, set by seal
	binary.NativeEndian.PutUint16(h[4:], typ)
	binary.NativeEndian.PutUint16(h[6:], flags)
	binary.NativeEndian.PutUint32(h[8:], b.seq)
	binary.NativeEndian.PutUint32(h[12:], 0)
	b.seq++
	h[16] = family
	h[17] = unix.NFNETLINK_V0
	binary.BigEndian.PutUint16(h[18:], resID)
}

// change starts a message of one change to table inet nftguard.
func (b *batch) change(msgType int, flags uint16) {
	b.open(uint16(unix.NFNL_SUBSYS_NFTABLES<<8|msgType), unix.NLM_F_REQUEST|flags, unix.NFPROTO_INET, 0)
}

// seal sets the length of the open message.
func (b *batch) seal() {
	binary.NativeEndian.PutUint32(b.buf[b.msg:], uint32(len(b.buf)-b.msg))
}

// close ends the open change.
func (b *batch) close() {
	b.seal()
	b.last = b.msg
	b.changes++
}

// attr appends an attribute of n bytes of payload, padded to 4, and
// returns the payload.
func (b *batch) attr(typ uint16, n int) []byte {
	padded := (n + 3) &^ 3
	a := b.grow(attrHeaderLen + padded)
	binary.NativeEndian.PutUint16(a[0:], uint16(attrHeaderLen+n))
	binary.NativeEndian.PutUint16(a[2:], typ)
	clear(a[attrHeaderLen+n:])
	return a[attrHeaderLen : attrHeaderLen+n]
}

func (b *batch) bytes(typ uint16, v []byte) { copy(b.attr(typ, len(v)), v) }

// str appends a NUL-terminated string.
func (b *batch) str(typ uint16, s string) {
	a := b.attr(typ, len(s)+1)
	copy(a, s)
	a[len(s)] = 0
}

func (b *batch) u16(typ uint16, v uint16) { binary.BigEndian.PutUint16(b.attr(typ, 2), v) }
func (b *batch) u32(typ uint16, v uint32) { binary.BigEndian.PutUint32(b.attr(typ, 4), v) }
func (b *batch) u64(typ uint16, v uint64) { binary.BigEndian.PutUint64(b.attr(typ, 8), v) }

// nest opens a nested attribute; end closes it.
func (b *batch) nest(typ uint16) int {
	at := len(b.buf)
	b.attr(unix.NLA_F_NESTED|typ, 0)
	return at
}

func (b *batch) end(at int) {
	n := len(b.buf) - at
	if n > 0xffff {
		// An attribute's length is 16 bits; element lists are cut
		// well below (maxMessageBytes), so only a bug gets here.
		b.fail(fmt.Errorf("nested attribute of %d bytes", n))
	}
	binary.NativeEndian.PutUint16(b.buf[at:], uint16(n))
}

// value appends a nested NFTA_DATA_VALUE holding v.
func (b *batch) value(typ uint16, v []byte) {
	n := b.nest(typ)
	b.bytes(unix.NFTA_DATA_VALUE, v)
	b.end(n)
}

func (b *batch) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

// Table and chain changes.

func (b *batch) addTable() {
	b.change(unix.NFT_MSG_NEWTABLE, unix.NLM_F_CREATE)
	b.str(unix.NFTA_TABLE_NAME, model.TableName)
	b.u32(unix.NFTA_TABLE_FLAGS, 0)
	b.close()
}

func (b *batch) delTable() {
	b.change(unix.NFT_MSG_DELTABLE, 0)
	b.str(unix.NFTA_TABLE_NAME, model.TableName)
	b.u32(unix.NFTA_TABLE_FLAGS, 0)
	b.close()
}

// flushTable deletes every rule of the table.
func (b *batch) flushTable() {
	b.change(unix.NFT_MSG_DELRULE, 0)
	b.str(unix.NFTA_RULE_TABLE, model.TableName)
	b.close()
}

func (b *batch) addChain(c *model.Chain) {
	b.change(unix.NFT_MSG_NEWCHAIN, unix.NLM_F_CREATE)
	b.str(unix.NFTA_CHAIN_TABLE, model.TableName)
	b.str(unix.NFTA_CHAIN_NAME, c.Name)
	if c.IsBase() {
		num, err := hookNumber(c.Hook)
		if err != nil {
			b.fail(fmt.Errorf("chain %s: %w", c.Name, err))
			return
		}
		hook := b.nest(unix.NFTA_CHAIN_HOOK)
		b.u32(unix.NFTA_HOOK_HOOKNUM, num)
		b.u32(unix.NFTA_HOOK_PRIORITY, uint32(c.Priority))
		b.end(hook)
		b.u32(unix.NFTA_CHAIN_POLICY, nfAccept)
		b.str(unix.NFTA_CHAIN_TYPE, "filter")
	}
	b.close()
}

// named appends a change that names only the table and one chain or set
// of it, in the attributes the message type reads them from.
func (b *batch) named(msgType int, tableAttr, nameAttr uint16, name string) {
	b.change(msgType, 0)
	b.str(tableAttr, model.TableName)
	b.str(nameAttr, name)
	b.close()
}

func (b *batch) delChain(name string) {
	b.named(unix.NFT_MSG_DELCHAIN, unix.NFTA_CHAIN_TABLE, unix.NFTA_CHAIN_NAME, name)
}

// flushChain deletes every rule of a chain.
func (b *batch) flushChain(name string) {
	b.named(unix.NFT_MSG_DELRULE, unix.NFTA_RULE_TABLE, unix.NFTA_RULE_CHAIN, name)
}

// Rules.

// addRule appends a rule to a chain, after the rule of handle position
// when it is not 0; or, with insert set, inserts it before that rule (or
// at the start of the chain).
func (b *batch) addRule(chain string, r *model.Rule, insert bool, position uint64) {
	flags := uint16(unix.NLM_F_CREATE | unix.NLM_F_APPEND)
	if insert {
		flags = unix.NLM_F_CREATE
	}
	b.change(unix.NFT_MSG_NEWRULE, flags)
	b.str(unix.NFTA_RULE_TABLE, model.TableName)
	b.str(unix.NFTA_RULE_CHAIN, chain)
	list := b.nest(unix.NFTA_RULE_EXPRESSIONS)
	for _, s := range r.Stmts {
		if err := b.stmt(s); err != nil {
			b.fail(fmt.Errorf("rule %q: %w", r.String(), err))
			return
		}
	}
	b.end(list)
	// The rule's id as its comment (appendComment, written in place).
	id := r.ID()
	ud := b.attr(unix.NFTA_RULE_USERDATA, 2+len(id)+1)
	ud[0], ud[1] = udataComment, byte(len(id)+1)
	copy(ud[2:], id)
	ud[len(ud)-1] = 0
	if position != 0 {
		b.u64(unix.NFTA_RULE_POSITION, position)
	}
	b.close()
}

func (b *batch) delRule(chain string, handle uint64) {
	if handle == 0 {
		b.fail(fmt.Errorf("deleting a rule of chain %s without its handle", chain))
		return
	}
	b.change(unix.NFT_MSG_DELRULE, 0)
	b.str(unix.NFTA_RULE_TABLE, model.TableName)
	b.str(unix.NFTA_RULE_CHAIN, chain)
	b.u64(unix.NFTA_RULE_HANDLE, handle)
	b.close()
}

// stmt appends the expressions of one statement, written straight from
// it. Each statement has one encoding; the decoder recognises exactly these
// shapes, and encode_test.go checks them against google/nftables.
func (b *batch) stmt(s model.Stmt) error {
	switch s := s.(type) {
	case model.Verdict:
		// accept | drop | return | jump <chain> | goto <chain>
		code, err := verdictCode(s)
		if err != nil {
			return err
		}
		b.verdictExpr(code, s.Chain)

	case model.TaggedAddrInSet:
		// 0x0012abcd . ip saddr @ag4: the tag and the address side by
		// side in the registers
		b.taggedAddr(s.Family, s.Field, s.Tag)
		b.lookup(reg1, s.Set, 0, false, false)

	case model.AddrIs:
		// ip saddr 198.18.1.3
		off, n := addrOffset(s.Family(), s.Field)
		b.familyCheck(s.Family())
		b.payload(reg1, unix.NFT_PAYLOAD_NETWORK_HEADER, off, n)
		b.cmp(unix.NFT_CMP_EQ, reg1, s.Addr.AsSlice())

	case model.AddrInSet:
		// ip saddr @set | ip saddr != @set
		off, n := addrOffset(s.Family, s.Field)
		b.familyCheck(s.Family)
		b.payload(reg1, unix.NFT_PAYLOAD_NETWORK_HEADER, off, n)
		b.lookup(reg1, s.Set, 0, false, s.Invert)

	case model.AddrVmap:
		// ip daddr vmap @in4
		off, n := addrOffset(s.Family, s.Field)
		b.familyCheck(s.Family)
		b.payload(reg1, unix.NFT_PAYLOAD_NETWORK_HEADER, off, n)
		b.lookup(reg1, s.Vmap, regVerdict, true, false)

	case model.EndpointInSet:
		// ip daddr . meta l4proto . th dport @set
		off, n := addrOffset(s.Family, model.Daddr)
		protoReg := nextReg(reg1, n)
		b.familyCheck(s.Family)
		b.payload(reg1, unix.NFT_PAYLOAD_NETWORK_HEADER, off, n)
		b.protoPort(protoReg)
		b.lookup(reg1, s.Set, 0, false, false)

	case model.TaggedEndpointInSet:
		// 0x0012abcd . ip daddr . meta l4proto . th dport @set
		n := b.taggedAddr(s.Family, s.Field, s.Tag)
		b.protoPort(nextReg(nextReg(reg1, 4), n))
		b.lookup(reg1, s.Set, 0, false, false)

	case model.PortsVmap:
		// meta l4proto . th dport vmap @map
		b.protoPort(reg1)
		b.lookup(reg1, s.Vmap, regVerdict, true, false)

	case model.IifnameInSet:
		// iifname @set
		b.meta(unix.NFT_META_IIFNAME, reg1)
		b.lookup(reg1, s.Set, 0, false, false)

	case model.PortsInSet:
		// meta l4proto . th dport @set
		b.protoPort(reg1)
		b.lookup(reg1, s.Set, 0, false, false)

	case model.ProtoIs:
		// meta l4proto tcp
		b.meta(unix.NFT_META_L4PROTO, reg1)
		b.cmp(unix.NFT_CMP_EQ, reg1, []byte{s.Proto})

	case model.DportIn:
		// tcp dport 80 (meta l4proto tcp th dport 80), or tcp dport 80-90
		b.meta(unix.NFT_META_L4PROTO, reg1)
		b.cmp(unix.NFT_CMP_EQ, reg1, []byte{s.Proto})
		b.payload(reg1, unix.NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2)
		var from, to [2]byte
		binary.BigEndian.PutUint16(from[:], s.From)
		binary.BigEndian.PutUint16(to[:], s.To)
		if s.From == s.To {
			b.cmp(unix.NFT_CMP_EQ, reg1, from[:])
		} else {
			b.rangeEq(reg1, from[:], to[:])
		}

	case model.CtState:
		// ct state established,related
		b.ctBitsSet(unix.NFT_CT_STATE, s.Bits)

	case model.CtMark:
		// ct mark and 0x00800000 != 0x00000000
		b.ctBitsSet(unix.NFT_CT_MARK, s.Bits)

	case model.ICMPv6Types:
		// meta nfproto ipv6 meta l4proto ipv6-icmp icmpv6 type 133-137
		b.familyCheck(model.IPv6)
		b.meta(unix.NFT_META_L4PROTO, reg1)
		b.cmp(unix.NFT_CMP_EQ, reg1, []byte{model.ProtoICMPv6})
		b.payload(reg1, unix.NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1)
		b.rangeEq(reg1, []byte{s.From}, []byte{s.To})
		if s.HopLimit != 0 {
			// ip6 hoplimit 255: byte 7 of the IPv6 header
			b.payload(reg1, unix.NFT_PAYLOAD_NETWORK_HEADER, 7, 1)
			b.cmp(unix.NFT_CMP_EQ, reg1, []byte{s.HopLimit})
		}

	case model.LimitRate:
		// limit rate 10/second burst 20 packets
		x := b.openExpr("limit")
		b.u64(unix.NFTA_LIMIT_RATE, uint64(s.Rate))
		b.u64(unix.NFTA_LIMIT_UNIT, nftLimitTimeSecond)
		b.u32(unix.NFTA_LIMIT_BURST, s.Burst)
		b.u32(unix.NFTA_LIMIT_TYPE, unix.NFT_LIMIT_PKTS)
		b.u32(unix.NFTA_LIMIT_FLAGS, 0)
		b.closeExpr(x)

	case model.Counter:
		// counter (from zero: a rule's counts are the kernel's)
		x := b.openExpr("counter")
		b.u64(unix.NFTA_COUNTER_BYTES, 0)
		b.u64(unix.NFTA_COUNTER_PACKETS, 0)
		b.closeExpr(x)

	case model.NFLog:
		// log prefix "..." group 100 (a group selects NFLOG rather than
		// the kernel log)
		x := b.openExpr("log")
		b.u16(unix.NFTA_LOG_GROUP, s.Group)
		b.str(unix.NFTA_LOG_PREFIX, s.Prefix)
		b.closeExpr(x)

	default:
		return fmt.Errorf("statement %T has no encoding", s)
	}
	return nil
}

// taggedAddr appends the family check, then a tag in register 1 and the
// packet's address (field) after it, and returns the address's length.
func (b *batch) taggedAddr(f model.Family, field model.AddrField, tag uint32) uint32 {
	off, n := addrOffset(f, field)
	b.familyCheck(f)
	var t [4]byte
	binary.NativeEndian.PutUint32(t[:], tag)
	b.immediate(reg1, t[:])
	b.payload(nextReg(reg1, 4), unix.NFT_PAYLOAD_NETWORK_HEADER, off, n)
	return n
}

// protoPort loads the layer-4 protocol into reg and the destination port
// into the 4-byte register after it: "meta l4proto . th dport".
func (b *batch) protoPort(reg uint32) {
	b.meta(unix.NFT_META_L4PROTO, reg)
	b.payload(nextReg(reg, 1), unix.NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2)
}

// openExpr starts an expression of a rule: its name, then its data.
func (b *batch) openExpr(name string) [2]int {
	elem := b.nest(unix.NFTA_LIST_ELEM)
	b.str(unix.NFTA_EXPR_NAME, name)
	return [2]int{elem, b.nest(unix.NFTA_EXPR_DATA)}
}

func (b *batch) closeExpr(x [2]int) {
	b.end(x[1])
	b.end(x[0])
}

// familyCheck appends "meta nfproto ipv4" (or ipv6): the dependency nft
// adds before a network header field in an inet table.
func (b *batch) familyCheck(f model.Family) {
	b.meta(unix.NFT_META_NFPROTO, reg1)
	b.cmp(unix.NFT_CMP_EQ, reg1, []byte{nfproto(f)})
}

func (b *batch) meta(key, dreg uint32) {
	x := b.openExpr("meta")
	b.u32(unix.NFTA_META_KEY, key)
	b.u32(unix.NFTA_META_DREG, dreg)
	b.closeExpr(x)
}

func (b *batch) cmp(op, sreg uint32, data []byte) {
	x := b.openExpr("cmp")
	b.u32(unix.NFTA_CMP_SREG, sreg)
	b.u32(unix.NFTA_CMP_OP, op)
	b.value(unix.NFTA_CMP_DATA, data)
	b.closeExpr(x)
}

// rangeEq appends a match of from <= register <= to.
func (b *batch) rangeEq(sreg uint32, from, to []byte) {
	x := b.openExpr("range")
	b.u32(unix.NFTA_RANGE_SREG, sreg)
	b.u32(unix.NFTA_RANGE_OP, unix.NFT_RANGE_EQ)
	b.value(unix.NFTA_RANGE_FROM_DATA, from)
	b.value(unix.NFTA_RANGE_TO_DATA, to)
	b.closeExpr(x)
}

func (b *batch) payload(dreg, base, off, n uint32) {
	x := b.openExpr("payload")
	b.u32(unix.NFTA_PAYLOAD_DREG, dreg)
	b.u32(unix.NFTA_PAYLOAD_BASE, base)
	b.u32(unix.NFTA_PAYLOAD_OFFSET, off)
	b.u32(unix.NFTA_PAYLOAD_LEN, n)
	b.closeExpr(x)
}

// lookup appends a set lookup: a match when the key is in the set (with
// invert, when it is not), or, with dreg set, a verdict map lookup into the
// verdict register.
func (b *batch) lookup(sreg uint32, set string, dreg uint32, hasDreg, invert bool) {
	x := b.openExpr("lookup")
	b.u32(unix.NFTA_LOOKUP_SREG, sreg)
	if hasDreg {
		b.u32(unix.NFTA_LOOKUP_DREG, dreg)
	}
	if invert {
		b.u32(unix.NFTA_LOOKUP_FLAGS, unix.NFT_LOOKUP_F_INV)
	}
	b.str(unix.NFTA_LOOKUP_SET, set)
	b.u32(unix.NFTA_LOOKUP_SET_ID, 0)
	b.closeExpr(x)
}

func (b *batch) immediate(dreg uint32, data []byte) {
	x := b.openExpr("immediate")
	b.u32(unix.NFTA_IMMEDIATE_DREG, dreg)
	b.value(unix.NFTA_IMMEDIATE_DATA, data)
	b.closeExpr(x)
}

// verdictExpr appends an immediate verdict: accept, drop, jump <chain>...
func (b *batch) verdictExpr(code int32, chain string) {
	x := b.openExpr("immediate")
	b.u32(unix.NFTA_IMMEDIATE_DREG, unix.NFT_REG_VERDICT)
	data := b.nest(unix.NFTA_IMMEDIATE_DATA)
	b.verdict(code, chain)
	b.end(data)
	b.closeExpr(x)
}

// verdict appends NFTA_DATA_VERDICT: the code and, for jump and goto, the
// chain.
func (b *batch) verdict(code int32, chain string) {
	n := b.nest(unix.NFTA_DATA_VERDICT)
	b.u32(unix.NFTA_VERDICT_CODE, uint32(code))
	if chain != "" {
		b.str(unix.NFTA_VERDICT_CHAIN, chain)
	}
	b.end(n)
}

// Sets.

// addSet creates a set (without elements), declaring its size unless
// capacity is 0, and returns the id by which later messages of the batch may
// refer to it.
func (b *batch) addSet(s *model.Set, capacity uint32) uint32 {
	t, ok := setTypes[s.Kind]
	if !ok {
		b.fail(fmt.Errorf("set %s: no kernel type for kind %d", s.Name, s.Kind))
		return 0
	}
	b.setID++
	id := b.setID
	b.change(unix.NFT_MSG_NEWSET, unix.NLM_F_CREATE)
	b.str(unix.NFTA_SET_TABLE, model.TableName)
	b.str(unix.NFTA_SET_NAME, s.Name)
	b.u32(unix.NFTA_SET_FLAGS, t.flags())
	b.u32(unix.NFTA_SET_KEY_TYPE, t.keyType())
	b.u32(unix.NFTA_SET_KEY_LEN, t.keyLen())
	b.u32(unix.NFTA_SET_ID, id)
	if t.isMap {
		b.u32(unix.NFTA_SET_DATA_TYPE, unix.NFT_DATA_VERDICT)
		b.u32(unix.NFTA_SET_DATA_LEN, 0)
	}

	if t.concat() || capacity != 0 {
		desc := b.nest(unix.NFTA_SET_DESC)
		if capacity != 0 {
			b.u32(unix.NFTA_SET_DESC_SIZE, capacity)
		}
		if t.concat() {
			// The field lengths of the concatenated key.
			concat := b.nest(nftaSetDescConcat)
			for _, f := range t.fields {
				field := b.nest(unix.NFTA_LIST_ELEM)
				b.u32(nftaSetFieldLen, f.len)
				b.end(field)
			}
			b.end(concat)
		}
		b.end(desc)
	}
	// The key's byte order, as nft records it (for nft list).
	b.bytes(unix.NFTA_SET_USERDATA, setUserData)
	b.close()
	return id
}

func (b *batch) delSet(name string) {
	b.named(unix.NFT_MSG_DELSET, unix.NFTA_SET_TABLE, unix.NFTA_SET_NAME, name)
}

// flushSet deletes every element of a set.
func (b *batch) flushSet(name string) {
	b.named(unix.NFT_MSG_DELSETELEM, unix.NFTA_SET_ELEM_LIST_TABLE, unix.NFTA_SET_ELEM_LIST_SET, name)
}

// elements adds (or deletes) elements of a set, id being the set's id when
// the batch creates it (0 otherwise), in messages whose element list stays
// within maxMessageBytes (its attribute length is 16 bits).
func (b *batch) elements(del bool, s *model.Set, id uint32, elems []model.Element) {
	if len(elems) == 0 {
		return
	}
	msgType := unix.NFT_MSG_NEWSETELEM
	if del {
		msgType = unix.NFT_MSG_DELSETELEM
	}
	var list, start int
	open := func() {
		b.change(msgType, unix.NLM_F_CREATE)
		b.str(unix.NFTA_SET_ELEM_LIST_SET, s.Name)
		b.u32(unix.NFTA_SET_ELEM_LIST_SET_ID, id)
		b.str(unix.NFTA_SET_ELEM_LIST_TABLE, model.TableName)
		list = b.nest(unix.NFTA_SET_ELEM_LIST_ELEMENTS)
		start = len(b.buf)
	}
	closeMsg := func() {
		b.end(list)
		b.close()
	}
	n := uint16(0)
	open()
	err := eachKernelElement(s.Kind, elems, func(e kernelElement) {
		if len(b.buf)-start > maxMessageBytes {
			closeMsg()
			open()
			n = 0
		}
		n++
		at := b.nest(n)
		if e.end {
			b.u32(unix.NFTA_SET_ELEM_FLAGS, unix.NFT_SET_ELEM_INTERVAL_END)
		}
		b.value(unix.NFTA_SET_ELEM_KEY, e.key)
		if len(e.keyEnd) > 0 {
			b.value(nftaSetElemKeyEnd, e.keyEnd)
		}
		if e.verdict != nil {
			data := b.nest(unix.NFTA_SET_ELEM_DATA)
			b.verdict(e.code, e.verdict.Chain)
			b.end(data)
		}

		b.end(at)
	})
	closeMsg()
	if err != nil {
		b.fail(fmt.Errorf("set %s: %w", s.Name, err))
	}
}

// ctBitsSet encodes a test that any of bits is set in the conntrack key
// (state, mark): ct, bitwise and with bits, cmp != 0.
func (b *batch) ctBitsSet(key, bits uint32) {
	var mask [4]byte
	binary.NativeEndian.PutUint32(mask[:], bits)
	x := b.openExpr("ct")
	b.u32(unix.NFTA_CT_KEY, key)
	b.u32(unix.NFTA_CT_DREG, reg1)
	b.closeExpr(x)
	x = b.openExpr("bitwise")
	b.u32(unix.NFTA_BITWISE_SREG, reg1)
	b.u32(unix.NFTA_BITWISE_DREG, reg1)
	b.u32(unix.NFTA_BITWISE_LEN, 4)
	b.value(unix.NFTA_BITWISE_MASK, mask[:])
	b.value(unix.NFTA_BITWISE_XOR, make([]byte, 4))
	b.closeExpr(x)
	b.cmp(unix.NFT_CMP_NEQ, reg1, make([]byte, 4))
}
