package nftnl

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/dptest"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

// The port shapes of selectedBy's rules.
const (
	samePort      = "the same port"  // TCP 80: the worst case before merging
	everyPort     = "every port"     // no ports
	distinctPorts = "distinct ports" // rule i on TCP 1000+i, the last on 80
)

// selectedBy is a rule set in which pod b is isolated on ingress by n
// rules of the given port shape, each from a group of six addresses, and a
// is in the last rule's group.
func selectedBy(topo *topology, n int, shape string) (v1alpha1.NodeRuleSetSpec, map[string]v1alpha1.AddressGroupSpec) {
	groups := map[string]v1alpha1.AddressGroupSpec{}
	var rules []v1alpha1.Rule
	var ids []string
	for i := range n {
		g := fmt.Sprintf("g%05d", i)
		var members []string
		for j := range 6 { // 60,000 addresses at most, in 198.19.0.0/16
			k := 6*i + j
			members = append(members, netip.AddrFrom4([4]byte{198, 19, byte(k >> 8), byte(k)}).String())
		}
		if i == n-1 {
			members[5] = topo.pods["a"].ip4.String()
		}
		groups[g] = v1alpha1.AddressGroupSpec{Addresses: members}
		id := fmt.Sprintf("r%05d", i)
		ids = append(ids, id)
		switch {
		case shape == everyPort:
			rules = append(rules, ingressRule(id, group(g)))
		case shape == distinctPorts && i < n-1:
			rules = append(rules, ingressRule(id, group(g), dptest.TCP(int32(1000+i))))
		default:
			rules = append(rules, ingressRule(id, group(g), dptest.TCP(80)))
		}
	}
	pol := policy{rules: rules, groups: groups}
	if n > 0 {
		pol.ingress = map[string][]string{"b": ids}
	}
	return topo.spec(pol), groups
}

// newConnectionRules programs the counted copy of tab (model.Counted) into
// the node and returns how many rule evaluations one TCP SYN from pod from
// to pod to on port costs: the least of five SYNs, each from a new source
// port, so that stray packets (neighbour discovery) only ever add. The
// server's answers are blackholed in its namespace, so only the SYN
// crosses the node.
func newConnectionRules(t *testing.T, topo *topology, p *Programmer, tab *model.Table, from, to *testPod, port uint16) uint64 {
	t.Helper()
	if _, err := p.Apply(model.Counted(tab)); err != nil {
		t.Fatal(err)
	}
	read := func() uint64 {
		kt, err := ReadTable(int(topo.node))
		if err != nil {
			t.Fatal(err)
		}
		return model.CountedRules(kt)
	}
	best := uint64(1 << 62)
	for range 5 {
		before := read()
		srcPort, seq := uint16(30000+rand.IntN(20000)), rand.Uint32()
		const syn = 0x02
		seg := tcpSegment(from.ip4, to.ip4, srcPort, port, seq, syn)
		if err := inNS(from.ns, func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Sendto(fd, seg, 0, &unix.SockaddrInet4{Addr: to.ip4.As4()})
		}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		best = min(best, read()-before)
	}
	return best
}

