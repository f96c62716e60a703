// Package dptest holds fixtures shared by the tests of the dataplane
// packages: node rule sets whose rendering the goldens pin, and small
// builders for rules. It imports nothing of the dataplane, so that every
// dataplane package's tests can use it.
package dptest

import (
	"cmp"
	"slices"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
)

// Sample is a node with three pods: web (ingress isolated by two rules,
// dual-stack), client (egress isolated, named port and ipBlock), and idle
// (not isolated), plus an audit-mode pod.
func Sample() (v1alpha1.NodeRuleSetSpec, map[string]v1alpha1.AddressGroupSpec) {
	spec := v1alpha1.NodeRuleSetSpec{
		Pods: []v1alpha1.LocalPod{
			{Namespace: "shop", Name: "web-0", IPs: []string{"198.18.0.10", "fd00::10"},
				Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Policies: []string{"NetworkPolicy/shop/web"}, Rules: []string{"r-frontend", "r-monitoring"}}},
			{Namespace: "shop", Name: "client", IPs: []string{"198.18.0.11"},
				Egress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Policies: []string{"DefaultDeny/baseline"}, Rules: []string{"r-dns", "r-http-named", "r-external"}}},
			{Namespace: "shop", Name: "idle", IPs: []string{"198.18.0.12"}},
			{Namespace: "lab", Name: "probe", IPs: []string{"198.18.0.13"},
				Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationAudit, Policies: []string{"DefaultDeny/audit"}},
				Egress:  &v1alpha1.Isolation{Mode: v1alpha1.IsolationAudit, Policies: []string{"DefaultDeny/audit"}}},
		},
		Rules: []v1alpha1.Rule{
			{ID: "r-dns", Direction: v1alpha1.DirectionEgress, Ports: []v1alpha1.Port{{Protocol: v1alpha1.ProtocolUDP, Port: 53}, {Protocol: v1alpha1.ProtocolTCP, Port: 53}}, Policies: []string{"DefaultDeny/baseline"}},
			{ID: "r-external", Direction: v1alpha1.DirectionEgress,
				Peers: []v1alpha1.Peer{{IPBlock: &v1alpha1.IPBlock{CIDR: "198.19.0.0/16", Except: []string{"198.19.1.0/24", "198.19.1.128/25", "198.19.2.0/24"}}},
					{IPBlock: &v1alpha1.IPBlock{CIDR: "fd00:1::/64", Except: []string{"fd00:1::/80"}}}},
				Ports:    []v1alpha1.Port{{Protocol: v1alpha1.ProtocolSCTP, Port: 9000, EndPort: 9100}},
				Policies: []string{"NetworkPolicy/shop/client"}},
			{ID: "r-frontend", Direction: v1alpha1.DirectionIngress, Peers: []v1alpha1.Peer{{AddressGroup: "shop-frontend"}},
				Ports:    []v1alpha1.Port{{Protocol: v1alpha1.ProtocolTCP, Port: 80}, {Protocol: v1alpha1.ProtocolTCP, Port: 81}, {Protocol: v1alpha1.ProtocolTCP, Port: 8000, EndPort: 8080}, {Protocol: v1alpha1.ProtocolUDP}},
				Policies: []string{"NetworkPolicy/shop/web"}},
			{ID: "r-http-named", Direction: v1alpha1.DirectionEgress, Peers: []v1alpha1.Peer{{AddressGroup: "shop-http"}}, Policies: []string{"NetworkPolicy/shop/client"}},
			{ID: "r-monitoring", Direction: v1alpha1.DirectionIngress, Peers: []v1alpha1.Peer{{AddressGroup: "monitoring"}, {IPBlock: &v1alpha1.IPBlock{CIDR: "198.18.255.0/24"}}}, Policies: []string{"NetworkPolicy/shop/web"}},
		},
		AddressGroups: []string{"monitoring", "shop-frontend", "shop-http"},
	}
	groups := map[string]v1alpha1.AddressGroupSpec{
		"shop-frontend": {Namespace: "shop", Addresses: []string{"198.18.1.2", "198.18.1.1", "fd00::1:1"}},
		"monitoring":    {Addresses: []string{"198.18.2.0/28", "198.18.2.16/28", "198.18.3.1"}},
		"shop-http": {NamedPort: &v1alpha1.NamedPort{Name: "http", Protocol: v1alpha1.ProtocolTCP},
			Endpoints: []v1alpha1.Endpoint{{IP: "198.18.1.1", Port: 8080}, {IP: "198.18.1.2", Port: 80}, {IP: "fd00::1:1", Port: 8080}}},
	}
	return spec, groups
}

// TCP is a TCP port of a rule.
func TCP(port int32) v1alpha1.Port {
	return v1alpha1.Port{Protocol: v1alpha1.ProtocolTCP, Port: port}
}

// SampleWithPodRanges is Sample on a node whose pod ranges are known, with
// a pod that is scheduled but has no address yet: the base chains drop the
// traffic of pod-range addresses that are not ready.
func SampleWithPodRanges() (v1alpha1.NodeRuleSetSpec, map[string]v1alpha1.AddressGroupSpec) {
	spec, groups := Sample()
	spec.PodCIDRs = []string{"198.18.0.0/24", "fd00::/112"}
	spec.Pods = append(spec.Pods, v1alpha1.LocalPod{Namespace: "shop", Name: "starting", UID: "5e1d0c3a-0000-4000-8000-000000000001"})
	slices.SortFunc(spec.Pods, func(a, b v1alpha1.LocalPod) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return spec, groups
}
