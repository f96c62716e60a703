package agent_test

import (
	"encoding/binary"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/agent"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/nftnl"
	"github.com/nftguard/nftguard/internal/dataplane/nfttest"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

// An agent whose resync is an hour away repairs other processes' changes
// to its table through the nf_tables notifications alone.
var _ = Describe("Tamper repair", Ordered, func() {
	const node = "node-tamper"
	var (
		nodeNS netns.NsHandle
		reg    *prometheus.Registry
		good   []string
		tamper *nftables.Conn
	)
	foreignChanges := func() float64 {
		mfs, err := reg.Gather()
		Expect(err).NotTo(HaveOccurred())
		for _, mf := range mfs {
			if mf.GetName() == "nftguard_agent_foreign_changes_total" {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		Fail("no nftguard_agent_foreign_changes_total")
		return 0
	}
	table := func(g Gomega) []string { return sortedLines(kernelTableIn(g, nodeNS)) }
	// repaired waits until the kernel holds the agent's table again and
	// reports how long that took.
	repaired := func(what string, since time.Time) {
		GinkgoHelper()
		Eventually(func(g Gomega) {
			g.Expect(table(g)).To(Equal(good))
		}, 10*time.Second, 10*time.Millisecond).Should(Succeed(), "%s not repaired", what)
		GinkgoWriter.Printf("%s: repaired in %s\n", what, time.Since(since).Round(time.Millisecond))
	}

	BeforeAll(func() {
		nodeNS = newNetNS()
		DeferCleanup(nodeNS.Close)
		Expect(k8s.Create(ctx, group("ag-tamper", "198.18.6.1", "fd00:6::1"))).To(Succeed())
		Expect(k8s.Create(ctx, &v1alpha1.NodeRuleSet{
			ObjectMeta: metav1.ObjectMeta{Name: node},
			Spec: v1alpha1.NodeRuleSetSpec{
				Pods: []v1alpha1.LocalPod{{
					Namespace: "shop", Name: "db", IPs: []string{"198.18.6.10", "fd00:6::10"},
					Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Policies: []string{"NetworkPolicy/shop/db"}, Rules: []string{"r-db"}},
				}},
				Rules: []v1alpha1.Rule{{
					ID: "r-db", Direction: v1alpha1.DirectionIngress, Peers: []v1alpha1.Peer{{AddressGroup: "ag-tamper"}},
					Ports: []v1alpha1.Port{{Protocol: v1alpha1.ProtocolTCP, Port: 5432}}, Policies: []string{"NetworkPolicy/shop/db"},
				}},
				AddressGroups: []string{"ag-tamper"},
			},
		})).To(Succeed())
		reg = prometheus.NewRegistry()
		DeferCleanup(runAgent(agent.Options{
			NodeName: node, MetricsBindAddress: "0", ResyncPeriod: time.Hour, NetNS: int(nodeNS),
			AuditLog: filepath.Join(GinkgoT().TempDir(), "drops.log"), Log: logf.Log.WithName("agent-tamper"),
			Registerer: reg,
		}))
		Eventually(func(g Gomega) {
			g.Expect(programmed(g, node).Status).To(Equal(metav1.ConditionTrue))
		}).Should(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(kernelTableIn(g, nodeNS)).To(ContainSubstring("198.18.6.1"))
		}).Should(Succeed())
		good = table(Default)
		var err error
		tamper, err = nftables.New(nftables.WithNetNSFd(int(nodeNS)))
		Expect(err).NotTo(HaveOccurred())
	})

	It("takes none of its own transactions for tampering", func() {
		Expect(foreignChanges()).To(BeZero())
	})

	It("restores a deleted table", func() {
		other, err := nftnl.NewProgrammerInNetNS(int(nodeNS))
		Expect(err).NotTo(HaveOccurred())
		defer other.Close()
		start := time.Now()
		Expect(other.Delete()).To(Succeed())
		repaired("deleted table", start)
	})

	It("restores a flushed chain", func() {
		start := time.Now()
		tamper.FlushChain(&nftables.Chain{Table: nfttest.Table(), Name: render.PodChainName("in", "shop", "db")})
		Expect(tamper.Flush()).To(Succeed())
		repaired("flushed pod chain", start)
	})

	It("restores a removed set element", func() {
		key := binary.NativeEndian.AppendUint32(nil, render.GroupTag("ag-tamper"))
		key = append(key, netip.MustParseAddr("198.18.6.1").AsSlice()...)
		start := time.Now()
		Expect(tamper.SetDeleteElements(nfttest.Set(&model.Set{Name: render.SharedSetName(model.IPv4, render.GroupTag("ag-tamper")), Kind: model.SetTaggedIPv4}),
			[]nftables.SetElement{{Key: key}})).To(Succeed())
		Expect(tamper.Flush()).To(Succeed())
		repaired("removed group element", start)
	})

	It("removes a foreign rule inserted into a base chain", func() {
		start := time.Now()
		tamper.InsertRule(&nftables.Rule{
			Table: nfttest.Table(),
			Chain: &nftables.Chain{Table: nfttest.Table(), Name: model.ChainIngressForward},
			Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}},
		})
		Expect(tamper.Flush()).To(Succeed())
		repaired("accept-all rule inserted into ingress-forward", start)
		Expect(foreignChanges()).To(BeNumerically(">=", 4))
	})
})
