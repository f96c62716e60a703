package localcluster

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// SCTP over raw IP protocol 132: the kernel here has no SCTP sockets, but
// nf_tables and conntrack handle SCTP. A probe sends an INIT (verification
// tag 0, as RFC 9260 requires, and a valid CRC32c, or conntrack marks the
// packet invalid); the pod server answers an INIT on a port it serves with an
// INIT ACK carrying the probe's initiate tag, and an INIT on any other port
// with an ABORT, as an SCTP stack would. Conntrack sees a real association
// handshake start, so replies pass a stateful firewall like any other.

const protoSCTP = 132

// SCTP chunk types.
const (
	chunkInit    = 1
	chunkInitAck = 2
	chunkAbort   = 6
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// sctpPacket is the part of an SCTP packet the probe and the server use:
// the common header and the first chunk.
type sctpPacket struct {
	SrcPort, DstPort uint16
	VerificationTag  uint32
	ChunkType        uint8
	// InitiateTag is the INIT or INIT ACK chunk's initiate tag.
	InitiateTag uint32
	// Cookie is an INIT ACK's state cookie: the pod server puts its name
	// there, so that a probe knows who answered.
	Cookie []byte
}

// sctpInit builds an INIT from srcPort to dstPort with the given initiate tag.
func sctpInit(srcPort, dstPort uint16, initTag uint32) []byte {
	b := make([]byte, 12+20)
	binary.BigEndian.PutUint16(b[0:], srcPort)
	binary.BigEndian.PutUint16(b[2:], dstPort)
	// b[4:8] verification tag 0; b[8:12] checksum, filled below.
	c := b[12:]
	c[0] = chunkInit
	binary.BigEndian.PutUint16(c[2:], 20)
	binary.BigEndian.PutUint32(c[4:], initTag)
	binary.BigEndian.PutUint32(c[8:], 65535) // advertised receiver window
	binary.BigEndian.PutUint16(c[12:], 1)    // outbound streams
	binary.BigEndian.PutUint16(c[14:], 1)    // inbound streams
	binary.BigEndian.PutUint32(c[16:], initTag)
	sctpChecksum(b)
	return b
}

// sctpInitAck answers an INIT: the verification tag is the INIT's initiate
// tag; the chunk carries our own tag and a state cookie (mandatory).
func sctpInitAck(init sctpPacket, ownTag uint32, cookie []byte) []byte {
	paramLen := 4 + len(cookie)
	padded := (paramLen + 3) &^ 3
	b := make([]byte, 12+20+padded)
	binary.BigEndian.PutUint16(b[0:], init.DstPort)
	binary.BigEndian.PutUint16(b[2:], init.SrcPort)
	binary.BigEndian.PutUint32(b[4:], init.InitiateTag)
	c := b[12:]
	c[0] = chunkInitAck
	binary.BigEndian.PutUint16(c[2:], uint16(20+paramLen))
	binary.BigEndian.PutUint32(c[4:], ownTag)
	binary.BigEndian.PutUint32(c[8:], 65535)
	binary.BigEndian.PutUint16(c[12:], 1)
	binary.BigEndian.PutUint16(c[14:], 1)
	binary.BigEndian.PutUint32(c[16:], ownTag)
	binary.BigEndian.PutUint16(c[20:], 7) // State Cookie parameter
	binary.BigEndian.PutUint16(c[22:], uint16(paramLen))
	copy(c[24:], cookie)
	sctpChecksum(b)
	return b
}

// sctpAbort answers an INIT that cannot be served: verification tag is the
// INIT's initiate tag, T bit clear.
func sctpAbort(init sctpPacket) []byte {
	b := make([]byte, 12+4)
	binary.BigEndian.PutUint16(b[0:], init.DstPort)
	binary.BigEndian.PutUint16(b[2:], init.SrcPort)
	binary.BigEndian.PutUint32(b[4:], init.InitiateTag)
	b[12] = chunkAbort
	binary.BigEndian.PutUint16(b[14:], 4)
	sctpChecksum(b)
	return b
}

// sctpChecksum fills in the CRC32c of a packet whose checksum field is zero.
// SCTP stores it least significant byte first (RFC 9260 appendix A, as
// Linux's sctp_compute_cksum does).
func sctpChecksum(b []byte) {
	binary.LittleEndian.PutUint32(b[8:], crc32.Checksum(b, castagnoli))
}

// parseSCTP decodes and checks a packet (without its IP header).
func parseSCTP(b []byte) (sctpPacket, error) {
	var p sctpPacket
	if len(b) < 16 {
		return p, errors.New("short SCTP packet")
	}
	sum := binary.LittleEndian.Uint32(b[8:])
	cp := append([]byte(nil), b...)
	binary.LittleEndian.PutUint32(cp[8:], 0)
	if crc32.Checksum(cp, castagnoli) != sum {
		return p, errors.New("bad SCTP checksum")
	}
	p.SrcPort = binary.BigEndian.Uint16(b[0:])
	p.DstPort = binary.BigEndian.Uint16(b[2:])
	p.VerificationTag = binary.BigEndian.Uint32(b[4:])
	p.ChunkType = b[12]
	if (p.ChunkType == chunkInit || p.ChunkType == chunkInitAck) && len(b) >= 12+20 {
		p.InitiateTag = binary.BigEndian.Uint32(b[16:])
	}
	if chunkLen := int(binary.BigEndian.Uint16(b[14:])); p.ChunkType == chunkInitAck && len(b) >= 12+20 && chunkLen >= 20 {
		params := b[12+20 : min(12+chunkLen, len(b))]
		for len(params) >= 4 {
			typ, l := binary.BigEndian.Uint16(params), int(binary.BigEndian.Uint16(params[2:]))
			if l < 4 || l > len(params) {
				break
			}
			if typ == 7 {
				p.Cookie = append([]byte(nil), params[4:l]...)
			}
			params = params[min((l+3)&^3, len(params)):]
		}
	}
	return p, nil
}
