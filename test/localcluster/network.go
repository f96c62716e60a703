package localcluster

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The address plan. Only 198.18.0.0/15 (RFC 2544 benchmarking) and fd00::/8
// (unique local) are used, and only inside the cluster's own namespaces.
//
//	underlay              198.19.0.<n>/24        fd00:19::<n>/64      node n's eth0
//	node n's pods         198.18.<n>.0/24        fd00:18:<n>::/64     routed to node n
//	pod k on node n       198.18.<n>.<k+2>/32    fd00:18:<n>::<k+2>/128
//	gateway (every veth)  198.18.<n>.1/32        fe80::1/64           node side of each pod's veth
//	services              198.19.128.0/24        (the API server's service range; nothing routes it)
var (
	clusterRangeV4 = netip.MustParsePrefix("198.18.0.0/15")
	clusterRangeV6 = netip.MustParsePrefix("fd00::/8")
	gatewayV6      = netip.MustParseAddr("fe80::1")
	serviceRange   = "198.19.128.0/24"
	serviceIP      = net.ParseIP("198.19.128.1")
)

func underlayIPv4(n int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 0, byte(n)}) }
func underlayIPv6(n int) netip.Addr {
	return netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x19, 14: byte(n >> 8), 15: byte(n)})
}
func podCIDRv4(n int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(n), 0}), 24)
}
func podCIDRv6(n int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x18, 4: byte(n >> 8), 5: byte(n)}), 64)
}
func gatewayV4(n int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(n), 1}) }
func podIPv4(n, k int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(n), byte(k + 2)})
}
func podIPv6(n, k int) netip.Addr {
	return netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x18, 4: byte(n >> 8), 5: byte(n), 15: byte(k + 2)})
}

// plan assigns names and addresses to the topology's nodes and pods.
func plan(name string, t *Topology) ([]Node, []Pod) {
	prefix := netnsPrefix(name)
	var nodes []Node
	index := map[string]int{}
	for i, n := range t.Nodes {
		idx := i + 1
		index[n.Name] = idx
		nodes = append(nodes, Node{
			Name: n.Name, Index: idx, NetNS: prefix + n.Name,
			IPv4: underlayIPv4(idx), IPv6: underlayIPv6(idx),
			PodCIDRv4: podCIDRv4(idx), PodCIDRv6: podCIDRv6(idx),
			Labels: copyLabels(n.Labels),
		})
	}
	var pods []Pod
	count := map[string]int{}
	for _, p := range t.Pods {
		n := index[p.Node]
		k := count[p.Node]
		count[p.Node]++
		pods = append(pods, Pod{
			Namespace: p.Namespace, Name: p.Name, Node: p.Node,
			// Namespace, pod and node names are DNS labels: a pod's
			// "<ns>.<pod>" has a dot, a node's name none.
			NetNS:    prefix + p.Namespace + "." + p.Name,
			HostVeth: hostVethName(p.Key()),
			IPv4:     podIPv4(n, k), IPv6: podIPv6(n, k),
			Labels: copyLabels(p.Labels), Ports: append([]PortSpec(nil), p.Ports...),
		})
	}
	return nodes, pods
}

// hostVethName names the node side of a pod's veth after a hash of the pod
// (interface names have at most 15 bytes), like Calico's cali<hash>.
func hostVethName(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "ngd" + hex.EncodeToString(sum[:4])
}

func underlayNetNS(name string) string { return netnsPrefix(name) + "underlay" }

const (
	underlayBridge = "br0"
	nodeUplink     = "eth0"
	podInterface   = "eth0"
)

// buildUnderlay creates the underlay namespace with its bridge. IPv6 is off
// there: the bridge only switches frames between the nodes.
func (c *Cluster) buildUnderlay() error {
	ns := underlayNetNS(c.cfg.Name)
	if err := c.addNetNS(ns); err != nil {
		return err
	}
	if err := setSysctls(ns, [][2]string{
		{"net/ipv6/conf/all/disable_ipv6", "1"},
		{"net/ipv6/conf/default/disable_ipv6", "1"},
	}); err != nil {
		return err
	}
	h, fd, err := nsHandle(ns)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	defer h.Close()
	if err := linkUp(h, "lo"); err != nil {
		return err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: underlayBridge}}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("adding bridge in %s: %w", ns, err)
	}
	return linkUp(h, underlayBridge)
}

// nodeSysctls: a node routes for its pods; no duplicate address detection
// so that addresses are usable at once.
var nodeSysctls = [][2]string{
	{"net/ipv4/ip_forward", "1"},
	{"net/ipv6/conf/all/forwarding", "1"},
	{"net/ipv6/conf/default/accept_dad", "0"},
	{"net/ipv6/conf/all/accept_dad", "0"},
	{"net/ipv4/conf/all/rp_filter", "0"},
	{"net/ipv4/conf/default/rp_filter", "0"},
}

var podSysctls = [][2]string{
	{"net/ipv6/conf/default/accept_dad", "0"},
	{"net/ipv6/conf/all/accept_dad", "0"},
}

