package bench

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/nftnl"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

var countPolicies = flag.String("bench.count.policies", "0,1000,10000", "policy counts of the per-packet rule count benchmark (above 10,000, the identity layout only; 100000 took 12 minutes here, most of it the kernel's dumps of 100,000 chains when the counters are read)")

// selectedByShape is the rule count benchmark's node: 110 local pods, the
// server selected by all n policies, each one rule on benchPort from a
// group of its own of 10 peers (1 peer from 13,000 policies on, so that
// every peer fits in 198.18.0.0/15), the client in the last group. Every
// rule is for the same port: the worst case for a layout that walks rules.
func selectedByShape(n int) node {
	size := 10
	if n > 13000 {
		size = 1
	}
	out := node{groups: map[string]v1alpha1.AddressGroupSpec{}}
	pods := make([]v1alpha1.LocalPod, 110)
	for i := range pods {
		ip := addrAt(localBase, i)
		if i == 0 {
			ip = serverAddr
		}
		pods[i] = v1alpha1.LocalPod{Namespace: "bench", Name: fmt.Sprintf("pod-%04d", i), IPs: []string{ip.String()}}
	}
	peer := 0
	for r := range n {
		addrs := make([]string, size)
		for j := range addrs {
			addrs[j] = addrAt(peerBase, peer).String()
			peer++
		}
		if r == n-1 {
			addrs[size-1] = clientAddr.String()
		}
		g, id := groupName(r), fmt.Sprintf("r%05d", r)
		out.groups[g] = v1alpha1.AddressGroupSpec{Addresses: addrs}
		out.spec.AddressGroups = append(out.spec.AddressGroups, g)
		out.spec.Rules = append(out.spec.Rules, v1alpha1.Rule{ID: id, Direction: v1alpha1.DirectionIngress,
			Peers: []v1alpha1.Peer{{AddressGroup: g}}, Ports: []v1alpha1.Port{{Protocol: v1alpha1.ProtocolTCP, Port: benchPort}}})
		if pods[0].Ingress == nil {
			pods[0].Ingress = &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce}
		}
		pods[0].Ingress.Rules = append(pods[0].Ingress.Rules, id)
	}
	out.spec.Pods = pods
	return out
}

// linearCount is the rules a new connection from the client to the server
// walks in linearScript's layout of n, computed by walking that layout's
// rules as the kernel would: the forward chain's three (established,
// invalid, the jump), then the rules chain up to the first that matches,
// or to the server's drop.
func linearCount(n node) int {
	count := 3
	podsOf := map[string][]string{}
	var isolated []string
	for _, p := range n.spec.Pods {
		if p.Ingress == nil {
			continue
		}
		isolated = append(isolated, p.IPs[0])
		for _, r := range p.Ingress.Rules {
			podsOf[r] = append(podsOf[r], p.IPs[0])
		}
	}
	server, client := serverAddr.String(), clientAddr.String()
	for _, r := range n.spec.Rules {
		for _, pod := range podsOf[r.ID] {
			for _, peer := range r.Peers {
				for _, a := range n.groups[peer.AddressGroup].Addresses {
					for _, port := range r.Ports {
						count++
						if pod == server && a == client && port.Port == benchPort {
							return count
						}
					}
				}
			}
		}
	}
	for _, pod := range isolated {
		count++
		if pod == server {
			return count
		}
	}
	return count
}

