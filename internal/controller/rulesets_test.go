package controller_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	authv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/compiler"
	"github.com/nftguard/nftguard/internal/dropsapi/wire"
)

var _ = Describe("Rule sets", func() {
	It("gives every node a rule set owned by the node, and deletes it with the node", func() {
		node := makeNode(name("empty"))
		Eventually(func(g Gomega) {
			rs := ruleSet(g, node.Name)
			g.Expect(rs.Spec.Pods).To(BeEmpty())
			g.Expect(rs.OwnerReferences).To(ContainElement(HaveField("UID", node.UID)))
		}).Should(Succeed())

		Expect(admin.Delete(ctx, node)).To(Succeed())
		Eventually(func() bool {
			return isNotFound(admin.Get(ctx, client.ObjectKey{Name: node.Name}, &v1alpha1.NodeRuleSet{}))
		}).Should(BeTrue())
	})

	It("follows pods being created, relabelled and deleted", func() {
		node := makeNode(name("n"))
		ns := makeNamespace(name("ns"), nil)
		Expect(admin.Create(ctx, ingressFrom(ns.Name, "web-from-api", map[string]string{"app": "web"}, map[string]string{"app": "api"}))).To(Succeed())
		web := makePod(ns.Name, "web", node.Name, map[string]string{"app": "web"})
		api := makePod(ns.Name, "api", node.Name, map[string]string{"app": "api"})

		var group string
		Eventually(func(g Gomega) {
			rs := ruleSet(g, node.Name)
			w := localPod(rs, ns.Name, "web")
			g.Expect(w).NotTo(BeNil())
			g.Expect(w.IPs).To(Equal([]string{web.Status.PodIP}))
			g.Expect(w.Ingress).NotTo(BeNil())
			g.Expect(w.Ingress.Policies).To(Equal([]string{"NetworkPolicy/" + ns.Name + "/web-from-api"}))
			g.Expect(w.Ingress.Rules).To(HaveLen(1))
			g.Expect(w.Egress).To(BeNil())
			a := localPod(rs, ns.Name, "api")
			g.Expect(a).NotTo(BeNil())
			g.Expect(a.Ingress).To(BeNil())
			r := rule(rs, w.Ingress.Rules[0])
			g.Expect(r).NotTo(BeNil())
			g.Expect(r.Peers).To(HaveLen(1))
			group = r.Peers[0].AddressGroup
			g.Expect(rs.Spec.AddressGroups).To(ContainElement(group))
			g.Expect(addressGroup(g, group).Spec.Addresses).To(Equal([]string{api.Status.PodIP}))
		}).Should(Succeed())

		By("relabelling the api pod out of the peer selector")
		patch := client.MergeFrom(api.DeepCopy())
		api.Labels = map[string]string{"app": "other"}
		Expect(admin.Patch(ctx, api, patch)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(addressGroup(g, group).Spec.Addresses).To(BeEmpty())
		}).Should(Succeed())

		By("relabelling the web pod out of the policy")
		patch = client.MergeFrom(web.DeepCopy())
		web.Labels = map[string]string{"app": "web2"}
		Expect(admin.Patch(ctx, web, patch)).To(Succeed())
		Eventually(func(g Gomega) {
			w := localPod(ruleSet(g, node.Name), ns.Name, "web")
			g.Expect(w).NotTo(BeNil())
			g.Expect(w.Ingress).To(BeNil())
		}).Should(Succeed())
		By("deleting the group nothing references any more")
		Eventually(func() bool {
			return isNotFound(admin.Get(ctx, client.ObjectKey{Name: group}, &v1alpha1.AddressGroup{}))
		}).Should(BeTrue())

		By("deleting the pod")
		Expect(admin.Delete(ctx, web, client.GracePeriodSeconds(0))).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(localPod(ruleSet(g, node.Name), ns.Name, "web")).To(BeNil())
		}).Should(Succeed())
	})

	It("follows namespace labels in namespace selectors", func() {
		node := makeNode(name("n"))
		target := makeNamespace(name("target"), nil)
		client1 := makeNamespace(name("client"), map[string]string{"team": "a"})
		Expect(admin.Create(ctx, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: target.Name, Name: "from-team-a"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}}},
				}},
			},
		})).To(Succeed())
		makePod(target.Name, "db", node.Name, nil)
		c := makePod(client1.Name, "c", node.Name, nil)

		var group string
		Eventually(func(g Gomega) {
			rs := ruleSet(g, node.Name)
			db := localPod(rs, target.Name, "db")
			g.Expect(db).NotTo(BeNil())
			g.Expect(db.Ingress).NotTo(BeNil())
			g.Expect(db.Ingress.Rules).To(HaveLen(1))
			group = rule(rs, db.Ingress.Rules[0]).Peers[0].AddressGroup
			g.Expect(addressGroup(g, group).Spec.Addresses).To(ContainElement(c.Status.PodIP))
		}).Should(Succeed())

		patch := client.MergeFrom(client1.DeepCopy())
		client1.Labels = map[string]string{"team": "b"}
		Expect(admin.Patch(ctx, client1, patch)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(addressGroup(g, group).Spec.Addresses).NotTo(ContainElement(c.Status.PodIP))
		}).Should(Succeed())
	})

	It("follows NetworkPolicy create, update and delete", func() {
		node := makeNode(name("n"))
		ns := makeNamespace(name("ns"), nil)
		makePod(ns.Name, "p", node.Name, map[string]string{"app": "p"}, corev1.ContainerPort{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP})
		np := denyAllIngress(ns.Name, "deny")
		Expect(admin.Create(ctx, np)).To(Succeed())
		Eventually(func(g Gomega) {
			p := localPod(ruleSet(g, node.Name), ns.Name, "p")
			g.Expect(p).NotTo(BeNil())
			g.Expect(p.Ingress).NotTo(BeNil())
			g.Expect(p.Ingress.Rules).To(BeEmpty())
		}).Should(Succeed())

		By("opening the named port")
		update(np, func() {
			np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				Ports: []networkingv1.NetworkPolicyPort{{Port: ptr.To(intstr.FromString("http"))}},
			}}
		})
		Eventually(func(g Gomega) {
			rs := ruleSet(g, node.Name)
			p := localPod(rs, ns.Name, "p")
			g.Expect(p.Ingress.Rules).To(HaveLen(1))
			r := rule(rs, p.Ingress.Rules[0])
			g.Expect(r.Peers).To(BeEmpty())
			g.Expect(r.Ports).To(Equal([]v1alpha1.Port{{Protocol: v1alpha1.ProtocolTCP, Port: 8080}}))
			g.Expect(r.Policies).To(Equal([]string{"NetworkPolicy/" + ns.Name + "/deny"}))
		}).Should(Succeed())

		Expect(admin.Delete(ctx, np)).To(Succeed())
		Eventually(func(g Gomega) {
			p := localPod(ruleSet(g, node.Name), ns.Name, "p")
			g.Expect(p.Ingress).To(BeNil())
			g.Expect(ruleSet(g, node.Name).Spec.Rules).To(BeEmpty())
		}).Should(Succeed())
	})

	It("follows DefaultDeny create, update and delete", func() {
		node := makeNode(name("n"))
		ns := makeNamespace(name("app"), map[string]string{"tier": "app"})
		makePod(ns.Name, "p", node.Name, nil)
		dd := &v1alpha1.DefaultDeny{
			ObjectMeta: metav1.ObjectMeta{Name: name("baseline")},
			Spec: v1alpha1.DefaultDenySpec{
				NamespaceSelector: v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"kubernetes.io/metadata.name": v1alpha1.LabelValue(ns.Name)}},
				PolicyTypes:       []v1alpha1.PolicyType{v1alpha1.PolicyTypeIngress, v1alpha1.PolicyTypeEgress},
				AllowedEgress: []v1alpha1.EgressRule{{
					Ports: []v1alpha1.NetworkPolicyPort{{Protocol: ptr.To(v1alpha1.ProtocolUDP), Port: ptr.To(intstr.FromInt32(53))}},
				}},
			},
		}
		Expect(admin.Create(ctx, dd)).To(Succeed())
		key := "DefaultDeny/" + dd.Name
		Eventually(func(g Gomega) {
			rs := ruleSet(g, node.Name)
			p := localPod(rs, ns.Name, "p")
			g.Expect(p).NotTo(BeNil())
			g.Expect(p.Ingress).To(Equal(&v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Policies: []string{key}}))
			g.Expect(p.Egress).NotTo(BeNil())
			g.Expect(p.Egress.Policies).To(Equal([]string{key}))
			g.Expect(p.Egress.Rules).To(HaveLen(1))
			g.Expect(rule(rs, p.Egress.Rules[0]).Ports).To(Equal([]v1alpha1.Port{{Protocol: v1alpha1.ProtocolUDP, Port: 53}}))
		}).Should(Succeed())

		By("switching it to Audit")
		update(dd, func() { dd.Spec.Mode = v1alpha1.ModeAudit })
		Eventually(func(g Gomega) {
			p := localPod(ruleSet(g, node.Name), ns.Name, "p")
			g.Expect(p.Ingress).NotTo(BeNil())
			g.Expect(p.Ingress.Mode).To(Equal(v1alpha1.IsolationAudit))
			g.Expect(p.Egress.Mode).To(Equal(v1alpha1.IsolationAudit))
		}).Should(Succeed())

		Expect(admin.Delete(ctx, dd)).To(Succeed())
		Eventually(func(g Gomega) {
			p := localPod(ruleSet(g, node.Name), ns.Name, "p")
			g.Expect(p.Ingress).To(BeNil())
			g.Expect(p.Egress).To(BeNil())
		}).Should(Succeed())
	})

	It("repairs hand edits and hand deletions of its outputs", func() {
		node := makeNode(name("n"))
		ns := makeNamespace(name("ns"), nil)
		Expect(admin.Create(ctx, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "from-a"},
			Spec: networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}}}},
				}},
			},
		})).To(Succeed())
		a := makePod(ns.Name, "a", node.Name, map[string]string{"app": "a"})
		var want v1alpha1.NodeRuleSetSpec
		var group string
		Eventually(func(g Gomega) {
			rs := ruleSet(g, node.Name)
			g.Expect(rs.Spec.AddressGroups).To(HaveLen(1))
			group = rs.Spec.AddressGroups[0]
			g.Expect(addressGroup(g, group).Spec.Addresses).To(ConsistOf(a.Status.PodIP))
			// The pod is listed from its creation: wait for its address.
			g.Expect(localPod(rs, ns.Name, "a").IPs).To(Equal([]string{a.Status.PodIP}))
			want = rs.Spec
		}).Should(Succeed())

		By("editing the rule set by hand")
		rs := &v1alpha1.NodeRuleSet{ObjectMeta: metav1.ObjectMeta{Name: node.Name}}
		update(rs, func() { rs.Spec.Pods = nil })
		Eventually(func(g Gomega) {
			g.Expect(ruleSet(g, node.Name).Spec).To(Equal(want))
		}).Should(Succeed())

		By("editing the address group by hand")
		ag := &v1alpha1.AddressGroup{ObjectMeta: metav1.ObjectMeta{Name: group}}
		update(ag, func() { ag.Spec.Addresses = []string{"198.19.255.254"} })
		Eventually(func(g Gomega) {
			g.Expect(addressGroup(g, group).Spec.Addresses).To(ConsistOf(a.Status.PodIP))
		}).Should(Succeed())

		By("deleting both by hand")
		Expect(admin.Delete(ctx, ag)).To(Succeed())
		Expect(admin.Delete(ctx, &v1alpha1.NodeRuleSet{ObjectMeta: metav1.ObjectMeta{Name: node.Name}})).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(ruleSet(g, node.Name).Spec).To(Equal(want))
			g.Expect(addressGroup(g, group).Spec.Addresses).To(ConsistOf(a.Status.PodIP))
		}).Should(Succeed())
	})

	It("labels each address group with the span buckets of the nodes that reference it", func() {
		// Two nodes of two buckets.
		n1 := makeNode(name("n"))
		second := name("n")
		for v1alpha1.SpanBucket(second) == v1alpha1.SpanBucket(n1.Name) {
			second = name("n")
		}
		n2 := makeNode(second)
		ns := makeNamespace(name("ns"), nil)
		Expect(admin.Create(ctx, ingressFrom(ns.Name, "from-clients", map[string]string{"role": "server"}, map[string]string{"role": "client"}))).To(Succeed())
		makePod(ns.Name, "client", n2.Name, map[string]string{"role": "client"})
		s1 := makePod(ns.Name, "server-1", n1.Name, map[string]string{"role": "server"})
		// The span labels of the one group the node's rule set references.
		span := func(node string) func(g Gomega) map[string]string {
			return func(g Gomega) map[string]string {
				rs := ruleSet(g, node)
				g.Expect(rs.Spec.AddressGroups).To(HaveLen(1))
				out := map[string]string{}
				for k, v := range addressGroup(g, rs.Spec.AddressGroups[0]).Labels {
					if v1alpha1.IsSpanLabel(k) {
						out[k] = v
					}
				}
				return out
			}
		}
		By("reaching the bucket of the one node with a selected pod")
		Eventually(span(n1.Name)).Should(Equal(v1alpha1.SpanLabels([]int{v1alpha1.SpanBucket(n1.Name)})))
		By("reaching both buckets once the other node has a selected pod")
		makePod(ns.Name, "server-2", n2.Name, map[string]string{"role": "server"})
		Eventually(span(n1.Name)).Should(Equal(v1alpha1.SpanLabels([]int{v1alpha1.SpanBucket(n1.Name), v1alpha1.SpanBucket(n2.Name)})))
		By("leaving the first node's bucket once its pod is gone")
		Expect(admin.Delete(ctx, s1, client.GracePeriodSeconds(0))).To(Succeed())
		Eventually(span(n2.Name)).Should(Equal(v1alpha1.SpanLabels([]int{v1alpha1.SpanBucket(n2.Name)})))
	})

	It("rewrites only the pod's own node and its address groups when one pod changes", func() {
		nodes := []*corev1.Node{makeNode(name("n")), makeNode(name("n")), makeNode(name("n"))}
		ns := makeNamespace(name("ns"), nil)
		Expect(admin.Create(ctx, ingressFrom(ns.Name, "from-clients", nil, map[string]string{"role": "client"}))).To(Succeed())
		for i, n := range nodes {
			makePod(ns.Name, "server-"+string(rune('a'+i)), n.Name, map[string]string{"role": "server"})
		}
		var group string
		versions := map[string]string{}
		Eventually(func(g Gomega) {
			for _, n := range nodes {
				rs := ruleSet(g, n.Name)
				g.Expect(rs.Spec.Pods).To(HaveLen(1))
				g.Expect(rs.Spec.AddressGroups).To(HaveLen(1))
				group = rs.Spec.AddressGroups[0]
				versions[n.Name] = rs.ResourceVersion
			}
		}).Should(Succeed())
		// Let any in-flight writes settle before taking the baseline.
		Consistently(func(g Gomega) {
			for _, n := range nodes {
				g.Expect(ruleSet(g, n.Name).ResourceVersion).To(Equal(versions[n.Name]))
			}
		}, "1s", "200ms").Should(Succeed())

		// Count writes to these three rule sets only: the controller's write
		// counter also sees other specs' nodes settling.
		writes := watchRuleSetWrites(nodes, versions)
		c := makePod(ns.Name, "client", nodes[0].Name, map[string]string{"role": "client"})
		Eventually(func(g Gomega) {
			g.Expect(addressGroup(g, group).Spec.Addresses).To(ConsistOf(c.Status.PodIP))
			g.Expect(localPod(ruleSet(g, nodes[0].Name), ns.Name, "client")).NotTo(BeNil())
		}).Should(Succeed())
		Consistently(func(g Gomega) {
			for _, n := range nodes[1:] {
				g.Expect(ruleSet(g, n.Name).ResourceVersion).To(Equal(versions[n.Name]), "rule set of %s was rewritten", n.Name)
			}
		}, "1s", "200ms").Should(Succeed())
		// Creating the pod (then its IP) changes only its own node's rule set.
		Expect(writes()).To(And(HaveKeyWithValue(nodes[0].Name, BeNumerically("<=", 2)), HaveLen(1)))
	})

	It("refuses to write a rule set above the size limit, and says so", func() {
		node := makeNode(name("big"))
		ns := makeNamespace(name("crowd"), map[string]string{"crowd": "yes"})
		makePod(ns.Name, "first", node.Name, nil)
		Eventually(func(g Gomega) {
			g.Expect(ruleSet(g, node.Name).Spec.Pods).To(HaveLen(1))
		}).Should(Succeed())
		dd := &v1alpha1.DefaultDeny{
			ObjectMeta: metav1.ObjectMeta{Name: name("crowd")},
			Spec: v1alpha1.DefaultDenySpec{
				NamespaceSelector: v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"crowd": "yes"}},
				PolicyTypes:       []v1alpha1.PolicyType{v1alpha1.PolicyTypeIngress},
			},
		}
		Expect(admin.Create(ctx, dd)).To(Succeed())
		// Enough pods, each isolated by a long-named policy, to pass the test limit.
		for i := 0; i < 40; i++ {
			np := denyAllIngress(ns.Name, "a-rather-long-policy-name-to-fill-the-rule-set-"+strings.Repeat("x", 100)+"-"+string(rune('a'+i%26))+string(rune('a'+i/26)))
			Expect(admin.Create(ctx, np)).To(Succeed())
		}
		for i := 0; i < 10; i++ {
			makePod(ns.Name, name("p"), node.Name, nil)
		}
		Eventually(func(g Gomega) {
			c := enforced(g, dd)
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal("RuleSetTooLarge"))
			g.Expect(c.Message).To(ContainSubstring(node.Name))
		}).Should(Succeed())
		By("keeping the last rule set that fit, saying in it why")
		Eventually(func(g Gomega) {
			rs := ruleSet(g, node.Name)
			g.Expect(len(rs.Spec.Pods)).To(BeNumerically("<", 11))
			g.Expect(rs.Spec.Unwritten).NotTo(BeNil())
			g.Expect(rs.Spec.Unwritten.Reason).To(Equal(v1alpha1.ReasonRuleSetTooLarge))
			g.Expect(rs.Spec.Unwritten.Limit).To(BeEquivalentTo(testMaxObjectBytes))
			g.Expect(rs.Spec.Unwritten.Bytes).To(BeNumerically(">", testMaxObjectBytes))
		}).Should(Succeed())
		By("recording a warning event on the node")
		Eventually(func(g Gomega) {
			var evs eventsv1.EventList
			g.Expect(admin.List(ctx, &evs)).To(Succeed())
			found := false
			for _, e := range evs.Items {
				if e.Regarding.Kind == "Node" && e.Regarding.Name == node.Name && e.Reason == "RuleSetTooLarge" {
					found = e.Type == corev1.EventTypeWarning
				}
			}
			g.Expect(found).To(BeTrue())
		}).Should(Succeed())
		By("writing it again once it fits")
		Expect(admin.DeleteAllOf(ctx, &networkingv1.NetworkPolicy{}, client.InNamespace(ns.Name))).To(Succeed())
		Eventually(func(g Gomega) {
			rs := ruleSet(g, node.Name)
			g.Expect(rs.Spec.Pods).To(HaveLen(11))
			g.Expect(rs.Spec.Unwritten).To(BeNil())
		}, 20*time.Second).Should(Succeed())
	})
})

