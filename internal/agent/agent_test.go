package agent_test

import (
	"context"
	"slices"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/agent"
	"github.com/nftguard/nftguard/internal/dataplane/nftnl"
)

// kernelTable is what the node's network namespace enforces, in nft syntax.
func kernelTable(g Gomega) string {
	t, err := nftnl.ReadTable(int(nodeNS))
	g.Expect(err).NotTo(HaveOccurred())
	if t == nil {
		return ""
	}
	return t.String()
}

func programmed(g Gomega, name string) *metav1.Condition {
	return conditionOf(g, name, v1alpha1.ConditionProgrammed)
}

// conditionOf is condition typ of node's NodeRuleSet, which must have it.
func conditionOf(g Gomega, node, typ string) *metav1.Condition {
	rs := &v1alpha1.NodeRuleSet{}
	g.Expect(k8s.Get(ctx, client.ObjectKey{Name: node}, rs)).To(Succeed())
	c := meta.FindStatusCondition(rs.Status.Conditions, typ)
	g.Expect(c).NotTo(BeNil(), "no %s condition yet", typ)
	return c
}

// runAgent sets up an agent with opts and runs it until the returned
// stop, which waits for it to end.
func runAgent(opts agent.Options) (stop func()) {
	GinkgoHelper()
	a, err := agent.Setup(env.Config, opts)
	Expect(err).NotTo(HaveOccurred())
	actx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() {
		defer GinkgoRecover()
		defer close(stopped)
		Expect(a.Run(actx)).To(Succeed())
	}()
	return func() {
		cancel()
		Eventually(stopped, 10*time.Second).Should(BeClosed())
	}
}

// sortedLines is a table's listing as a sorted list of lines.
func sortedLines(s string) []string {
	lines := strings.Split(s, "\n")
	slices.Sort(lines)
	return lines
}

// group is an AddressGroup whose span holds the agents' nodes, as the
// controller labels the groups a node references.
func group(name string, addrs ...string) *v1alpha1.AddressGroup {
	var span []int
	for _, n := range []string{nodeName, "node-revoke", "node-tamper"} {
		span = append(span, v1alpha1.SpanBucket(n))
	}
	return &v1alpha1.AddressGroup{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: v1alpha1.SpanLabels(span)},
		Spec:       v1alpha1.AddressGroupSpec{Namespace: "shop", Addresses: addrs},
	}
}

// setSpan rewrites the span labels of a group to the given buckets.
func setSpan(name string, buckets ...int) {
	GinkgoHelper()
	Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ag := &v1alpha1.AddressGroup{}
		if err := k8s.Get(ctx, client.ObjectKey{Name: name}, ag); err != nil {
			return err
		}
		ag.Labels = v1alpha1.SpanLabels(buckets)
		return k8s.Update(ctx, ag)
	})).To(Succeed())
}