// BenchmarkRuleCount counts the rules one new connection walks (its first
// packet, a TCP SYN from the client to the server, whose answers are
// blackholed) in nftguard's table for a server selected by 0 to 10,000
// policies on one port, in the identity layout (the agent's
// --identity-layout) and in the rule chains the agent renders by default:
// each table is programmed as a measuring
// copy with a counter first in every rule (model.Counted), and the count is
// the growth of the counters' sum, the least of five SYNs. The linear layout of the
// data path benchmark is counted by walking its rules (loading a million
// rules with nft is out of reach here). Counts do not depend on the
// machine's load.
func BenchmarkRuleCount(b *testing.B) {
	needRoot(b)
	p := newPair(b)
	// No IPv6 from the pods, and no answer from the server: only the SYN
	// crosses the node while counting.
	for _, ns := range [](func(func() error) error){
		func(f func() error) error { return inNS(p.client, f) },
		func(f func() error) error { return inNS(p.server, f) },
	} {
		if err := ns(func() error { return writeSysctl("net/ipv6/conf/all/disable_ipv6", "1") }); err != nil {
			b.Fatal(err)
		}
	}
	if err := inNS(p.server, func() error {
		return netlink.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: clientAddr.AsSlice(), Mask: net.CIDRMask(32, 32)}, Type: unix.RTN_BLACKHOLE})
	}); err != nil {
		b.Fatal(err)
	}
	prog, err := nftnl.NewProgrammerInNetNS(int(p.node))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = prog.Delete(); prog.Close() })
	for _, policies := range intList(b, *countPolicies) {
		b.Run(fmt.Sprintf("policies=%d", policies), func(b *testing.B) {
			n := selectedByShape(policies)
			// The identity layout (--identity-layout), the agent's
			// default (identities for pods selected by 16 rules or
			// more), and rule chains alone (--identity-layout-min=0).
			layouts := []struct {
				metric string
				opts   render.Options
			}{
				{"identity-layout-rules/conn", render.Options{Identities: true}},
				{"default-rules/conn", render.Options{IdentityMin: render.DefaultIdentityMin}},
				{"rule-chains-rules/conn", render.Options{}},
			}
			if policies > 10_000 {
				// The rule chains of 100,000 policies did not load within
				// 10 minutes here.
				layouts = layouts[:2]
			}
			got := make([]uint64, len(layouts))
			for b.Loop() {
				for i, l := range layouts {
					tab, err := render.Render(n.spec, n.groups, l.opts)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := prog.Apply(model.Counted(tab)); err != nil {
						b.Fatal(err)
					}
					got[i] = countSYN(b, p)
				}
			}
			for i, l := range layouts {
				b.ReportMetric(float64(got[i]), l.metric)
			}
			b.ReportMetric(float64(linearCount(n)), "linear-rules/conn")
		})
	}
}

// countSYN sends five SYNs from the client to the server, each from a new
// port, and returns the least growth of the node's counters' sum.
func countSYN(b *testing.B, p *pair) uint64 {
	read := func() uint64 {
		t, err := nftnl.ReadTable(int(p.node))
		if err != nil {
			b.Fatal(err)
		}
		return model.CountedRules(t)
	}
	best := uint64(1 << 62)
	for range 5 {
		before := read()
		seg := synSegment(clientAddr, serverAddr, uint16(30000+rand.IntN(20000)), benchPort)
		if err := inNS(p.client, func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Sendto(fd, seg, 0, &unix.SockaddrInet4{Addr: serverAddr.As4()})
		}); err != nil {
			b.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		best = min(best, read()-before)
	}
	return best
}

// synSegment is a TCP SYN with its checksum over the IPv4 pseudo-header.
func synSegment(src, dst netip.Addr, srcPort, dstPort uint16) []byte {
	s := make([]byte, 20)
	s[0], s[1], s[2], s[3] = byte(srcPort>>8), byte(srcPort), byte(dstPort>>8), byte(dstPort)
	seq := rand.Uint32()
	s[4], s[5], s[6], s[7] = byte(seq>>24), byte(seq>>16), byte(seq>>8), byte(seq)
	s[12], s[13], s[14] = 5<<4, 0x02, 0x04 // header length, SYN, window
	sum := uint32(0)
	pseudo := append(append(src.AsSlice(), dst.AsSlice()...), 0, unix.IPPROTO_TCP, 0, 20)
	for _, part := range [][]byte{pseudo, s} {
		for i := 0; i+1 < len(part); i += 2 {
			sum += uint32(part[i])<<8 | uint32(part[i+1])
		}
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	s[16], s[17] = byte(^uint16(sum)>>8), byte(^uint16(sum))
	return s
}