var _ = Describe("Concurrent agent status writes", func() {
	It("never make the controller's spec writes fail", func() {
		node := makeNode(name("busy"))
		ns := makeNamespace(name("busy"), nil)
		Eventually(func(g Gomega) { ruleSet(g, node.Name) }).Should(Succeed())
		// The node's agent reports status as often as it can.
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer GinkgoRecover()
			defer close(done)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				rs := &v1alpha1.NodeRuleSet{}
				if err := admin.Get(ctx, client.ObjectKey{Name: node.Name}, rs); err != nil {
					continue
				}
				rs.Status.Drops = int64(i)
				_ = admin.Status().Update(ctx, rs)
			}
		}()
		failuresBefore := writeFailures("NodeRuleSet")
		for i := 0; i < 15; i++ {
			makePod(ns.Name, name("p"), node.Name, nil)
		}
		Eventually(func(g Gomega) {
			g.Expect(ruleSet(g, node.Name).Spec.Pods).To(HaveLen(15))
		}).Should(Succeed())
		close(stop)
		<-done
		Expect(writeFailures("NodeRuleSet")-failuresBefore).To(BeZero(), "spec writes conflicted with status writes")
	})
})

var _ = Describe("Large address groups", func() {
	It("are written as shards, and a member change rewrites only its shard", func() {
		node := makeNode(name("n"))
		ns := makeNamespace(name("crowd"), nil)
		makePod(ns.Name, "target", node.Name, map[string]string{"app": "target"})
		Expect(admin.Create(ctx, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "from-crowd"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "target"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "crowd"}}}},
				}},
			},
		})).To(Succeed())
		const members = 100
		var crowd []*corev1.Pod
		ips := map[string]bool{}
		for i := range members {
			p := makePod(ns.Name, fmt.Sprintf("crowd-%d", i), node.Name, map[string]string{"app": "crowd"})
			crowd = append(crowd, p)
			ips[p.Status.PodIP] = true
		}

		// shards reads the group objects the rule set references, checking
		// that together they hold exactly want, each within the limits, and
		// that the rule lists every one of them as a peer.
		shards := func(g Gomega, want map[string]bool) map[string]*v1alpha1.AddressGroup {
			rs := ruleSet(g, node.Name)
			g.Expect(rs.Spec.Rules).To(HaveLen(1))
			g.Expect(len(rs.Spec.AddressGroups)).To(BeNumerically(">=", members/testMaxGroupEntries))
			var peers []string
			for _, p := range rs.Spec.Rules[0].Peers {
				peers = append(peers, p.AddressGroup)
			}
			g.Expect(peers).To(ConsistOf(rs.Spec.AddressGroups))
			out := map[string]*v1alpha1.AddressGroup{}
			got := map[string]bool{}
			for _, n := range rs.Spec.AddressGroups {
				g.Expect(compiler.LogicalGroup(n)).To(Equal(compiler.LogicalGroup(rs.Spec.AddressGroups[0])))
				ag := addressGroup(g, n)
				g.Expect(len(ag.Spec.Addresses)).To(BeNumerically("<=", testMaxGroupEntries), "shard %s", n)
				b, err := json.Marshal(ag.Spec)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(len(b)).To(BeNumerically("<=", testMaxObjectBytes))
				g.Expect(ag.Spec.PodSelector).To(Equal(&metav1.LabelSelector{MatchLabels: map[string]string{"app": "crowd"}}))
				g.Expect(ag.Spec.Namespace).To(Equal(ns.Name))
				for _, a := range ag.Spec.Addresses {
					got[a] = true
				}
				out[n] = ag
			}
			g.Expect(got).To(Equal(want))
			return out
		}
		var before map[string]*v1alpha1.AddressGroup
		// The baseline waits for the shards' status too: it is written in
		// the pass after their creation reaches the cache.
		Eventually(func(g Gomega) {
			before = shards(g, ips)
			for n, ag := range before {
				g.Expect(ag.Status.Size).To(Equal(int32(len(ag.Spec.Addresses))), "status of shard %s", n)
				g.Expect(ag.Status.Nodes).To(Equal(int32(1)), "status of shard %s", n)
			}
		}).Should(Succeed())
		// Let any in-flight writes settle before taking the baseline.
		Consistently(func(g Gomega) {
			now := shards(g, ips)
			g.Expect(now).To(HaveLen(len(before)))
			for n, ag := range now {
				g.Expect(ag.ResourceVersion).To(Equal(before[n].ResourceVersion))
			}
		}, "1s", "200ms").Should(Succeed())

		gone := crowd[members/2]
		var home string
		for n, ag := range before {
			if slices.Contains(ag.Spec.Addresses, gone.Status.PodIP) {
				home = n
			}
		}
		Expect(admin.Delete(ctx, gone, client.GracePeriodSeconds(0))).To(Succeed())
		delete(ips, gone.Status.PodIP)
		Eventually(func(g Gomega) { shards(g, ips) }).Should(Succeed())
		Consistently(func(g Gomega) {
			now := shards(g, ips)
			g.Expect(slices.Sorted(maps.Keys(now))).To(Equal(slices.Sorted(maps.Keys(before))), "the group's shards changed")
			for n, ag := range now {
				if n == home {
					g.Expect(ag.ResourceVersion).NotTo(Equal(before[n].ResourceVersion))
					continue
				}
				g.Expect(ag.ResourceVersion).To(Equal(before[n].ResourceVersion), "shard %s was rewritten", n)
			}
		}, "1s", "200ms").Should(Succeed())
	})
})

