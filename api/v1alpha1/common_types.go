package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// LabelSelector has the shape (and YAML) of metav1.LabelSelector, with bounds
// and an operator enum so that the API server validates it at admission.
// Keys and values follow Kubernetes' label syntax, the rules
// metav1.LabelSelector is validated with. Convert it with ToMeta.
type LabelSelector struct {
	// matchLabels: every label must match.
	// +optional
	// +kubebuilder:validation:MaxProperties=32
	// +kubebuilder:validation:XValidation:rule="self.all(k, !format.qualifiedName().validate(k).hasValue())",message="label keys must be qualified names: an optional prefix (a DNS subdomain of at most 253 characters) and '/', then a name of at most 63 characters: letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
	MatchLabels map[string]LabelValue `json:"matchLabels,omitempty"`
	// matchExpressions: every requirement must match.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	MatchExpressions []LabelSelectorRequirement `json:"matchExpressions,omitempty"`
}

// LabelValue is a label value: empty, or at most 63 letters, digits, '-',
// '_' and '.', starting and ending with a letter or digit.
// +kubebuilder:validation:MaxLength=63
// +kubebuilder:validation:Pattern=`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`
type LabelValue string

// MatchLabels is labels as a selector's matchLabels.
func MatchLabels(labels map[string]string) map[string]LabelValue {
	if labels == nil {
		return nil
	}
	out := make(map[string]LabelValue, len(labels))
	for k, v := range labels {
		out[k] = LabelValue(v)
	}
	return out
}

// LabelSelectorRequirement is a key, an operator and values, like
// metav1.LabelSelectorRequirement.
// +kubebuilder:validation:XValidation:rule="self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)",message="values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist"
type LabelSelectorRequirement struct {
	// key is the label key: a qualified name, an optional prefix (a DNS
	// subdomain of at most 253 characters) and '/', then a name of at most
	// 63 letters, digits, '-', '_' and '.', starting and ending with a
	// letter or digit.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=317
	// +kubebuilder:validation:Pattern=`^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self.indexOf('/') <= 253",message="the prefix of a label key (before '/') must be at most 253 characters"
	Key string `json:"key"`
	// operator is In, NotIn, Exists or DoesNotExist.
	// +kubebuilder:validation:Enum=In;NotIn;Exists;DoesNotExist
	Operator metav1.LabelSelectorOperator `json:"operator"`
	// values for In and NotIn: label values.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=63
	// +kubebuilder:validation:items:Pattern=`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`
	Values []string `json:"values,omitempty"`
}

// ToMeta converts the selector to a metav1.LabelSelector; nil stays nil.
func (s *LabelSelector) ToMeta() *metav1.LabelSelector {
	if s == nil {
		return nil
	}
	out := &metav1.LabelSelector{}
	if len(s.MatchLabels) > 0 {
		out.MatchLabels = make(map[string]string, len(s.MatchLabels))
		for k, v := range s.MatchLabels {
			out.MatchLabels[k] = string(v)
		}
	}
	for _, r := range s.MatchExpressions {
		out.MatchExpressions = append(out.MatchExpressions, metav1.LabelSelectorRequirement{
			Key: r.Key, Operator: r.Operator, Values: append([]string(nil), r.Values...),
		})
	}
	return out
}

// PolicyType is a traffic direction a policy can isolate.
// +kubebuilder:validation:Enum=Ingress;Egress
type PolicyType string

const (
	// PolicyTypeIngress isolates traffic towards the selected pods.
	PolicyTypeIngress PolicyType = "Ingress"
	// PolicyTypeEgress isolates traffic from the selected pods.
	PolicyTypeEgress PolicyType = "Egress"
)

// Protocol is a layer-4 protocol a port applies to.
// +kubebuilder:validation:Enum=TCP;UDP;SCTP
type Protocol string

const (
	ProtocolTCP  Protocol = "TCP"
	ProtocolUDP  Protocol = "UDP"
	ProtocolSCTP Protocol = "SCTP"
)

// The rule types below have the same shape (and YAML) as networking.k8s.io/v1
// NetworkPolicyIngressRule, NetworkPolicyEgressRule, NetworkPolicyPeer,
// NetworkPolicyPort and IPBlock. They are declared here so that the API server
// can validate them at admission: a DefaultDeny with a bad CIDR or port is
// rejected with a message naming the field rather than silently ignored.

