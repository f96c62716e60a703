package controller_test

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

var _ = Describe("Pods before they have addresses", func() {
	It("are listed by UID from the moment they are scheduled, with the node's pod CIDRs", func() {
		node := makeNode(name("n"))
		ns := makeNamespace(name("app"), nil)
		Expect(admin.Create(ctx, denyAllIngress(ns.Name, "deny"))).To(Succeed())
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "starting"},
			Spec:       corev1.PodSpec{NodeName: node.Name, Containers: []corev1.Container{{Name: "app", Image: "app"}}},
		}
		Expect(admin.Create(ctx, pod)).To(Succeed())
		Eventually(func(g Gomega) {
			rs := ruleSet(g, node.Name)
			g.Expect(rs.Spec.PodCIDRs).To(BeEmpty())
			p := localPod(rs, ns.Name, "starting")
			g.Expect(p).NotTo(BeNil())
			g.Expect(p.UID).To(Equal(string(pod.UID)))
			g.Expect(p.IPs).To(BeEmpty())
			g.Expect(p.Ingress).NotTo(BeNil(), "isolated before it has an address")
		}).Should(Succeed())

		By("giving it an address")
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "198.18.4.7", PodIPs: []corev1.PodIP{{IP: "198.18.4.7"}}}
		Expect(admin.Status().Update(ctx, pod)).To(Succeed())
		Eventually(func(g Gomega) {
			p := localPod(ruleSet(g, node.Name), ns.Name, "starting")
			g.Expect(p).NotTo(BeNil())
			g.Expect(p.IPs).To(Equal([]string{"198.18.4.7"}))
		}).Should(Succeed())

		By("allocating the node's pod CIDRs")
		update(node, func() {
			node.Spec.PodCIDR, node.Spec.PodCIDRs = "198.18.4.0/24", []string{"198.18.4.0/24", "fd00:4::/64"}
		})
		Eventually(func(g Gomega) {
			g.Expect(ruleSet(g, node.Name).Spec.PodCIDRs).To(Equal([]string{"198.18.4.0/24", "fd00:4::/64"}))
		}).Should(Succeed())
	})
})

var _ = Describe("nftguard's own namespace", func() {
	It("is never isolated: a DefaultDeny selecting every namespace says so, and its NetworkPolicies are not enforced", func() {
		node := makeNode(name("n"))
		ns := makeNamespace(name("app"), nil)
		makePod(ns.Name, "p", node.Name, nil)
		makePod(controllerNamespace, name("controller"), node.Name, map[string]string{"app": "nftguard"})

		dd := &v1alpha1.DefaultDeny{
			ObjectMeta: metav1.ObjectMeta{Name: name("everything")},
			Spec: v1alpha1.DefaultDenySpec{
				PolicyTypes: []v1alpha1.PolicyType{v1alpha1.PolicyTypeIngress, v1alpha1.PolicyTypeEgress},
			},
		}
		Expect(admin.Create(ctx, dd)).To(Succeed())
		DeferCleanup(func() { Expect(client.IgnoreNotFound(admin.Delete(ctx, dd))).To(Succeed()) })
		np := denyAllIngress(controllerNamespace, name("deny-controller"))
		Expect(admin.Create(ctx, np)).To(Succeed())
		DeferCleanup(func() { Expect(client.IgnoreNotFound(admin.Delete(ctx, np))).To(Succeed()) })

		Eventually(func(g Gomega) {
			rs := ruleSet(g, node.Name)
			p := localPod(rs, ns.Name, "p")
			g.Expect(p).NotTo(BeNil())
			g.Expect(p.Ingress).NotTo(BeNil())
			g.Expect(p.Egress).NotTo(BeNil())
			found := 0
			for _, lp := range rs.Spec.Pods {
				if lp.Namespace == controllerNamespace {
					found++
					g.Expect(lp.Ingress).To(BeNil(), "pod %s of nftguard's namespace is isolated", lp.Name)
					g.Expect(lp.Egress).To(BeNil(), "pod %s of nftguard's namespace is isolated", lp.Name)
				}
			}
			g.Expect(found).To(BeNumerically(">", 0))
		}).Should(Succeed())
		Eventually(func(g Gomega) {
			got := &v1alpha1.DefaultDeny{}
			g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(dd), got)).To(Succeed())
			g.Expect(got.Status.ExemptNamespaces).To(Equal([]string{controllerNamespace}))
		}).Should(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(policyEvents(g, np)).To(ContainElement(And(
				HaveField("Reason", v1alpha1.ReasonNotEnforced), HaveField("Type", corev1.EventTypeWarning))))
		}).Should(Succeed())

		By("narrowing the DefaultDeny to other namespaces")
		update(dd, func() {
			dd.Spec.NamespaceSelector = v1alpha1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns.Name}}
		})
		Eventually(func(g Gomega) {
			got := &v1alpha1.DefaultDeny{}
			g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(dd), got)).To(Succeed())
			g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
			g.Expect(got.Status.ExemptNamespaces).To(BeEmpty())
		}).Should(Succeed())
	})
})