var _ = Describe("Oversized address groups", func() {
	It("are not written, and the nodes and policies that need them say so", func() {
		node := makeNode(name("n"))
		ns := makeNamespace(name("huge"), nil)
		makePod(ns.Name, "target", node.Name, map[string]string{"app": "target"})
		// A selector this long makes the group's spec pass the test's size limit.
		values := make([]string, 900)
		for i := range values {
			values[i] = fmt.Sprintf("%s-%04d", strings.Repeat("v", 50), i)
		}
		np := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "from-many"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "target"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{
						MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn, Values: values}},
					}}},
				}},
			},
		}
		Expect(admin.Create(ctx, np)).To(Succeed())
		var group string
		Eventually(func(g Gomega) {
			rs := ruleSet(g, node.Name)
			g.Expect(rs.Spec.AddressGroups).To(HaveLen(1))
			group = rs.Spec.AddressGroups[0]
		}).Should(Succeed())
		Expect(isNotFound(admin.Get(ctx, client.ObjectKey{Name: group}, &v1alpha1.AddressGroup{}))).To(BeTrue())
		Eventually(func(g Gomega) {
			u := ruleSet(g, node.Name).Spec.Unwritten
			g.Expect(u).NotTo(BeNil())
			g.Expect(u.Reason).To(Equal(v1alpha1.ReasonAddressGroupTooLarge))
			g.Expect(u.AddressGroups).To(Equal([]string{group}))
		}).Should(Succeed())
		Eventually(func(g Gomega) {
			var evs eventsv1.EventList
			g.Expect(admin.List(ctx, &evs)).To(Succeed())
			g.Expect(evs.Items).To(ContainElement(And(
				HaveField("Reason", "AddressGroupTooLarge"),
				HaveField("Regarding.Name", node.Name),
				HaveField("Note", ContainSubstring(group)))))
		}).Should(Succeed())
		By("the agent reporting the group missing, the policy reports why it is not enforced")
		Eventually(func(g Gomega) { reportProgrammed(g, node.Name, false, "address groups ["+group+"] do not exist") }).Should(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(policyEvents(g, np)).To(ContainElement(And(
				HaveField("Reason", "RuleSetTooLarge"), HaveField("Type", corev1.EventTypeWarning))))
		}).Should(Succeed())
	})
})

