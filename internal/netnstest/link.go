package netnstest

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Router brings up the loopback of ns and turns on IPv4 and IPv6
// forwarding in it, so that it forwards between the pods linked to it.
func Router(t testing.TB, ns netns.NsHandle) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("node loopback: %v", err)
	}
	if err := Do(ns, func() error {
		for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("enabling forwarding: %v", err)
	}
}

// Link joins the pod namespace to the node namespace as the ptp CNI plugin
// does: a veth pair (hostIf in the node, eth0 in the pod), the node's
// addresses on its end with a host route to each pod address, and in the
// pod its addresses, a host route to each node address and a default route
// through it. Addresses skip duplicate address detection.
func Link(t testing.TB, node, pod netns.NsHandle, hostIf string, nodeAddrs, podAddrs []netip.Addr) {
	t.Helper()
	must := func(err error, what string) {
		t.Helper()
		if err != nil {
			t.Fatalf("linking %s: %s: %v", hostIf, what, err)
		}
	}
	nh, err := netlink.NewHandleAt(node)
	must(err, "node handle")
	defer nh.Close()
	la := netlink.NewLinkAttrs()
	la.Name = hostIf
	must(nh.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(pod))}), "veth")
	must(setUp(nh, hostIf, nodeAddrs, podAddrs, false), "node end")

	ph, err := netlink.NewHandleAt(pod)
	must(err, "pod handle")
	defer ph.Close()
	lo, err := ph.LinkByName("lo")
	if err == nil {
		err = ph.LinkSetUp(lo)
	}
	must(err, "pod loopback")
	must(setUp(ph, "eth0", podAddrs, nodeAddrs, true), "pod end")
}

// setUp brings one end of a link up with its addresses and a host route to
// each peer address, and with gateway set a default route through each.
func setUp(h *netlink.Handle, ifname string, addrs, peers []netip.Addr, gateway bool) error {
	l, err := h.LinkByName(ifname)
	if err != nil {
		return err
	}
	if err := h.LinkSetUp(l); err != nil {
		return err
	}
	for _, a := range addrs {
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: HostNet(a), Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("address %s: %w", a, err)
		}
	}
	for _, a := range peers {
		if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: HostNet(a), Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("route to %s: %w", a, err)
		}
		if !gateway {
			continue
		}
		if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: a.AsSlice()}); err != nil {
			return fmt.Errorf("default route through %s: %w", a, err)
		}
	}
	return nil
}

// HostNet is a's host prefix (/32 or /128).
func HostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}
