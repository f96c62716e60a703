package bench

import (
	"flag"
	"fmt"
	"net/netip"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

var identities = flag.Bool("bench.identities", false, "render the benchmarks' tables in the identity layout (the agent's --identity-layout) instead of the rule chains")

// layout returns opts with the layout the benchmarks measure: the agent's
// default (rule chains), or the identity layout with -bench.identities.
func layout(opts render.Options) render.Options {
	opts.Identities = *identities
	return opts
}

// Addresses of the benchmarks, all inside namespaces they create:
// 198.18.0.1 onwards for peers in address groups (up to 130,000 of them),
// 198.19.254.0/24 for local pods that exist only in the rule set,
// 198.19.255.0/24 for the namespaces that send real packets.
var (
	peerBase   = netip.MustParseAddr("198.18.0.1")
	spareBase  = netip.MustParseAddr("198.19.240.1") // addresses swapped in by deltas
	localBase  = netip.MustParseAddr("198.19.254.1")
	nodeAddr   = netip.MustParseAddr("198.19.255.254")
	clientAddr = netip.MustParseAddr("198.19.255.1")
	serverAddr = netip.MustParseAddr("198.19.255.2")
)

// addrAt returns base + i.
func addrAt(base netip.Addr, i int) netip.Addr {
	b := base.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(i)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// benchPort is the port the data path's server listens on.
const benchPort = 8080

var rulePorts = []int32{80, 443, benchPort, 9090, 5432}

// nodeShape describes a synthetic node rule set: localPods isolated pods
// (pod 0 is the server when server is set), rules allow rules (one per
// NetworkPolicy) spread round-robin over the pods, rule r admitting address
// group r mod groups (groups of groupSize peers; 0 groups: one per rule) on
// one TCP port.
type nodeShape struct {
	localPods, rules, groups, groupSize int
	// server makes pod 0 the real server pod (serverAddr) and puts
	// clientAddr in the group of the last rule selecting it, on benchPort.
	server bool
}

// node is a rule set and its address groups.
type node struct {
	spec   v1alpha1.NodeRuleSetSpec
	groups map[string]v1alpha1.AddressGroupSpec
	order  []string // group names in creation order
}

func groupName(g int) string { return fmt.Sprintf("g%05d", g) }

func (s nodeShape) build() node {
	n := node{groups: map[string]v1alpha1.AddressGroupSpec{}}
	groups := s.groups
	if groups <= 0 || groups > s.rules {
		groups = s.rules
	}
	peer := 0
	for g := range groups {
		addrs := make([]string, s.groupSize)
		for j := range addrs {
			addrs[j] = addrAt(peerBase, peer).String()
			peer++
		}
		n.groups[groupName(g)] = v1alpha1.AddressGroupSpec{Addresses: addrs}
		n.order = append(n.order, groupName(g))
		n.spec.AddressGroups = append(n.spec.AddressGroups, groupName(g))
	}
	pods := make([]v1alpha1.LocalPod, s.localPods)
	for i := range pods {
		ip := addrAt(localBase, i)
		if s.server && i == 0 {
			ip = serverAddr
		}
		pods[i] = v1alpha1.LocalPod{Namespace: "bench", Name: fmt.Sprintf("pod-%04d", i), IPs: []string{ip.String()}}
	}
	lastServerRule := -1
	for r := range s.rules {
		id := fmt.Sprintf("r%05d", r)
		policy := fmt.Sprintf("NetworkPolicy/bench/p-%05d", r)
		n.spec.Rules = append(n.spec.Rules, v1alpha1.Rule{ID: id, Direction: v1alpha1.DirectionIngress,
			Peers:    []v1alpha1.Peer{{AddressGroup: groupName(r % groups)}},
			Ports:    []v1alpha1.Port{{Protocol: v1alpha1.ProtocolTCP, Port: rulePorts[r%len(rulePorts)]}},
			Policies: []string{policy}})
		pod := &pods[r%len(pods)]
		if pod.Ingress == nil {
			pod.Ingress = &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce}
		}
		pod.Ingress.Rules = append(pod.Ingress.Rules, id)
		pod.Ingress.Policies = append(pod.Ingress.Policies, policy)
		if r%len(pods) == 0 {
			lastServerRule = r
		}
	}
	if s.server && lastServerRule >= 0 {
		ru := &n.spec.Rules[lastServerRule]
		ru.Ports[0].Port = benchPort
		g := n.groups[ru.Peers[0].AddressGroup]
		g.Addresses = append(g.Addresses, clientAddr.String())
		n.groups[ru.Peers[0].AddressGroup] = g
	}
	n.spec.Pods = pods
	return n
}

// elements counts the peer addresses of the groups.
func (n node) elements() int {
	t := 0
	for _, g := range n.groups {
		t += len(g.Addresses)
	}
	return t
}

// withDelta returns a copy of the groups in which the first d addresses, in
// group order, are replaced by spare addresses.
func (n node) withDelta(d int) map[string]v1alpha1.AddressGroupSpec {
	out := make(map[string]v1alpha1.AddressGroupSpec, len(n.groups))
	for k, v := range n.groups {
		out[k] = v
	}
	changed := 0
	for _, name := range n.order {
		if changed == d {
			break
		}
		addrs := append([]string(nil), out[name].Addresses...)
		for j := range addrs {
			if changed == d {
				break
			}
			addrs[j] = addrAt(spareBase, changed).String()
			changed++
		}
		out[name] = v1alpha1.AddressGroupSpec{Addresses: addrs}
	}
	return out
}