var _ = Describe("An oversized tenant", func() {
	It("loses its own policy's rules on the node, not its neighbours': a policy of 20,000 ports", func() {
		node := makeNode(name("n"))
		big, small := makeNamespace(name("big"), nil), makeNamespace(name("small"), nil)
		makePod(big.Name, "target", node.Name, map[string]string{"app": "target"})
		makePod(small.Name, "web", node.Name, map[string]string{"app": "web"})
		makePod(small.Name, "client", node.Name, map[string]string{"role": "client"})
		var ports []networkingv1.NetworkPolicyPort
		for i := range 20000 {
			ports = append(ports, networkingv1.NetworkPolicyPort{Port: ptr.To(intstr.FromInt32(int32(1 + 3*i)))})
		}
		many := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: big.Name, Name: "many"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "target"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: ports, From: []networkingv1.NetworkPolicyPeer{{
					PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}}}}},
			},
		}
		few := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: small.Name, Name: "few"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
					PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}}}}},
			},
		}
		Expect(admin.Create(ctx, few)).To(Succeed())
		Expect(admin.Create(ctx, many)).To(Succeed())
		manyKey, fewKey := v1alpha1.NetworkPolicyKey(big.Name, "many"), v1alpha1.NetworkPolicyKey(small.Name, "few")
		Eventually(func(g Gomega) {
			rs := ruleSet(g, node.Name)
			u := rs.Spec.Unwritten
			g.Expect(u).NotTo(BeNil())
			g.Expect(u.Reason).To(Equal(v1alpha1.ReasonRuleSetTooLarge))
			g.Expect(u.Policies).To(Equal([]string{manyKey}))
			g.Expect(u.Bytes).To(BeNumerically(">", testMaxObjectBytes))
			b, err := json.Marshal(rs.Spec)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(len(b)).To(BeNumerically("<=", testMaxObjectBytes))
			rules := map[string]v1alpha1.Rule{}
			for _, r := range rs.Spec.Rules {
				rules[r.ID] = r
				g.Expect(r.Policies).NotTo(Equal([]string{manyKey}), "a rule of the oversized policy was written")
			}
			target := localPod(rs, big.Name, "target")
			g.Expect(target).NotTo(BeNil())
			g.Expect(target.Ingress).NotTo(BeNil(), "the oversized policy's pod must stay isolated")
			g.Expect(target.Ingress.Policies).To(Equal([]string{manyKey}))
			g.Expect(target.Ingress.Rules).To(BeEmpty())
			web := localPod(rs, small.Name, "web")
			g.Expect(web).NotTo(BeNil())
			g.Expect(web.Ingress).NotTo(BeNil())
			g.Expect(web.Ingress.Rules).To(HaveLen(1))
			g.Expect(rules).To(HaveKey(web.Ingress.Rules[0]))
			g.Expect(rules[web.Ingress.Rules[0]].Policies).To(Equal([]string{fewKey}))
		}, 30*time.Second).Should(Succeed())
		By("the agent programming it, the neighbour is enforced and the tenant is told why it is not")
		Eventually(func(g Gomega) { reportProgrammed(g, node.Name, true, "") }).Should(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(policyEvents(g, few)).To(ContainElement(And(
				HaveField("Reason", v1alpha1.ReasonEnforced), HaveField("Type", corev1.EventTypeNormal))))
			g.Expect(policyEvents(g, many)).To(ContainElement(And(
				HaveField("Reason", v1alpha1.ReasonRuleSetTooLarge), HaveField("Type", corev1.EventTypeWarning),
				HaveField("Note", And(ContainSubstring(node.Name), ContainSubstring("left out"))))))
		}).Should(Succeed())
		By("writing its rules again once it fits")
		Expect(admin.Delete(ctx, many)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(ruleSet(g, node.Name).Spec.Unwritten).To(BeNil())
		}, 30*time.Second).Should(Succeed())
	})
})

