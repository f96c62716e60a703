package conformance

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// Policy is a NetworkPolicy selecting podLabels in ns (nil: every pod).
func Policy(ns, name string, podLabels map[string]string, types ...networkingv1.PolicyType) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: podLabels}, PolicyTypes: types},
	}
}

// The policy types, short.
var (
	Ingress = networkingv1.PolicyTypeIngress
	Egress  = networkingv1.PolicyTypeEgress
)

// Labels makes a label map from key, value pairs.
func Labels(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// PodPeer selects pods by label in the policy's namespace.
func PodPeer(podLabels map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: podLabels}}
}

// NsPeer selects every pod of the namespaces with these labels.
func NsPeer(nsLabels map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: nsLabels}}
}

// Port is a numbered port of a protocol.
func Port(p int32, proto corev1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Port: ptr.To(intstr.FromInt32(p)), Protocol: &proto}
}

// NamedPort is a container port by name.
func NamedPort(name string, proto corev1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Port: ptr.To(intstr.FromString(name)), Protocol: &proto}
}

// AllowIngress adds an ingress rule to np.
func AllowIngress(np *networkingv1.NetworkPolicy, ports []networkingv1.NetworkPolicyPort, from ...networkingv1.NetworkPolicyPeer) *networkingv1.NetworkPolicy {
	np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{Ports: ports, From: from})
	return np
}

// AllowEgress adds an egress rule to np.
func AllowEgress(np *networkingv1.NetworkPolicy, ports []networkingv1.NetworkPolicyPort, to ...networkingv1.NetworkPolicyPeer) *networkingv1.NetworkPolicy {
	np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{Ports: ports, To: to})
	return np
}