// IngressRule allows traffic from the listed peers to the listed ports, like
// networking.k8s.io/v1 NetworkPolicyIngressRule.
type IngressRule struct {
	// ports lists the destination ports the rule allows. Absent or empty: all ports.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	Ports []NetworkPolicyPort `json:"ports,omitempty"`
	// from lists the sources the rule allows. Absent or empty: all sources.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	From []NetworkPolicyPeer `json:"from,omitempty"`
}

// EgressRule allows traffic to the listed peers and ports, like
// networking.k8s.io/v1 NetworkPolicyEgressRule.
type EgressRule struct {
	// ports lists the destination ports the rule allows. Absent or empty: all ports.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	Ports []NetworkPolicyPort `json:"ports,omitempty"`
	// to lists the destinations the rule allows. Absent or empty: all destinations.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	To []NetworkPolicyPeer `json:"to,omitempty"`
}

// NetworkPolicyPort is a protocol and a port or port range, like
// networking.k8s.io/v1 NetworkPolicyPort.
// +kubebuilder:validation:XValidation:rule="!has(self.port) || type(self.port) != int || (self.port >= 1 && self.port <= 65535)",message="port must be between 1 and 65535"
// +kubebuilder:validation:XValidation:rule="!has(self.port) || type(self.port) != string || self.port.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && self.port.size() <= 15 && self.port.matches('[a-z]') && !self.port.contains('--')",message="a named port must be an IANA service name: at most 15 lowercase letters, digits and '-', with at least one letter"
// +kubebuilder:validation:XValidation:rule="!has(self.endPort) || (has(self.port) && type(self.port) == int)",message="endPort requires a numeric port"
// +kubebuilder:validation:XValidation:rule="!has(self.endPort) || !has(self.port) || type(self.port) != int || self.endPort >= self.port",message="endPort must be greater than or equal to port"
type NetworkPolicyPort struct {
	// protocol is TCP (the default), UDP or SCTP.
	// +optional
	// +kubebuilder:default=TCP
	Protocol *Protocol `json:"protocol,omitempty"`
	// port is a numeric port or the name of a container port on the destination
	// pod. Absent: every port of the protocol.
	// +optional
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:MaxLength=15
	Port *intstr.IntOrString `json:"port,omitempty"`
	// endPort makes the rule cover the range port..endPort. Requires a numeric port.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	EndPort *int32 `json:"endPort,omitempty"`
}

// NetworkPolicyPeer is one side of a connection, like networking.k8s.io/v1
// NetworkPolicyPeer: pods (podSelector), namespaces (namespaceSelector), pods in
// some namespaces (both), or an IP block. In a DefaultDeny, a peer with only a
// podSelector means pods in the selected pod's own namespace.
// +kubebuilder:validation:XValidation:rule="has(self.ipBlock) ? !has(self.podSelector) && !has(self.namespaceSelector) : (has(self.podSelector) || has(self.namespaceSelector))",message="a peer sets ipBlock alone, or podSelector and/or namespaceSelector"
type NetworkPolicyPeer struct {
	// podSelector selects pods by label.
	// +optional
	PodSelector *LabelSelector `json:"podSelector,omitempty"`
	// namespaceSelector selects namespaces by label.
	// +optional
	NamespaceSelector *LabelSelector `json:"namespaceSelector,omitempty"`
	// ipBlock selects addresses by CIDR, minus the except CIDRs.
	// +optional
	IPBlock *NetworkPolicyIPBlock `json:"ipBlock,omitempty"`
}

// NetworkPolicyIPBlock is a CIDR minus some CIDRs inside it, like
// networking.k8s.io/v1 IPBlock, validated at admission.
// +kubebuilder:validation:XValidation:rule="isCIDR(self.cidr)",message="cidr must be a CIDR such as 198.18.0.0/16 or fd00::/64"
// +kubebuilder:validation:XValidation:rule="!has(self.except) || self.except.all(e, isCIDR(e))",message="every except entry must be a CIDR"
// +kubebuilder:validation:XValidation:rule="!has(self.except) || !isCIDR(self.cidr) || self.except.all(e, !isCIDR(e) || (cidr(self.cidr).containsCIDR(e) && cidr(e).prefixLength() > cidr(self.cidr).prefixLength()))",message="every except entry must be a strict subset of cidr"
type NetworkPolicyIPBlock struct {
	// cidr is the block, for example 198.18.0.0/16 or fd00::/64.
	// +kubebuilder:validation:MaxLength=64
	CIDR string `json:"cidr"`
	// except lists CIDRs inside cidr that the block excludes.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=64
	Except []string `json:"except,omitempty"`
}
