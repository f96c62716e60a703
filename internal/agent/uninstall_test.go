package agent_test

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

var _ = Describe("Uninstall", Ordered, func() {
	var created bool

	setAnnotation := func(on bool) {
		rs := &v1alpha1.NodeRuleSet{}
		Expect(k8s.Get(ctx, client.ObjectKey{Name: nodeName}, rs)).To(Succeed())
		patch := client.MergeFrom(rs.DeepCopy())
		if on {
			metav1.SetMetaDataAnnotation(&rs.ObjectMeta, v1alpha1.UninstallAnnotation, "true")
		} else {
			delete(rs.Annotations, v1alpha1.UninstallAnnotation)
		}
		Expect(k8s.Patch(ctx, rs, patch)).To(Succeed())
	}

	BeforeAll(func() {
		// The Agent specs may have created the node's rule set already.
		err := k8s.Get(ctx, client.ObjectKey{Name: nodeName}, &v1alpha1.NodeRuleSet{})
		if apierrors.IsNotFound(err) {
			created = true
			Expect(k8s.Create(ctx, &v1alpha1.NodeRuleSet{
				ObjectMeta: metav1.ObjectMeta{Name: nodeName},
				Spec: v1alpha1.NodeRuleSetSpec{Pods: []v1alpha1.LocalPod{{
					Namespace: "shop", Name: "db", IPs: []string{"198.18.0.20"},
					Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Policies: []string{"NetworkPolicy/shop/db"}},
				}}},
			})).To(Succeed())
		} else {
			Expect(err).NotTo(HaveOccurred())
		}
		Eventually(func(g Gomega) {
			g.Expect(programmed(g, nodeName).Status).To(Equal(metav1.ConditionTrue))
			g.Expect(kernelTable(g)).NotTo(BeEmpty())
		}).Should(Succeed())
	})

	AfterAll(func() {
		if created {
			Expect(k8s.Delete(ctx, &v1alpha1.NodeRuleSet{ObjectMeta: metav1.ObjectMeta{Name: nodeName}})).To(Succeed())
		}
	})

	It("deletes the table and reports Uninstalled when the rule set is marked", func() {
		setAnnotation(true)
		Eventually(func(g Gomega) {
			c := programmed(g, nodeName)
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal(v1alpha1.ReasonUninstalled))
			g.Expect(kernelTable(g)).To(BeEmpty())
		}).Should(Succeed())
		By("not re-creating it on resync")
		Consistently(func(g Gomega) {
			g.Expect(kernelTable(g)).To(BeEmpty())
			g.Expect(programmed(g, nodeName).Reason).To(Equal(v1alpha1.ReasonUninstalled))
		}, 3*resyncPeriod, "250ms").Should(Succeed())
	})

	It("programs the rule set again when the mark is removed", func() {
		setAnnotation(false)
		Eventually(func(g Gomega) {
			g.Expect(programmed(g, nodeName).Status).To(Equal(metav1.ConditionTrue))
			g.Expect(kernelTable(g)).NotTo(BeEmpty())
		}).Should(Succeed())
	})
})
