package nftnl

import (
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// nfnlgrpNftables is NFNLGRP_NFTABLES, the multicast group of nf_tables
// change notifications, which x/sys/unix lacks.
const nfnlgrpNftables = 7

// Monitor receives the kernel's nf_tables change notifications in one
// network namespace: every committed change of every table, each
// transaction ended by a generation notification naming the process that
// committed it.
type Monitor struct {
	nl *netlink.Conn
}

// NewMonitor subscribes to nf_tables notifications in the network
// namespace fd refers to (0: the calling thread's).
func NewMonitor(netnsFD int) (*Monitor, error) {
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFD})
	if err != nil {
		return nil, fmt.Errorf("opening netfilter netlink socket: %w", err)
	}
	if err := nl.JoinGroup(nfnlgrpNftables); err != nil {
		nl.Close()
		return nil, fmt.Errorf("joining the nf_tables notification group: %w", err)
	}
	return &Monitor{nl: nl}, nil
}

// Receive waits for the next notifications. An error that wraps ENOBUFS
// means the kernel dropped notifications the socket had no room for:
// compare the table with what it should hold instead.
func (m *Monitor) Receive() ([]model.Notification, error) {
	msgs, err := m.nl.Receive()
	if err != nil {
		return nil, fmt.Errorf("receiving nf_tables notifications: %w", err)
	}
	out := make([]model.Notification, 0, len(msgs))
	for _, msg := range msgs {
		if n, ok := decodeNotification(msg); ok {
			out = append(out, n)
		}
	}
	return out, nil
}

// Close ends the subscription; a Receive waiting returns an error.
func (m *Monitor) Close() error { return m.nl.Close() }

// familyName names an nfgenmsg family as nft does.
func familyName(f byte) string {
	switch f {
	case unix.NFPROTO_INET:
		return "inet"
	case unix.NFPROTO_IPV4:
		return "ip"
	case unix.NFPROTO_IPV6:
		return "ip6"
	case unix.NFPROTO_ARP:
		return "arp"
	case unix.NFPROTO_BRIDGE:
		return "bridge"
	case unix.NFPROTO_NETDEV:
		return "netdev"
	}
	return fmt.Sprintf("family%d", f)
}

// decodeNotification decodes one nf_tables notification; false for
// messages that are none (or that it cannot read).
func decodeNotification(msg netlink.Message) (model.Notification, bool) {
	typ := uint16(msg.Header.Type)
	if typ>>8 != unix.NFNL_SUBSYS_NFTABLES || len(msg.Data) < 4 {
		return model.Notification{}, false
	}
	n := model.Notification{Family: familyName(msg.Data[0]), PortID: msg.Header.PID}
	// The attributes naming the table and the object, by message type.
	var tableAttr, nameAttr uint16
	switch typ & 0xff {
	case unix.NFT_MSG_NEWTABLE, unix.NFT_MSG_DELTABLE:
		n.Object, tableAttr = model.ObjectTable, unix.NFTA_TABLE_NAME
	case unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_DELCHAIN:
		n.Object, tableAttr, nameAttr = model.ObjectChain, unix.NFTA_CHAIN_TABLE, unix.NFTA_CHAIN_NAME
	case unix.NFT_MSG_NEWRULE, unix.NFT_MSG_DELRULE:
		n.Object, tableAttr, nameAttr = model.ObjectRule, unix.NFTA_RULE_TABLE, unix.NFTA_RULE_CHAIN
	case unix.NFT_MSG_NEWSET, unix.NFT_MSG_DELSET:
		n.Object, tableAttr, nameAttr = model.ObjectSet, unix.NFTA_SET_TABLE, unix.NFTA_SET_NAME
	case unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM:
		n.Object, tableAttr, nameAttr = model.ObjectElements, unix.NFTA_SET_ELEM_LIST_TABLE, unix.NFTA_SET_ELEM_LIST_SET
	case unix.NFT_MSG_NEWGEN:
		n.Object = model.ObjectGeneration
	default:
		return model.Notification{}, false
	}
	switch typ & 0xff {
	case unix.NFT_MSG_DELTABLE, unix.NFT_MSG_DELCHAIN, unix.NFT_MSG_DELRULE, unix.NFT_MSG_DELSET, unix.NFT_MSG_DELSETELEM:
		n.Deleted = true
	}
	ad, err := netlink.NewAttributeDecoder(msg.Data[4:])
	if err != nil {
		return model.Notification{}, false
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		t := ad.Type()
		switch {
		case n.Object == model.ObjectGeneration:
			switch t {
			case unix.NFTA_GEN_ID:
				n.Generation = ad.Uint32()
			case unix.NFTA_GEN_PROC_PID:
				n.PID = ad.Uint32()
			case unix.NFTA_GEN_PROC_NAME:
				n.Process = ad.String()
			}
		case t == tableAttr:
			n.Table = ad.String()
		case nameAttr != 0 && t == nameAttr:
			n.Name = ad.String()
		case n.Object == model.ObjectRule && t == unix.NFTA_RULE_HANDLE:
			n.Handle = ad.Uint64()
		case n.Object == model.ObjectRule && t == unix.NFTA_RULE_USERDATA:
			n.RuleID = commentOf(ad.Bytes())
		}
	}
	if ad.Err() != nil {
		return model.Notification{}, false
	}
	return n, true
}
