package agent

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetlinkConntrack deletes conntrack entries through netlink, in the
// network namespace NetNS (0: the agent's own).
type NetlinkConntrack struct {
	NetNS int
}

// addrFilter matches a flow if any address of either tuple is in the set:
// the original tuple of a Service flow holds the ClusterIP, its reply tuple
// the pod.
type addrFilter map[netip.Addr]bool

func (f addrFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	for _, ip := range []net.IP{flow.Forward.SrcIP, flow.Forward.DstIP, flow.Reverse.SrcIP, flow.Reverse.DstIP} {
		if a, ok := netip.AddrFromSlice(ip); ok && f[a.Unmap()] {
			return true
		}
	}
	return false
}

// Flush deletes every entry whose tuples hold one of addrs: one dump of the
// table per address family, however many addresses.
func (c NetlinkConntrack) Flush(addrs []netip.Addr) error {
	if len(addrs) == 0 {
		return nil
	}
	h, err := c.handle(unix.NETLINK_NETFILTER)
	if err != nil {
		return err
	}
	defer h.Close()
	v4, v6 := addrFilter{}, addrFilter{}
	for _, a := range addrs {
		if a.Unmap().Is4() {
			v4[a.Unmap()] = true
		} else {
			v6[a] = true
		}
	}
	for _, f := range []struct {
		family netlink.InetFamily
		set    addrFilter
	}{{unix.AF_INET, v4}, {unix.AF_INET6, v6}} {
		if len(f.set) == 0 {
			continue
		}
		if _, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, f.family, f.set); err != nil {
			return fmt.Errorf("deleting conntrack entries of %d addresses: %w", len(f.set), err)
		}
	}
	return nil
}

// handle opens a netlink handle of the given protocols in NetNS.
func (c NetlinkConntrack) handle(protos ...int) (*netlink.Handle, error) {
	var h *netlink.Handle
	var err error
	if c.NetNS != 0 {
		h, err = netlink.NewHandleAt(netns.NsHandle(c.NetNS), protos...)
	} else {
		h, err = netlink.NewHandle(protos...)
	}
	if err != nil {
		return nil, fmt.Errorf("opening a netlink socket: %w", err)
	}
	return h, nil
}
