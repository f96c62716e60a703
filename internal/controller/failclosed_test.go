package controller_test

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
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
			dd.Spec.NamespaceSelector = v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"kubernetes.io/metadata.name": v1alpha1.LabelValue(ns.Name)}}
		})
		Eventually(func(g Gomega) {
			got := &v1alpha1.DefaultDeny{}
			g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(dd), got)).To(Succeed())
			g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
			g.Expect(got.Status.ExemptNamespaces).To(BeEmpty())
		}).Should(Succeed())
	})
})

var _ = Describe("A DefaultDeny stored before admission checked label syntax", func() {
	It("reports InvalidSelector and isolates every pod of its namespaces rather than none", func() {
		node := makeNode(name("n"))
		ns := makeNamespace(name("app"), nil)
		makePod(ns.Name, "web", node.Name, map[string]string{"app": "web"})
		makePod(ns.Name, "db", node.Name, map[string]string{"app": "db"})
		other := makeNamespace(name("other"), nil)
		makePod(other.Name, "web", node.Name, map[string]string{"app": "web"})

		By("relaxing the CRD's podSelector schema, as an older nftguard's was")
		crd := &unstructured.Unstructured{}
		crd.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"})
		Expect(admin.Get(ctx, client.ObjectKey{Name: "defaultdenies.nftguard.io"}, crd)).To(Succeed())
		strict := crd.DeepCopy()
		podSelector := []string{"spec", "versions"}
		versions, _, _ := unstructured.NestedSlice(crd.Object, podSelector...)
		v0 := versions[0].(map[string]any)
		Expect(unstructured.SetNestedField(v0, map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true},
			"schema", "openAPIV3Schema", "properties", "spec", "properties", "podSelector")).To(Succeed())
		Expect(unstructured.SetNestedSlice(crd.Object, versions, podSelector...)).To(Succeed())
		Expect(admin.Update(ctx, crd)).To(Succeed())
		restore := func() {
			Eventually(func() error {
				cur := &unstructured.Unstructured{}
				cur.SetGroupVersionKind(crd.GroupVersionKind())
				if err := admin.Get(ctx, client.ObjectKey{Name: crd.GetName()}, cur); err != nil {
					return err
				}
				strict.SetResourceVersion(cur.GetResourceVersion())
				return admin.Update(ctx, strict.DeepCopy())
			}).Should(Succeed())
		}
		DeferCleanup(restore)

		dd := &v1alpha1.DefaultDeny{
			ObjectMeta: metav1.ObjectMeta{Name: name("old")},
			Spec: v1alpha1.DefaultDenySpec{
				NamespaceSelector: v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"kubernetes.io/metadata.name": v1alpha1.LabelValue(ns.Name)}},
				PodSelector:       &v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"app": "web/api"}},
				PolicyTypes:       []v1alpha1.PolicyType{v1alpha1.PolicyTypeIngress},
			},
		}
		Eventually(func() error { return admin.Create(ctx, dd) }).Should(Succeed())
		DeferCleanup(func() { Expect(client.IgnoreNotFound(admin.Delete(ctx, dd))).To(Succeed()) })
		restore()

		Eventually(func(g Gomega) {
			c := enforced(g, dd)
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal(v1alpha1.ReasonInvalidSelector))
			g.Expect(c.Message).To(ContainSubstring(`spec.podSelector.matchLabels: Invalid value: "web/api"`))
		}).Should(Succeed())
		Eventually(func(g Gomega) {
			rs := ruleSet(g, node.Name)
			for _, n := range []string{"web", "db"} {
				p := localPod(rs, ns.Name, n)
				g.Expect(p).NotTo(BeNil())
				g.Expect(p.Ingress).NotTo(BeNil(), "%s/%s: an invalid podSelector must isolate, not select nothing", ns.Name, n)
			}
			p := localPod(rs, other.Name, "web")
			g.Expect(p).NotTo(BeNil())
			g.Expect(p.Ingress).To(BeNil(), "a namespace the DefaultDeny does not select is isolated")
		}).Should(Succeed())
	})
})
