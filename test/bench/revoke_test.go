package bench

import (
	"flag"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/agent"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

var revokeEntries = flag.String("bench.revoke.entries", "1000,10000,50000", "conntrack table sizes of the revocation benchmark")

// BenchmarkRevoke measures one revocation pass over a node's conntrack
// table of n TCP entries to an isolated pod, half of them from peers the
// table no longer allows, against the dump of the same table measured in
// the same run (the pass's floor: it must read every entry once). Reported:
// the pass's time per entry, its ratio to the dump, and how many entries it
// marked (a count: n/2, or the pass is wrong).
func BenchmarkRevoke(b *testing.B) {
	needRoot(b)
	for _, n := range intList(b, *revokeEntries) {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			ns := newNetNS(b)
			h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
			if err != nil {
				b.Fatal(err)
			}
			defer h.Close()
			server := net.IPv4(198, 18, 0, 10).To4()
			var allowed []string
			for i := range n {
				src := net.IPv4(198, 19, byte(i>>8), byte(i)).To4()
				if i%2 == 0 {
					allowed = append(allowed, src.String())
				}
				f := &netlink.ConntrackFlow{FamilyType: unix.AF_INET, TimeOut: 600,
					Forward:   netlink.IPTuple{Protocol: unix.IPPROTO_TCP, SrcIP: src, DstIP: server, SrcPort: uint16(10000 + i%50000), DstPort: 80},
					Reverse:   netlink.IPTuple{Protocol: unix.IPPROTO_TCP, SrcIP: server, DstIP: src, SrcPort: 80, DstPort: uint16(10000 + i%50000)},
					ProtoInfo: &netlink.ProtoInfoTCP{State: 3}}
				if err := h.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, f); err != nil {
					b.Fatalf("entry %d: %v", i, err)
				}
			}
			spec := v1alpha1.NodeRuleSetSpec{
				Pods: []v1alpha1.LocalPod{{Namespace: "shop", Name: "api", IPs: []string{server.String()},
					Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Rules: []string{"r"}}}},
				Rules: []v1alpha1.Rule{{ID: "r", Direction: v1alpha1.DirectionIngress,
					Peers: []v1alpha1.Peer{{AddressGroup: "clients"}}, Ports: []v1alpha1.Port{{Protocol: v1alpha1.ProtocolTCP, Port: 80}}}},
				AddressGroups: []string{"clients"},
			}
			tab, err := render.Render(spec, map[string]v1alpha1.AddressGroupSpec{"clients": {Addresses: allowed}}, layout(render.Options{RevokedMark: agent.DefaultRevokedMark}))
			if err != nil {
				b.Fatal(err)
			}
			rv := agent.MarkRevoker{Conntrack: agent.NetlinkConntrack{NetNS: int(ns)}, Mark: agent.DefaultRevokedMark}
			b.ResetTimer()
			var dump, pass time.Duration
			marked := 0
			for range b.N {
				start := time.Now()
				if _, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET); err != nil {
					b.Fatal(err)
				}
				dump += time.Since(start)
				start = time.Now()
				done, err := rv.Revoke(tab)
				if err != nil {
					b.Fatal(err)
				}
				pass += time.Since(start)
				marked += done.Revoked
				// Clear the marks for the next round: a table that allows
				// everyone restores them (not timed).
				open, err := render.Render(spec, map[string]v1alpha1.AddressGroupSpec{"clients": {Addresses: append(allowed, "198.19.0.0/16")}}, layout(render.Options{RevokedMark: agent.DefaultRevokedMark}))
				if err != nil {
					b.Fatal(err)
				}
				if r, err := rv.Revoke(open); err != nil || r.Restored != done.Revoked {
					b.Fatalf("restoring: %+v, %v", r, err)
				}
			}
			b.StopTimer()
			if marked != b.N*n/2 {
				b.Fatalf("marked %d entries in %d passes, want %d", marked, b.N, b.N*n/2)
			}
			b.ReportMetric(float64(pass.Nanoseconds())/float64(b.N*n), "pass-ns/entry")
			b.ReportMetric(float64(pass)/float64(dump), "pass/dump")
			b.ReportMetric(float64(marked)/float64(b.N), "marked/pass")
		})
	}
}
