package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// NetworkingPorts converts DefaultDeny rule ports to their networking/v1 form.
func NetworkingPorts(in []NetworkPolicyPort) []networkingv1.NetworkPolicyPort {
	var out []networkingv1.NetworkPolicyPort
	for _, p := range in {
		o := networkingv1.NetworkPolicyPort{Port: p.Port, EndPort: p.EndPort}
		if p.Protocol != nil {
			proto := corev1.Protocol(*p.Protocol)
			o.Protocol = &proto
		}
		out = append(out, o)
	}
	return out
}

// NetworkingPeers converts DefaultDeny rule peers to their networking/v1 form.
func NetworkingPeers(in []NetworkPolicyPeer) []networkingv1.NetworkPolicyPeer {
	var out []networkingv1.NetworkPolicyPeer
	for _, p := range in {
		o := networkingv1.NetworkPolicyPeer{PodSelector: p.PodSelector.ToMeta(), NamespaceSelector: p.NamespaceSelector.ToMeta()}
		if p.IPBlock != nil {
			o.IPBlock = &networkingv1.IPBlock{CIDR: p.IPBlock.CIDR, Except: p.IPBlock.Except}
		}
		out = append(out, o)
	}
	return out
}
