package agent_test

import (
	"net"
	"path/filepath"
	"slices"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/agent"
)

// tcpEstablished is conntrack's TCP state ESTABLISHED.
const tcpEstablished = 3

// flow is a conntrack entry: the original tuple, and the reply's source
// (the backend, for a Service flow).
type flow struct {
	name                string
	proto               uint8
	src, dst, replySrc  string
	sport, dport, rport uint16
	// mark is the entry's conntrack mark as another component set it.
	mark uint32
}

func (f flow) entry() *netlink.ConntrackFlow {
	e := &netlink.ConntrackFlow{FamilyType: unix.AF_INET, TimeOut: 600, Mark: f.mark}
	e.Forward = netlink.IPTuple{Protocol: f.proto, SrcIP: ip4(f.src), DstIP: ip4(f.dst), SrcPort: f.sport, DstPort: f.dport}
	e.Reverse = netlink.IPTuple{Protocol: f.proto, SrcIP: ip4(f.replySrc), DstIP: ip4(f.src), SrcPort: f.rport, DstPort: f.sport}
	if f.proto == unix.IPPROTO_TCP {
		e.ProtoInfo = &netlink.ProtoInfoTCP{State: tcpEstablished}
	}
	return e
}

// Established connections that a rule set change denies are marked
// revoked; the others, and the node's own, are not; an unchanged rule set
// revokes none; a connection allowed again is restored. Only the revoked
// bit of the mark is ever written. (Packets of marked connections are
// dropped: TestRevokedConnectionsDropped, and end to end TestRevocation.)
var _ = Describe("Revoking established connections", Ordered, func() {
	const node = "node-revoke"
	var (
		nodeNS           netns.NsHandle
		h                *netlink.Handle
		start, stopAgent func()
		startWith        func(func(*agent.Options)) func()
	)
	flows := []flow{
		{"allowed client", unix.IPPROTO_TCP, "198.18.8.1", "198.18.8.10", "198.18.8.10", 40000, 80, 80, foreignMark},
		{"client leaving the group", unix.IPPROTO_TCP, "198.18.8.2", "198.18.8.10", "198.18.8.10", 40001, 80, 80, 0},
		{"client leaving the group, UDP", unix.IPPROTO_UDP, "198.18.8.2", "198.18.8.10", "198.18.8.10", 40002, 80, 80, 0},
		{"client leaving the group, through a Service", unix.IPPROTO_TCP, "198.18.8.2", "198.19.8.100", "198.18.8.10", 40003, 8000, 80, 0},
		{"client leaving the group, marked by others", unix.IPPROTO_TCP, "198.18.8.2", "198.18.8.10", "198.18.8.10", 40006, 80, 80, foreignMark},
		{"the node itself", unix.IPPROTO_TCP, "198.18.8.254", "198.18.8.10", "198.18.8.10", 40004, 9999, 9999, 0},
		{"a pod no policy isolates", unix.IPPROTO_UDP, "198.18.8.2", "198.18.8.20", "198.18.8.20", 40005, 53, 53, 0},
	}
	// marks returns the conntrack mark of each flow still in the table.
	marks := func(g Gomega) map[string]uint32 {
		out := map[string]uint32{}
		list, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		g.Expect(err).NotTo(HaveOccurred())
		for _, e := range list {
			for _, f := range flows {
				if e.Forward.Protocol == f.proto && e.Forward.SrcIP.String() == f.src && e.Forward.SrcPort == f.sport {
					out[f.name] = e.Mark
				}
			}
		}
		return out
	}
	// revoked names the flows whose entries carry the revoked bit, and
	// fails if an entry is gone or another bit of a mark changed.
	revoked := func(g Gomega) []string {
		var out []string
		m := marks(g)
		g.Expect(m).To(HaveLen(len(flows)), "conntrack entries are kept")
		for _, f := range flows {
			g.Expect(m[f.name]&^agent.DefaultRevokedMark).To(Equal(f.mark), "others' bits of the mark of %s", f.name)
			if m[f.name]&agent.DefaultRevokedMark != 0 {
				out = append(out, f.name)
			}
		}
		slices.Sort(out)
		return out
	}
	setGroup := func(addrs ...string) {
		Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
			ag := &v1alpha1.AddressGroup{}
			if err := k8s.Get(ctx, client.ObjectKey{Name: "ag-revoke"}, ag); err != nil {
				return err
			}
			ag.Spec.Addresses = addrs
			return k8s.Update(ctx, ag)
		})).To(Succeed())
	}

	BeforeAll(func() {
		nodeNS = newNetNS()
		DeferCleanup(nodeNS.Close)
		var err error
		h, err = netlink.NewHandleAt(nodeNS, unix.NETLINK_NETFILTER, unix.NETLINK_ROUTE)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(h.Close)
		lo, err := h.LinkByName("lo")
		Expect(err).NotTo(HaveOccurred())
		Expect(h.LinkSetUp(lo)).To(Succeed())
		addr, err := netlink.ParseAddr("198.18.8.254/32")
		Expect(err).NotTo(HaveOccurred())
		Expect(h.AddrAdd(lo, addr)).To(Succeed())

		Expect(k8s.Create(ctx, group("ag-revoke", "198.18.8.1", "198.18.8.2"))).To(Succeed())
		Expect(k8s.Create(ctx, &v1alpha1.NodeRuleSet{
			ObjectMeta: metav1.ObjectMeta{Name: node},
			Spec: v1alpha1.NodeRuleSetSpec{
				Pods: []v1alpha1.LocalPod{
					{Namespace: "shop", Name: "api", IPs: []string{"198.18.8.10"},
						Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Policies: []string{"NetworkPolicy/shop/api"}, Rules: []string{"r-api"}}},
					{Namespace: "shop", Name: "dns", IPs: []string{"198.18.8.20"}},
				},
				Rules: []v1alpha1.Rule{{
					ID: "r-api", Direction: v1alpha1.DirectionIngress, Peers: []v1alpha1.Peer{{AddressGroup: "ag-revoke"}},
					Ports: []v1alpha1.Port{{Protocol: v1alpha1.ProtocolTCP, Port: 80}, {Protocol: v1alpha1.ProtocolUDP, Port: 80}}, Policies: []string{"NetworkPolicy/shop/api"},
				}},
				AddressGroups: []string{"ag-revoke"},
			},
		})).To(Succeed())
		startWith = func(edit func(*agent.Options)) func() {
			return func() {
				opts := agent.Options{
					NodeName: node, ResyncPeriod: time.Hour, NetNS: int(nodeNS),
					AuditLog: filepath.Join(GinkgoT().TempDir(), "drops.log"), Log: logf.Log.WithName("agent-revoke"),
					Registerer: prometheus.NewRegistry(),
				}
				edit(&opts)
				stopAgent = runAgent(opts)
			}
		}
		start = startWith(func(*agent.Options) {})
		start()
		DeferCleanup(func() { stopAgent() })
		Eventually(func(g Gomega) {
			g.Expect(programmed(g, node).Status).To(Equal(metav1.ConditionTrue))
			g.Expect(kernelTableIn(g, nodeNS)).To(ContainSubstring("198.18.8.2"))
		}).Should(Succeed())
		for _, f := range flows {
			Expect(h.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, f.entry())).To(Succeed(), f.name)
		}
	})

	It("revokes nothing while the rule set allows every connection", func() {
		Consistently(func(g Gomega) []string { return revoked(g) }, 2*time.Second).Should(BeEmpty())
	})

	It("revokes nothing when an agent restarts over its unchanged table", func() {
		stopAgent()
		start()
		Eventually(func(g Gomega) {
			g.Expect(programmed(g, node).Status).To(Equal(metav1.ConditionTrue))
		}).Should(Succeed())
		Consistently(func(g Gomega) []string { return revoked(g) }, 2*time.Second).Should(BeEmpty())
	})

	It("revokes the connections of a client that leaves the group, direct and through a Service, and only those", func() {
		setGroup("198.18.8.1")
		Eventually(func(g Gomega) []string { return revoked(g) }).Should(ConsistOf(
			"client leaving the group", "client leaving the group, UDP",
			"client leaving the group, through a Service", "client leaving the group, marked by others"))
	})

	It("restores them when the client is allowed again", func() {
		setGroup("198.18.8.1", "198.18.8.2")
		Eventually(func(g Gomega) []string { return revoked(g) }).Should(BeEmpty())
	})

	It("revokes nothing with --keep-established, and its table drops no marked connection", func() {
		stopAgent()
		start = startWith(func(o *agent.Options) { o.KeepEstablished = true })
		start()
		Eventually(func(g Gomega) {
			g.Expect(programmed(g, node).Status).To(Equal(metav1.ConditionTrue))
			g.Expect(kernelTableIn(g, nodeNS)).NotTo(ContainSubstring("ct mark"))
		}).Should(Succeed())
		setGroup("198.18.8.1")
		Eventually(func(g Gomega) {
			g.Expect(kernelTableIn(g, nodeNS)).NotTo(ContainSubstring("198.18.8.2"))
		}).Should(Succeed())
		Consistently(func(g Gomega) []string { return revoked(g) }, 2*time.Second).Should(BeEmpty())
	})
})

// foreignMark is a conntrack mark bit another component set.
const foreignMark = 0x1

// ip4 is an IPv4 address in its 4-byte form, as conntrack's netlink
// encoding needs it.
func ip4(s string) net.IP { return net.ParseIP(s).To4() }