var _ = Describe("A policy of many ipBlocks", func() {
	It("is enforced through a group of its blocks, split into shards, not written into the rule set", func() {
		node := makeNode(name("n"))
		ns := makeNamespace(name("blocks"), nil)
		makePod(ns.Name, "target", node.Name, map[string]string{"app": "target"})
		var peers []networkingv1.NetworkPolicyPeer
		var want []string
		for i := range 100 {
			cidr := fmt.Sprintf("198.19.%d.%d/32", i>>8, i&255)
			want = append(want, cidr)
			peers = append(peers, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr}})
		}
		np := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "blocks"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "target"}},
				Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: peers}},
			},
		}
		Expect(admin.Create(ctx, np)).To(Succeed())
		Eventually(func(g Gomega) {
			rs := ruleSet(g, node.Name)
			g.Expect(rs.Spec.Unwritten).To(BeNil())
			target := localPod(rs, ns.Name, "target")
			g.Expect(target).NotTo(BeNil())
			g.Expect(target.Ingress).NotTo(BeNil())
			g.Expect(target.Ingress.Rules).To(HaveLen(1))
			r := rule(rs, target.Ingress.Rules[0])
			g.Expect(r).NotTo(BeNil())
			// 100 CIDRs in shards of at most testMaxGroupEntries.
			g.Expect(len(r.Peers)).To(BeNumerically(">=", 100/testMaxGroupEntries))
			var got []string
			for _, p := range r.Peers {
				g.Expect(p.IPBlock).To(BeNil(), "an ipBlock was written inline")
				ag := addressGroup(g, p.AddressGroup)
				g.Expect(ag.Spec.FromIPBlocks).To(BeTrue())
				g.Expect(len(ag.Spec.Addresses)).To(BeNumerically("<=", testMaxGroupEntries))
				got = append(got, ag.Spec.Addresses...)
			}
			g.Expect(got).To(ConsistOf(want))
		}, 30*time.Second).Should(Succeed())
		Eventually(func(g Gomega) { reportProgrammed(g, node.Name, true, "") }).Should(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(policyEvents(g, np)).To(ContainElement(And(
				HaveField("Reason", v1alpha1.ReasonEnforced), HaveField("Type", corev1.EventTypeNormal))))
		}).Should(Succeed())
	})
})