// blackholeTo drops, in pod's namespace, what it sends to addr.
func blackholeTo(t *testing.T, pod *testPod, addr netip.Addr) {
	t.Helper()
	h, err := netlink.NewHandleAt(pod.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	dst := netlink.NewIPNet(addr.AsSlice())
	if err := h.RouteAdd(&netlink.Route{Dst: dst, Type: unix.RTN_BLACKHOLE}); err != nil {
		t.Fatalf("blackhole route to %s in pod %s: %v", addr, pod.name, err)
	}
}

// TestNewConnectionRuleCount counts the rules a new connection walks in
// nftguard's table (a counter first in every rule of a measuring copy) for
// a pod selected by 1 to 1,000 rules, allowed and denied, for each port
// shape, and asserts the layout's cost: flat when the rules are on
// distinct ports (the port map takes a connection to the rules for its
// port), two rules more per selecting rule when they share its port or
// name none (a jump to each rule's chain and its one line). The second is
// what per-packet work still grows with (docs/dataplane.md).
func TestNewConnectionRuleCount(t *testing.T) {
	topo := newTopology(t, "a", "b", "c")
	a, b, c := topo.pods["a"], topo.pods["b"], topo.pods["c"]
	blackholeTo(t, b, a.ip4)
	blackholeTo(t, b, c.ip4)
	// No IPv6 from the pods (neighbour discovery, MLD) while counting.
	for _, pod := range []*testPod{a, b, c} {
		if err := inNS(pod.ns, func() error {
			return os.WriteFile("/proc/sys/net/ipv6/conf/all/disable_ipv6", []byte("1"), 0o644)
		}); err != nil {
			t.Fatal(err)
		}
	}
	p := programmer(t, topo.node)
	spec, groups := selectedBy(topo, 0, samePort)
	open := newConnectionRules(t, topo, p, mustRender(t, spec, groups), a, b, 80)
	t.Logf("not isolated: a new connection walks %d rules", open)
	// counts[layout][shape][n] are the rules walked (allowed, denied).
	counts := map[bool]map[string]map[int][2]uint64{false: {}, true: {}}
	for _, layout := range []struct {
		name       string
		identities bool
	}{{"rule chains", false}, {"identity layout", true}} {
		for _, shape := range []string{samePort, everyPort, distinctPorts} {
			var at10 [2]uint64
			counts[layout.identities][shape] = map[int][2]uint64{}
			for _, n := range []int{1, 10, 1000} {
				spec, groups := selectedBy(topo, n, shape)
				tab := mustRenderWith(t, spec, groups, render.Options{Identities: layout.identities})
				got := [2]uint64{newConnectionRules(t, topo, p, tab, a, b, 80), newConnectionRules(t, topo, p, tab, c, b, 80)}
				counts[layout.identities][shape][n] = got
				t.Logf("%s, %s, selected by %4d rules: a new connection walks %d rules when allowed, %d when denied", layout.name, shape, n, got[0], got[1])
				// (In the identity layout an allowed connection is accepted
				// by its peer's identity chain before the pod's chain.)
				if (got[0] <= open && !layout.identities) || got[1] <= open {
					t.Errorf("%s, %d rules: %v rules walked, not more than the %d of a pod no policy isolates: the count misses the pod's chains", shape, n, got, open)
				}
				if n == 10 {
					at10 = got
				}
				if n <= 10 {
					continue
				}
				want := at10
				if shape != distinctPorts && !layout.identities {
					grow := uint64(2 * (n - 10))
					want = [2]uint64{at10[0] + grow, at10[1] + grow}
				}
				if got != want {
					t.Errorf("%s, %s, %d rules: a new connection walks %v rules (allowed, denied), want %v (%v with 10 rules)", layout.name, shape, n, got, want, at10)
				}
			}
		}
	}
	// The agent's default: rule chains for a pod selected by fewer than
	// DefaultIdentityMin rules, the identity layout from there, so that
	// what a new connection walks has a bound whatever the policies.
	for _, shape := range []string{samePort, everyPort, distinctPorts} {
		var bound uint64 // what a pod selected by 1 rule walks, and 2 per rule more up to the threshold
		for _, n := range []int{1, 10, render.DefaultIdentityMin - 1, render.DefaultIdentityMin, 1000} {
			spec, groups := selectedBy(topo, n, shape)
			tab := mustRenderWith(t, spec, groups, render.Options{IdentityMin: render.DefaultIdentityMin})
			got := [2]uint64{newConnectionRules(t, topo, p, tab, a, b, 80), newConnectionRules(t, topo, p, tab, c, b, 80)}
			t.Logf("default, %s, selected by %4d rules: a new connection walks %d rules when allowed, %d when denied", shape, n, got[0], got[1])
			flat := n >= render.DefaultIdentityMin
			if want, ok := counts[flat][shape][n]; ok && got != want {
				t.Errorf("default, %s, %d rules: a new connection walks %v rules, want %v as in the %s", shape, n, got, want, map[bool]string{false: "rule chains", true: "identity layout"}[flat])
			}
			if n == 1 {
				bound = max(got[0], got[1]) + 2*uint64(render.DefaultIdentityMin-1)
			}
			if got[0] > bound || got[1] > bound {
				t.Errorf("default, %s, %d rules: a new connection walks %v rules, over the bound of %d", shape, n, got, bound)
			}
			if has := tab.Set(render.MapIdentity4) != nil; has != flat {
				t.Errorf("default, %s, %d rules: identity maps in the table %t, want %t", shape, n, has, flat)
			}
		}
	}
}
