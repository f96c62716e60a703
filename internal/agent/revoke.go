package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	mdnetlink "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// DefaultRevokedMark is the conntrack mark bit the agent sets on the entries
// of connections a changed table denies (--revoked-ct-mark).
const DefaultRevokedMark uint32 = 0x00800000

// Conntrack attributes the netlink package does not name.
const (
	ctaTupleOrig  = 1
	ctaMark       = 8
	ctaZone       = 18
	ctaMarkMask   = 21
	ctaTupleIP    = 1
	ctaTupleProto = 2
	ctaIPv4Src    = 1
	ctaIPv4Dst    = 2
	ctaIPv6Src    = 3
	ctaIPv6Dst    = 4
	ctaProtoNum   = 1
	ctaProtoSrc   = 2
	ctaProtoDst   = 3
)

// Revocation is what one pass over the conntrack table did.
type Revocation struct {
	// Revoked counts entries newly marked revoked; Restored, entries whose
	// mark was cleared because the table allows their connection again.
	Revoked, Restored int
}

// MarkRevoker revokes connections by a conntrack mark bit, in the network
// namespace of its Conntrack.
type MarkRevoker struct {
	Conntrack NetlinkConntrack
	// Mark is the bit (or bits) set on revoked entries; the table's base
	// chains drop the packets of connections that carry it
	// (render.Options.RevokedMark).
	Mark uint32
}

// Revoke marks the conntrack entries of the connections tab would not let
// start now with Mark (the table's base chains drop their packets, in
// both directions, before accepting established traffic), and clears it on
// entries the table allows again. The entries stay: a deleted entry's next
// packet would start a new connection in whichever direction it went, and
// the isolated pod's own answer could open it as an egress connection the
// policy allows.
//
// Each entry is judged as its first packet crossed the filter hooks, from
// the original source to the reply's source and port, so a Service flow
// (original destination the ClusterIP) is judged by its backend. A
// connection the node itself opened (output, never filtered) is left
// alone, one to the node is judged by the input chain, and one Decide
// cannot judge is left alone. Only the Mark bits are written: other bits
// of the mark belong to others. One dump per address family.
func (m MarkRevoker) Revoke(tab *model.Table) (Revocation, error) {
	c, mark := m.Conntrack, m.Mark
	var done Revocation
	h, err := c.handle(unix.NETLINK_NETFILTER, unix.NETLINK_ROUTE)
	if err != nil {
		return done, err
	}
	defer h.Close()
	local, err := localAddrs(h)
	if err != nil {
		return done, err
	}
	conn, err := mdnetlink.Dial(unix.NETLINK_NETFILTER, &mdnetlink.Config{NetNS: c.NetNS})
	if err != nil {
		return done, fmt.Errorf("opening a conntrack netlink socket: %w", err)
	}
	defer conn.Close()
	decider := model.NewDecider(tab)
	var errs []error
	for _, family := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		flows, err := h.ConntrackTableList(netlink.ConntrackTable, family)
		if err != nil {
			return done, fmt.Errorf("listing conntrack entries: %w", err)
		}
		for _, f := range flows {
			denied, ok := judge(decider, local, f)
			marked := f.Mark&mark == mark
			if !ok || denied == marked {
				continue
			}
			set := uint32(0)
			if denied {
				set = mark
			}
			switch err := setMark(conn, f, set, mark); {
			case errors.Is(err, unix.ENOENT):
				// The connection ended meanwhile.
			case err != nil:
				errs = append(errs, err)
			case denied:
				done.Revoked++
			default:
				done.Restored++
			}
		}
	}
	if len(errs) > 0 {
		return done, fmt.Errorf("marking %d conntrack entries failed, first: %w", len(errs), errs[0])
	}
	return done, nil
}

// localAddrs returns the node's own addresses.
func localAddrs(h *netlink.Handle) (map[netip.Addr]bool, error) {
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("listing the node's addresses: %w", err)
	}
	local := map[netip.Addr]bool{}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			local[ip.Unmap()] = true
		}
	}
	return local, nil
}

// judge reports whether tab denies the connection of flow, and whether it
// could tell.
func judge(d *model.Decider, local map[netip.Addr]bool, flow *netlink.ConntrackFlow) (denied, ok bool) {
	switch flow.Forward.Protocol {
	case model.ProtoTCP, model.ProtoUDP, model.ProtoSCTP:
	default:
		return false, false
	}
	src, ok1 := netip.AddrFromSlice(flow.Forward.SrcIP)
	dst, ok2 := netip.AddrFromSlice(flow.Reverse.SrcIP)
	if !ok1 || !ok2 {
		return false, false
	}
	src, dst = src.Unmap(), dst.Unmap()
	if local[src] {
		return false, false
	}
	hook := model.HookForward
	if local[dst] {
		hook = model.HookInput
	}
	allowed, err := d.Decide(hook, model.Packet{Src: src, Dst: dst, Proto: flow.Forward.Protocol, Dport: flow.Reverse.SrcPort})
	if err != nil {
		return false, false
	}
	return !allowed, true
}

// setMark sets the mask bits of the mark of flow's entry to those of
// value, leaving the others, and waits for the kernel's answer.
func setMark(conn *mdnetlink.Conn, flow *netlink.ConntrackFlow, value, mask uint32) error {
	ae := mdnetlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	src, _ := netip.AddrFromSlice(flow.Forward.SrcIP)
	dst, _ := netip.AddrFromSlice(flow.Forward.DstIP)
	src, dst = src.Unmap(), dst.Unmap()
	ae.Nested(ctaTupleOrig, func(ae *mdnetlink.AttributeEncoder) error {
		ae.Nested(ctaTupleIP, func(ae *mdnetlink.AttributeEncoder) error {
			if src.Is4() {
				ae.Bytes(ctaIPv4Src, src.AsSlice())
				ae.Bytes(ctaIPv4Dst, dst.AsSlice())
			} else {
				ae.Bytes(ctaIPv6Src, src.AsSlice())
				ae.Bytes(ctaIPv6Dst, dst.AsSlice())
			}
			return nil
		})
		ae.Nested(ctaTupleProto, func(ae *mdnetlink.AttributeEncoder) error {
			ae.Uint8(ctaProtoNum, flow.Forward.Protocol)
			ae.Uint16(ctaProtoSrc, flow.Forward.SrcPort)
			ae.Uint16(ctaProtoDst, flow.Forward.DstPort)
			return nil
		})
		return nil
	})
	if flow.Zone != 0 {
		ae.Uint16(ctaZone, flow.Zone)
	}
	ae.Uint32(ctaMark, value)
	ae.Uint32(ctaMarkMask, mask)
	attrs, err := ae.Encode()
	if err != nil {
		return fmt.Errorf("encoding a conntrack mark update: %w", err)
	}
	family := uint8(unix.AF_INET)
	if src.Is6() {
		family = unix.AF_INET6
	}
	msg := mdnetlink.Message{
		Header: mdnetlink.Header{
			Type:  mdnetlink.HeaderType(unix.NFNL_SUBSYS_CTNETLINK<<8 | 0), // IPCTNL_MSG_CT_NEW
			Flags: mdnetlink.Request | mdnetlink.Acknowledge | mdnetlink.Replace,
		},
		// nfgenmsg: family, version NFNETLINK_V0, resource id 0.
		Data: append([]byte{family, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	if _, err := conn.Execute(msg); err != nil {
		return fmt.Errorf("setting the mark of conntrack entry %s %s:%d > %s:%d: %w",
			model.ProtoName(flow.Forward.Protocol), src, flow.Forward.SrcPort, dst, flow.Forward.DstPort, err)
	}
	return nil
}