var _ = Describe("Status aggregation", func() {
	It("counts a DefaultDeny's drops in its status, from the drops API's counts", func() {
		makeNamespace(name("counted"), map[string]string{"app": "counted"})
		dd := &v1alpha1.DefaultDeny{
			ObjectMeta: metav1.ObjectMeta{Name: name("counted")},
			Spec: v1alpha1.DefaultDenySpec{
				NamespaceSelector: v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"app": "counted"}},
				PolicyTypes:       []v1alpha1.PolicyType{v1alpha1.PolicyTypeIngress},
			},
		}
		Expect(admin.Create(ctx, dd)).To(Succeed())
		key := v1alpha1.DefaultDenyKey(dd.Name)
		line := func(action audit.Action, n uint64, policies ...string) audit.Event {
			return audit.Event{Time: time.Now(), Action: action, Direction: audit.Ingress,
				Dst: audit.Endpoint{Namespace: "counted", Pod: "p"}, Policies: policies, Count: n}
		}
		drops.Push("n1", &wire.PushRequest{Stream: "s", First: 0, Lines: []audit.Event{
			line(audit.ActionDrop, 5, key, "NetworkPolicy/counted/other"),
			line(audit.ActionAudit, 2, key),
			line(audit.ActionDrop, 9, "NetworkPolicy/counted/other"),
		}})
		get := func(g Gomega) *v1alpha1.DropCounts {
			got := &v1alpha1.DefaultDeny{}
			g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(dd), got)).To(Succeed())
			return got.Status.Drops
		}
		Eventually(func(g Gomega) {
			d := get(g)
			g.Expect(d).NotTo(BeNil())
			g.Expect(d.Dropped).To(BeEquivalentTo(5))
			g.Expect(d.Audited).To(BeEquivalentTo(2))
			g.Expect(d.Since.IsZero()).To(BeFalse())
		}).Should(Succeed())
		By("new drops reaching the status without any other change")
		drops.Push("n1", &wire.PushRequest{Stream: "s", First: 3, Lines: []audit.Event{line(audit.ActionDrop, 4, key)}})
		Eventually(func(g Gomega) { g.Expect(get(g).Dropped).To(BeEquivalentTo(9)) }).Should(Succeed())
	})

	It("reports DefaultDeny enforcement from the agents' status and NetworkPolicy events", func() {
		n1, n2 := makeNode(name("n")), makeNode(name("n"))
		ns := makeNamespace(name("shop"), map[string]string{"app": "shop"})
		makePod(ns.Name, "a", n1.Name, nil)
		makePod(ns.Name, "b", n2.Name, nil)
		makePod(ns.Name, "c", n2.Name, nil)
		dd := &v1alpha1.DefaultDeny{
			ObjectMeta: metav1.ObjectMeta{Name: name("shop")},
			Spec: v1alpha1.DefaultDenySpec{
				NamespaceSelector: v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"app": "shop"}},
				PolicyTypes:       []v1alpha1.PolicyType{v1alpha1.PolicyTypeIngress},
			},
		}
		Expect(admin.Create(ctx, dd)).To(Succeed())
		np := denyAllIngress(ns.Name, "deny")
		Expect(admin.Create(ctx, np)).To(Succeed())

		get := func(g Gomega) *v1alpha1.DefaultDeny {
			got := &v1alpha1.DefaultDeny{}
			g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(dd), got)).To(Succeed())
			return got
		}
		Eventually(func(g Gomega) {
			st := get(g).Status
			g.Expect(st.SelectedPods).To(BeEquivalentTo(3))
			g.Expect(st.DesiredNodes).To(BeEquivalentTo(2))
			g.Expect(st.EnforcedNodes).To(BeEquivalentTo(0))
			g.Expect(st.Enforcement).To(Equal("0/2"))
			c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionEnforced)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Reason).To(Equal("Programming"))
		}).Should(Succeed())

		By("the first agent programming its rule set")
		Eventually(func(g Gomega) { reportProgrammed(g, n1.Name, true, "") }).Should(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(get(g).Status.Enforcement).To(Equal("1/2"))
		}).Should(Succeed())

		By("the second agent failing")
		Eventually(func(g Gomega) { reportProgrammed(g, n2.Name, false, "netlink: no buffer space") }).Should(Succeed())
		Eventually(func(g Gomega) {
			c := meta.FindStatusCondition(get(g).Status.Conditions, v1alpha1.ConditionEnforced)
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal("ProgramFailed"))
			g.Expect(c.Message).To(ContainSubstring(n2.Name + ": netlink: no buffer space"))
		}).Should(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(policyEvents(g, np)).To(ContainElement(HaveField("Reason", "ProgramFailed")))
		}).Should(Succeed())

		By("the second agent recovering")
		Eventually(func(g Gomega) { reportProgrammed(g, n2.Name, true, "") }).Should(Succeed())
		Eventually(func(g Gomega) {
			got := get(g)
			g.Expect(got.Status.Enforcement).To(Equal("2/2"))
			g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
			c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionEnforced)
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
			g.Expect(c.Reason).To(Equal("Enforced"))
		}).Should(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(policyEvents(g, np)).To(ContainElement(And(
				HaveField("Reason", "Enforced"), HaveField("Type", corev1.EventTypeNormal))))
		}).Should(Succeed())

		By("a new pod making the rule set stale until its agent catches up")
		makePod(ns.Name, "d", n1.Name, nil)
		Eventually(func(g Gomega) {
			st := get(g).Status
			g.Expect(st.SelectedPods).To(BeEquivalentTo(4))
			g.Expect(st.Enforcement).To(Equal("1/2"))
		}).Should(Succeed())
	})
})

