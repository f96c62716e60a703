package controller_test

import (
	"fmt"
	"sync/atomic"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

var uniq atomic.Int64

// name returns a name unique within the suite, so specs never collide.
func name(prefix string) string { return fmt.Sprintf("%s-%d", prefix, uniq.Add(1)) }

var nextIP atomic.Int64

// podIP hands out test addresses from 198.18.0.0/15.
func podIP() string {
	n := nextIP.Add(1)
	return fmt.Sprintf("198.18.%d.%d", n/250, n%250+1)
}

func makeNode(n string) *corev1.Node {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}
	Expect(admin.Create(ctx, node)).To(Succeed())
	return node
}

func makeNamespace(n string, labels map[string]string) *corev1.Namespace {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: labels}}
	Expect(admin.Create(ctx, ns)).To(Succeed())
	return ns
}

// makePod creates a pod bound to a node and writes its status as a kubelet
// would: Running, with an IP.
func makePod(ns, n, node string, labels map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: n, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "app", Image: "app", Ports: ports}},
		},
	}
	Expect(admin.Create(ctx, pod)).To(Succeed())
	ip := podIP()
	pod.Status = corev1.PodStatus{
		Phase:  corev1.PodRunning,
		PodIP:  ip,
		PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{
			Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now(),
		}},
	}
	Expect(admin.Status().Update(ctx, pod)).To(Succeed())
	return pod
}

func ruleSet(g Gomega, node string) *v1alpha1.NodeRuleSet {
	rs := &v1alpha1.NodeRuleSet{}
	g.Expect(admin.Get(ctx, client.ObjectKey{Name: node}, rs)).To(Succeed())
	return rs
}

func localPod(rs *v1alpha1.NodeRuleSet, ns, n string) *v1alpha1.LocalPod {
	for i := range rs.Spec.Pods {
		if rs.Spec.Pods[i].Namespace == ns && rs.Spec.Pods[i].Name == n {
			return &rs.Spec.Pods[i]
		}
	}
	return nil
}

func rule(rs *v1alpha1.NodeRuleSet, id string) *v1alpha1.Rule {
	for i := range rs.Spec.Rules {
		if rs.Spec.Rules[i].ID == id {
			return &rs.Spec.Rules[i]
		}
	}
	return nil
}

func addressGroup(g Gomega, n string) *v1alpha1.AddressGroup {
	ag := &v1alpha1.AddressGroup{}
	g.Expect(admin.Get(ctx, client.ObjectKey{Name: n}, ag)).To(Succeed())
	return ag
}

// reportProgrammed writes the NodeRuleSet status as the node's agent would.
func reportProgrammed(g Gomega, node string, ok bool, message string) {
	rs := ruleSet(g, node)
	cond := metav1.Condition{
		Type: v1alpha1.ConditionProgrammed, Status: metav1.ConditionTrue, Reason: "Programmed",
		Message: "Programmed", ObservedGeneration: rs.Generation,
	}
	if !ok {
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, "ProgramFailed", message
	} else {
		rs.Status.ObservedGeneration = rs.Generation
	}
	meta.SetStatusCondition(&rs.Status.Conditions, cond)
	g.Expect(admin.Status().Update(ctx, rs)).To(Succeed())
}

// ingressFrom is a policy isolating the pods labelled to (every pod when
// nil) for ingress, allowing the pods of its namespace labelled from.
func ingressFrom(ns, n string, to, from map[string]string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: n},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: to},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: from}}},
			}},
		},
	}
}

func denyAllIngress(ns, n string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: n},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
}

// enforced is the Enforced condition of DefaultDeny dd, which must have it.
func enforced(g Gomega, dd *v1alpha1.DefaultDeny) *metav1.Condition {
	got := &v1alpha1.DefaultDeny{}
	g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(dd), got)).To(Succeed())
	c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionEnforced)
	g.Expect(c).NotTo(BeNil())
	return c
}

func isNotFound(err error) bool { return apierrors.IsNotFound(err) }

// update reads obj, applies mutate and writes it, retrying when the
// controller wrote the object (its status, say) in between.
func update(obj client.Object, mutate func()) {
	Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := admin.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			return err
		}
		mutate()
		return admin.Update(ctx, obj)
	})).To(Succeed())
}