// buildNode creates a node's namespace and its uplink to the underlay bridge.
func (c *Cluster) buildNode(n Node) error {
	if err := c.addNetNS(n.NetNS); err != nil {
		return err
	}
	if err := setSysctls(n.NetNS, nodeSysctls); err != nil {
		return err
	}
	hu, fdu, err := nsHandle(underlayNetNS(c.cfg.Name))
	if err != nil {
		return err
	}
	defer unix.Close(fdu)
	defer hu.Close()
	hn, fdn, err := nsHandle(n.NetNS)
	if err != nil {
		return err
	}
	defer unix.Close(fdn)
	defer hn.Close()
	if err := linkUp(hn, "lo"); err != nil {
		return err
	}
	br, err := hu.LinkByName(underlayBridge)
	if err != nil {
		return fmt.Errorf("underlay bridge: %w", err)
	}
	port := fmt.Sprintf("node%d", n.Index)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: port, MasterIndex: br.Attrs().Index},
		PeerName:      nodeUplink,
		PeerNamespace: netlink.NsFd(fdn),
	}
	if err := hu.LinkAdd(veth); err != nil {
		return fmt.Errorf("adding underlay link for node %s: %w", n.Name, err)
	}
	if err := linkUp(hu, port); err != nil {
		return err
	}
	if err := linkUp(hn, nodeUplink); err != nil {
		return err
	}
	up, err := hn.LinkByName(nodeUplink)
	if err != nil {
		return err
	}
	if err := addAddr(hn, up, netip.PrefixFrom(n.IPv4, 24)); err != nil {
		return err
	}
	return addAddr(hn, up, netip.PrefixFrom(n.IPv6, 64))
}

// routeNodes gives every node routes to the other nodes' pod CIDRs through
// their underlay addresses.
func (c *Cluster) routeNodes(nodes []Node) error {
	for _, n := range nodes {
		h, fd, err := nsHandle(n.NetNS)
		if err != nil {
			return err
		}
		err = func() error {
			up, err := h.LinkByName(nodeUplink)
			if err != nil {
				return err
			}
			for _, o := range nodes {
				if o.Name == n.Name {
					continue
				}
				for _, r := range []struct {
					dst netip.Prefix
					via netip.Addr
				}{{o.PodCIDRv4, o.IPv4}, {o.PodCIDRv6, o.IPv6}} {
					if !r.dst.IsValid() {
						continue // the real cluster's control plane runs no pods
					}
					if err := h.RouteAdd(&netlink.Route{
						LinkIndex: up.Attrs().Index, Dst: ipNet(r.dst), Gw: r.via.AsSlice(),
					}); err != nil {
						return fmt.Errorf("node %s: route to %s via %s: %w", n.Name, r.dst, r.via, err)
					}
				}
			}
			return nil
		}()
		h.Close()
		unix.Close(fd)
		if err != nil {
			return err
		}
	}
	return nil
}

// buildPod creates a pod's namespace and joins it to its node by a veth
// pair with /32 and /128 routes on both sides (routed, like the ptp CNI
// plugin). The pod routes only the cluster's ranges, through its node.
func (c *Cluster) buildPod(n Node, p Pod) error {
	if err := c.addNetNS(p.NetNS); err != nil {
		return err
	}
	if err := setSysctls(p.NetNS, podSysctls); err != nil {
		return err
	}
	hn, fdn, err := nsHandle(n.NetNS)
	if err != nil {
		return err
	}
	defer unix.Close(fdn)
	defer hn.Close()
	hp, fdp, err := nsHandle(p.NetNS)
	if err != nil {
		return err
	}
	defer unix.Close(fdp)
	defer hp.Close()
	if err := linkUp(hp, "lo"); err != nil {
		return err
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.HostVeth},
		PeerName:      podInterface,
		PeerNamespace: netlink.NsFd(fdp),
	}
	if err := hn.LinkAdd(veth); err != nil {
		return fmt.Errorf("adding veth for pod %s: %w", p.Key(), err)
	}
	// Node side: the gateway addresses and a route to the pod.
	host, err := hn.LinkByName(p.HostVeth)
	if err != nil {
		return err
	}
	gw4 := gatewayV4(n.Index)
	if err := addAddr(hn, host, netip.PrefixFrom(gw4, 32)); err != nil {
		return err
	}
	if err := addAddr(hn, host, netip.PrefixFrom(gatewayV6, 64)); err != nil {
		return err
	}
	if err := linkUp(hn, p.HostVeth); err != nil {
		return err
	}
	for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
		if err := hn.RouteAdd(&netlink.Route{
			LinkIndex: host.Attrs().Index, Dst: ipNet(netip.PrefixFrom(a, a.BitLen())), Scope: netlink.SCOPE_LINK,
		}); err != nil {
			return fmt.Errorf("node %s: route to pod %s at %s: %w", n.Name, p.Key(), a, err)
		}
	}
	// Pod side: its addresses, the gateway on link, the cluster ranges via it.
	eth, err := hp.LinkByName(podInterface)
	if err != nil {
		return err
	}
	if err := addAddr(hp, eth, netip.PrefixFrom(p.IPv4, 32)); err != nil {
		return err
	}
	if err := addAddr(hp, eth, netip.PrefixFrom(p.IPv6, 128)); err != nil {
		return err
	}
	if err := linkUp(hp, podInterface); err != nil {
		return err
	}
	idx := eth.Attrs().Index
	routes := []*netlink.Route{
		{LinkIndex: idx, Dst: ipNet(netip.PrefixFrom(gw4, 32)), Scope: netlink.SCOPE_LINK},
		{LinkIndex: idx, Dst: ipNet(clusterRangeV4), Gw: gw4.AsSlice()},
		{LinkIndex: idx, Dst: ipNet(clusterRangeV6), Gw: gatewayV6.AsSlice()},
	}
	for _, r := range routes {
		if err := hp.RouteAdd(r); err != nil {
			return fmt.Errorf("pod %s: route %s: %w", p.Key(), r.Dst, err)
		}
	}
	return nil
}

func linkUp(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("setting %s up: %w", name, err)
	}
	return nil
}

// addAddr adds an address without duplicate address detection.
func addAddr(h *netlink.Handle, l netlink.Link, p netip.Prefix) error {
	a := &netlink.Addr{IPNet: ipNet(p)}
	a.IPNet.IP = p.Addr().AsSlice()
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("adding %s to %s: %w", p, l.Attrs().Name, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Masked().Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