var _ = Describe("Agent", Ordered, func() {
	var rs *v1alpha1.NodeRuleSet
	var goodTable string

	BeforeAll(func() {
		Expect(k8s.Create(ctx, group("ag-clients", "198.18.5.1"))).To(Succeed())
		rs = &v1alpha1.NodeRuleSet{
			ObjectMeta: metav1.ObjectMeta{Name: nodeName},
			Spec: v1alpha1.NodeRuleSetSpec{
				Pods: []v1alpha1.LocalPod{{
					Namespace: "shop", Name: "web", IPs: []string{"198.18.0.10", "fd00::10"},
					Ingress: &v1alpha1.Isolation{
						Mode: v1alpha1.IsolationEnforce, Policies: []string{"NetworkPolicy/shop/web"}, Rules: []string{"r-web"},
					},
				}},
				Rules: []v1alpha1.Rule{{
					ID: "r-web", Direction: v1alpha1.DirectionIngress,
					Peers:    []v1alpha1.Peer{{AddressGroup: "ag-clients"}},
					Ports:    []v1alpha1.Port{{Protocol: v1alpha1.ProtocolTCP, Port: 80}},
					Policies: []string{"NetworkPolicy/shop/web"},
				}},
				AddressGroups: []string{"ag-clients"},
			},
		}
		Expect(k8s.Create(ctx, rs)).To(Succeed())
	})

	// allowGroup adds a group to the peers of the first rule and waits until
	// the agent has programmed that rule set fully, with the group's
	// address in the kernel.
	allowGroup := func(name, addr string) {
		GinkgoHelper()
		Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if err := k8s.Get(ctx, client.ObjectKey{Name: nodeName}, rs); err != nil {
				return err
			}
			rs.Spec.Rules[0].Peers = append(rs.Spec.Rules[0].Peers, v1alpha1.Peer{AddressGroup: name})
			rs.Spec.AddressGroups = append(rs.Spec.AddressGroups, name)
			return k8s.Update(ctx, rs)
		})).To(Succeed())
		Eventually(func(g Gomega) {
			c := programmed(g, nodeName)
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
			g.Expect(c.Reason).To(Equal(v1alpha1.ReasonProgrammed))
			g.Expect(c.ObservedGeneration).To(Equal(rs.Generation))
			g.Expect(kernelTable(g)).To(ContainSubstring(addr))
		}).Should(Succeed())
		goodTable = kernelTable(Default)
	}

	It("programs its rule set and reports Programmed with the generation and counts", func() {
		Eventually(func(g Gomega) {
			c := programmed(g, nodeName)
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
			g.Expect(c.ObservedGeneration).To(Equal(int64(1)))
			got := &v1alpha1.NodeRuleSet{}
			g.Expect(k8s.Get(ctx, client.ObjectKey{Name: nodeName}, got)).To(Succeed())
			g.Expect(got.Status.ObservedGeneration).To(Equal(int64(1)))
			g.Expect(got.Status.Pods).To(BeEquivalentTo(1))
			g.Expect(got.Status.Rules).To(BeEquivalentTo(1))
			g.Expect(got.Status.Chains).To(BeNumerically(">", 0))
			g.Expect(got.Status.SetElements).To(BeNumerically(">", 0))
			g.Expect(got.Status.LastProgrammedTime).NotTo(BeNil())
		}).Should(Succeed())
		Eventually(func(g Gomega) {
			t := kernelTable(g)
			g.Expect(t).To(ContainSubstring("198.18.0.10"))
			g.Expect(t).To(ContainSubstring("fd00::10"))
			g.Expect(t).To(ContainSubstring("198.18.5.1"))
			g.Expect(t).To(ContainSubstring("chain in-shop.web {"))
			goodTable = t
		}).Should(Succeed())
	})

	It("follows changes of the address groups it references", func() {
		ag := &v1alpha1.AddressGroup{}
		Expect(k8s.Get(ctx, client.ObjectKey{Name: "ag-clients"}, ag)).To(Succeed())
		ag.Spec.Addresses = []string{"198.18.5.1", "198.18.5.2"}
		Expect(k8s.Update(ctx, ag)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(kernelTable(g)).To(ContainSubstring("198.18.5.2"))
		}).Should(Succeed())
		goodTable = kernelTable(Default)
	})

	It("programs all but the rules of a missing group, and names their policy", func() {
		// A second policy isolates a second pod with a rule whose group does
		// not exist (yet); the first pod changes address.
		const other = "NetworkPolicy/shop/api"
		Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if err := k8s.Get(ctx, client.ObjectKey{Name: nodeName}, rs); err != nil {
				return err
			}
			rs.Spec.Rules = append(rs.Spec.Rules[:1], v1alpha1.Rule{ID: "r-api", Direction: v1alpha1.DirectionIngress,
				Peers: []v1alpha1.Peer{{AddressGroup: "ag-missing"}}, Policies: []string{other}})
			rs.Spec.AddressGroups = []string{"ag-clients", "ag-missing"}
			rs.Spec.Pods = append(rs.Spec.Pods[:1], v1alpha1.LocalPod{Namespace: "shop", Name: "api", IPs: []string{"198.18.0.12"},
				Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Policies: []string{other}, Rules: []string{"r-api"}}})
			rs.Spec.Pods[0].IPs = []string{"198.18.0.11"}
			return k8s.Update(ctx, rs)
		})).To(Succeed())
		Eventually(func(g Gomega) {
			c := programmed(g, nodeName)
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
			g.Expect(c.Reason).To(Equal(v1alpha1.ReasonAddressGroupMissing))
			g.Expect(c.Message).To(And(ContainSubstring("ag-missing"), ContainSubstring(other)))
			g.Expect(c.ObservedGeneration).To(Equal(rs.Generation))
			got := &v1alpha1.NodeRuleSet{}
			g.Expect(k8s.Get(ctx, client.ObjectKey{Name: nodeName}, got)).To(Succeed())
			g.Expect(got.Status.LeftOut).To(Equal(&v1alpha1.LeftOut{Reason: v1alpha1.ReasonAddressGroupMissing,
				AddressGroups: []string{"ag-missing"}, Policies: []string{other}}))
			g.Expect(v1alpha1.NodeProgressOf(got, got.Generation, "NetworkPolicy/shop/web").State).To(Equal(v1alpha1.NodeProgrammed))
			g.Expect(v1alpha1.NodeProgressOf(got, got.Generation, other).State).To(Equal(v1alpha1.NodeFailed))
			t := kernelTable(g)
			// The rest is programmed: web's new address, and api isolated
			// (its chain) without its rule.
			g.Expect(t).To(ContainSubstring("198.18.0.11"))
			g.Expect(t).To(ContainSubstring("198.18.0.12"))
			g.Expect(t).To(ContainSubstring("chain in-shop.api {"))
			g.Expect(t).NotTo(ContainSubstring("ag-missing"))
		}).Should(Succeed())

		By("programming all of it once the group exists")
		Expect(k8s.Create(ctx, group("ag-missing", "198.18.6.1"))).To(Succeed())
		Eventually(func(g Gomega) {
			c := programmed(g, nodeName)
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
			g.Expect(c.Reason).To(Equal(v1alpha1.ReasonProgrammed))
			g.Expect(c.ObservedGeneration).To(Equal(rs.Generation))
			got := &v1alpha1.NodeRuleSet{}
			g.Expect(k8s.Get(ctx, client.ObjectKey{Name: nodeName}, got)).To(Succeed())
			g.Expect(got.Status.LeftOut).To(BeNil())
			t := kernelTable(g)
			g.Expect(t).To(ContainSubstring("198.18.6.1"))
			g.Expect(t).NotTo(ContainSubstring("198.18.0.10 "))
		}).Should(Succeed())
		goodTable = kernelTable(Default)
	})

	It("programs a group that existed before the node referenced it", func() {
		// Cached while unreferenced, so the cache holds no members for it.
		Expect(k8s.Create(ctx, group("ag-late", "198.18.7.1"))).To(Succeed())
		Eventually(func(g Gomega) {
			cached := &v1alpha1.AddressGroup{}
			g.Expect(agentCache.Get(ctx, client.ObjectKey{Name: "ag-late"}, cached)).To(Succeed())
			g.Expect(cached.Annotations).To(HaveKey(agent.StrippedAnnotation))
			g.Expect(cached.Spec.Addresses).To(BeEmpty())
		}).Should(Succeed())
		allowGroup("ag-late", "198.18.7.1")
	})

	It("is sent only the groups whose span holds its node's bucket", func() {
		mine := v1alpha1.SpanBucket(nodeName)
		elsewhere := (mine + 1) % v1alpha1.SpanBuckets
		Expect(elsewhere).NotTo(BeElementOf(v1alpha1.SpanBucket("node-revoke"), v1alpha1.SpanBucket("node-tamper")))
		ag := group("ag-elsewhere", "198.18.8.1")
		ag.Labels = v1alpha1.SpanLabels([]int{elsewhere})
		Expect(k8s.Create(ctx, ag)).To(Succeed())
		inCache := func(g Gomega) bool {
			err := agentCache.Get(ctx, client.ObjectKey{Name: "ag-elsewhere"}, &v1alpha1.AddressGroup{})
			g.Expect(client.IgnoreNotFound(err)).To(Succeed())
			return err == nil
		}
		Consistently(inCache, 2*time.Second, "100ms").Should(BeFalse())
		By("receiving it once its span reaches the node's bucket")
		setSpan("ag-elsewhere", elsewhere, mine)
		Eventually(inCache).Should(BeTrue())
		By("losing it once the span no longer does")
		setSpan("ag-elsewhere", elsewhere)
		Eventually(inCache).Should(BeFalse())
	})

	It("programs a referenced group its span does not reach yet, read from the API", func() {
		ag := group("ag-unlabelled", "198.18.9.1")
		ag.Labels = nil
		Expect(k8s.Create(ctx, ag)).To(Succeed())
		allowGroup("ag-unlabelled", "198.18.9.1")
	})

	It("restores the table after someone deletes it", func() {
		other, err := nftnl.NewProgrammerInNetNS(int(nodeNS))
		Expect(err).NotTo(HaveOccurred())
		defer other.Close()
		// The agent may have put it back by the time the table is read:
		// the tamper watch repairs within milliseconds.
		Expect(other.Delete()).To(Succeed())
		// The same rules, sets and elements; the kernel lists the chains of
		// a table written at once in another order than of one grown pod by
		// pod.
		Eventually(func(g Gomega) {
			g.Expect(sortedLines(kernelTable(g))).To(Equal(sortedLines(goodTable)))
		}, 5*resyncPeriod).Should(Succeed())
	})

	It("never writes another node's rule set", func() {
		otherRS := &v1alpha1.NodeRuleSet{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}}
		Expect(k8s.Create(ctx, otherRS)).To(Succeed())
		Consistently(func(g Gomega) {
			got := &v1alpha1.NodeRuleSet{}
			g.Expect(k8s.Get(ctx, client.ObjectKey{Name: "node-b"}, got)).To(Succeed())
			g.Expect(got.Status.Conditions).To(BeEmpty())
			g.Expect(got.Status.ObservedGeneration).To(BeZero())
		}, 3*resyncPeriod, "250ms").Should(Succeed())
	})
})