// ruleSetWrites reads the controller's count of NodeRuleSet writes.
// watchRuleSetWrites counts the modifications of the given nodes' rule sets
// after the resource versions seen; the returned function stops the watch and
// returns the count per node that was written at all.
func watchRuleSetWrites(nodes []*corev1.Node, versions map[string]string) func() map[string]int {
	wc, err := client.NewWithWatch(adminCfg, client.Options{Scheme: admin.Scheme()})
	Expect(err).NotTo(HaveOccurred())
	names := map[string]bool{}
	for _, n := range nodes {
		names[n.Name] = true
	}
	w, err := wc.Watch(ctx, &v1alpha1.NodeRuleSetList{}, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: "0"}})
	Expect(err).NotTo(HaveOccurred())
	counts := map[string]int{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			rs, ok := ev.Object.(*v1alpha1.NodeRuleSet)
			if !ok || !names[rs.Name] || rs.ResourceVersion == versions[rs.Name] {
				continue
			}
			counts[rs.Name]++
		}
	}()
	return func() map[string]int {
		w.Stop()
		<-done
		return counts
	}
}

// writeFailures reads the controller's count of failed writes of a kind.
func writeFailures(kind string) float64 {
	return counter("nftguard_controller_write_errors_total", kind)
}

// counter sums a controller counter over the series of one kind.
func counter(metric, wantKind string) float64 {
	families, err := metrics.Registry.Gather()
	Expect(err).NotTo(HaveOccurred())
	total := 0.0
	for _, f := range families {
		if f.GetName() != metric {
			continue
		}
		for _, m := range f.GetMetric() {
			kind := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" {
					kind = l.GetValue()
				}
			}
			if kind == wantKind {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

func policyEvents(g Gomega, np *networkingv1.NetworkPolicy) []eventsv1.Event {
	var evs eventsv1.EventList
	g.Expect(admin.List(ctx, &evs, client.InNamespace(np.Namespace))).To(Succeed())
	var out []eventsv1.Event
	for _, e := range evs.Items {
		if e.Regarding.Kind == "NetworkPolicy" && e.Regarding.Name == np.Name {
			out = append(out, e)
		}
	}
	return out
}

var _ = Describe("Controller permissions", func() {
	// The manager in this suite runs as the controller's ServiceAccount with
	// only the generated ClusterRole, so every spec above exercises it; these
	// check that it grants nothing beyond what the controller needs.
	DescribeTable("denies what the controller must not do",
		func(group, resource, subresource, verb string) {
			Expect(allowed(group, resource, subresource, verb)).To(BeFalse())
		},
		Entry("write agent status", "nftguard.io", "noderulesets", "status", "update"),
		Entry("write DefaultDeny specs", "nftguard.io", "defaultdenies", "", "update"),
		Entry("write NetworkPolicies", "networking.k8s.io", "networkpolicies", "", "update"),
		Entry("write pods", "", "pods", "", "update"),
		Entry("delete nodes", "", "nodes", "", "delete"),
		Entry("read secrets", "", "secrets", "", "get"),
	)
	DescribeTable("allows what the controller needs",
		func(group, resource, subresource, verb string) {
			Expect(allowed(group, resource, subresource, verb)).To(BeTrue())
		},
		Entry("write rule sets", "nftguard.io", "noderulesets", "", "update"),
		Entry("delete address groups", "nftguard.io", "addressgroups", "", "delete"),
		Entry("write DefaultDeny status", "nftguard.io", "defaultdenies", "status", "patch"),
		Entry("record events", "events.k8s.io", "events", "", "create"),
	)
})

func allowed(group, resource, subresource, verb string) bool {
	cs, err := kubernetes.NewForConfig(adminCfg)
	Expect(err).NotTo(HaveOccurred())
	sar, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authv1.SubjectAccessReview{
		Spec: authv1.SubjectAccessReviewSpec{
			User:   controlCfg.Impersonate.UserName,
			Groups: controlCfg.Impersonate.Groups,
			ResourceAttributes: &authv1.ResourceAttributes{
				Group: group, Resource: resource, Subresource: subresource, Verb: verb, Name: "x",
			},
		},
	}, metav1.CreateOptions{})
	Expect(err).NotTo(HaveOccurred())
	return sar.Status.Allowed
}
