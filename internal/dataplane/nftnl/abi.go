package nftnl

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// This file holds the kernel's side of the model: registers, header
// offsets, set key types, verdict codes and user data, as nf_tables and nft
// define them. The encoder writes statements with them and the decoder
// recognises the same shapes.

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

// regSlot returns the 4-byte slot a register starts at. The kernel dumps a
// register in its shortest name: NFT_REG32_04 comes back as NFT_REG_2.
func regSlot(r uint32) uint32 {
	if r <= unix.NFT_REG_4 {
		return r * 4
	}
	return r - reg32First + 4
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

// Constants x/sys/unix lacks.
const (
	// nftSetConcat is NFT_SET_CONCAT.
	nftSetConcat = 0x80
	// nftaSetDescConcat is NFTA_SET_DESC_CONCAT.
	nftaSetDescConcat = 2
	// nftaSetFieldLen is NFTA_SET_FIELD_LEN, the length of one field of a
	// concatenated key.
	nftaSetFieldLen = 1
	// nftaSetElemKeyEnd is NFTA_SET_ELEM_KEY_END.
	nftaSetElemKeyEnd = 10
	// nftLimitTimeSecond is the unit of a "limit rate N/second".
	nftLimitTimeSecond = 1
	// nfAccept and nfDrop are the verdict codes NF_ACCEPT and NF_DROP.
	nfAccept = 1
	nfDrop   = 0
)

// Data types of set keys (nft's datatype numbers) and their lengths.
type keyField struct{ magic, len uint32 }

var (
	typeIPv4    = keyField{7, 4}
	typeIPv6    = keyField{8, 16}
	typeProto   = keyField{12, 1}
	typeService = keyField{13, 2}
	typeMark    = keyField{19, 4}
	typeIfname  = keyField{41, model.IfnameLen}
)

// setType is how the kernel declares a kind of set.
type setType struct {
	fields   []keyField
	interval bool
	isMap    bool
}

var setTypes = map[model.SetKind]setType{
	model.SetIPv4:         {fields: []keyField{typeIPv4}},
	model.SetIPv6:         {fields: []keyField{typeIPv6}},
	model.SetIPv4Interval: {fields: []keyField{typeIPv4}, interval: true},
	model.SetIPv6Interval: {fields: []keyField{typeIPv6}, interval: true},
	model.SetEndpointIPv4: {fields: []keyField{typeIPv4, typeProto, typeService}},
	model.SetEndpointIPv6: {fields: []keyField{typeIPv6, typeProto, typeService}},
	model.SetPorts:        {fields: []keyField{typeProto, typeService}, interval: true},
	model.MapPortsVerdict: {fields: []keyField{typeProto, typeService}, interval: true, isMap: true},
	model.SetTaggedIPv4:   {fields: []keyField{typeMark, typeIPv4}},
	model.SetTaggedIPv6:   {fields: []keyField{typeMark, typeIPv6}},
	model.MapIPv4Verdict:  {fields: []keyField{typeIPv4}, isMap: true},
	model.MapIPv6Verdict:  {fields: []keyField{typeIPv6}, isMap: true},
	model.SetIfnames:      {fields: []keyField{typeIfname}},

	model.MapIPv4VerdictInterval: {fields: []keyField{typeIPv4}, interval: true, isMap: true},
	model.MapIPv6VerdictInterval: {fields: []keyField{typeIPv6}, interval: true, isMap: true},
	model.SetTaggedEndpointIPv4:  {fields: []keyField{typeMark, typeIPv4, typeProto, typeService}, interval: true},
	model.SetTaggedEndpointIPv6:  {fields: []keyField{typeMark, typeIPv6, typeProto, typeService}, interval: true},
}

// concat reports whether the key is a concatenation of several fields.
func (t setType) concat() bool { return len(t.fields) > 1 }

// flags are the set's NFTA_SET_FLAGS.
func (t setType) flags() uint32 {
	var f uint32
	if t.interval {
		f |= unix.NFT_SET_INTERVAL
	}
	if t.isMap {
		f |= unix.NFT_SET_MAP
	}
	if t.concat() {
		f |= nftSetConcat
	}
	return f
}

// keyType is the key's data type: for a concatenation, the fields' types
// six bits each, the first field highest.
func (t setType) keyType() uint32 {
	var magic uint32
	for _, f := range t.fields {
		magic = magic<<6 | f.magic
	}
	return magic
}

// keyLen is the key's length, each field of a concatenation padded to 4.
func (t setType) keyLen() uint32 {
	if !t.concat() {
		return t.fields[0].len
	}
	var n uint32
	for _, f := range t.fields {
		n += (f.len + 3) &^ 3
	}
	return n
}

// kindOf recognises the sets Render creates; 0 for anything else.
func kindOf(flags, keyType, keyLen, dataType uint32) model.SetKind {
	const known = unix.NFT_SET_INTERVAL | unix.NFT_SET_MAP | nftSetConcat
	if flags&^known != 0 {
		return 0 // anonymous, constant, timeout, dynamic, object: not ours
	}
	for k, t := range setTypes {
		if t.flags() == flags && t.keyType() == keyType && t.keyLen() == keyLen && (!t.isMap || dataType == unix.NFT_DATA_VERDICT) {
			return k
		}
	}
	return 0
}

// verdictCode returns the kernel's code of a verdict, or an error for a
// verdict the kernel does not know.
func verdictCode(v model.Verdict) (int32, error) {
	switch v.Kind {
	case model.VerdictAccept:
		return nfAccept, nil
	case model.VerdictDrop:
		return nfDrop, nil
	case model.VerdictReturn:
		return unix.NFT_RETURN, nil
	case model.VerdictJump, model.VerdictGoto:
		if v.Chain == "" {
			return 0, fmt.Errorf("verdict %s without a chain", v.Kind)
		}
		if v.Kind == model.VerdictJump {
			return unix.NFT_JUMP, nil
		}
		return unix.NFT_GOTO, nil
	}
	return 0, fmt.Errorf("unknown verdict %q", v.Kind)
}

// modelVerdict returns the verdict of a kernel code. A code nftguard never
// writes becomes a verdict of its own kind, which equals no rendered one:
// the table then differs from the desired one, and is repaired.
func modelVerdict(code int32, chain string) model.Verdict {
	switch code {
	case nfAccept:
		return model.Verdict{Kind: model.VerdictAccept}
	case nfDrop:
		return model.Verdict{Kind: model.VerdictDrop}
	case unix.NFT_RETURN:
		return model.Verdict{Kind: model.VerdictReturn}
	case unix.NFT_JUMP:
		return model.Verdict{Kind: model.VerdictJump, Chain: chain}
	case unix.NFT_GOTO:
		return model.Verdict{Kind: model.VerdictGoto, Chain: chain}
	}
	return model.Verdict{Kind: model.VerdictKind(fmt.Sprintf("verdict(%d)", code)), Chain: chain}
}

// hookNumber returns the netfilter hook of a base chain.
func hookNumber(h model.Hook) (uint32, error) {
	switch h {
	case model.HookForward:
		return unix.NF_INET_FORWARD, nil
	case model.HookInput:
		return unix.NF_INET_LOCAL_IN, nil
	case model.HookOutput:
		return unix.NF_INET_LOCAL_OUT, nil
	}
	return 0, fmt.Errorf("unknown hook %q", h)
}

// hookName names a netfilter hook number as the model does.
func hookName(n uint32) model.Hook {
	switch n {
	case unix.NF_INET_FORWARD:
		return model.HookForward
	case unix.NF_INET_LOCAL_IN:
		return model.HookInput
	case unix.NF_INET_LOCAL_OUT:
		return model.HookOutput
	}
	return model.Hook(fmt.Sprintf("hook%d", n))
}

// User data, in libnftnl's type-length-value records.
const (
	udataComment         = 0 // a rule's comment
	udataSetKeyByteOrder = 0 // NFTNL_UDATA_SET_KEYBYTEORDER
	byteOrderBigEndian   = 2
)

// setUserData records a big-endian key, as nft does (for nft list).
var setUserData = binary.LittleEndian.AppendUint32([]byte{udataSetKeyByteOrder, 4}, byteOrderBigEndian)

// appendComment appends the user data of a rule comment.
func appendComment(b []byte, s string) []byte {
	b = append(b, udataComment, byte(len(s)+1))
	b = append(b, s...)
	return append(b, 0)
}

// commentOf returns the comment in a rule's user data, or "".
func commentOf(ud []byte) string {
	for len(ud) >= 2 {
		typ, n := ud[0], int(ud[1])
		if len(ud) < 2+n {
			return ""
		}
		if typ == udataComment {
			v := ud[2 : 2+n]
			for len(v) > 0 && v[len(v)-1] == 0 {
				v = v[:len(v)-1]
			}
			return string(v)
		}
		ud = ud[2+n:]
	}
	return ""
}
