package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AddressGroupSpec is the membership of one peer selector: the addresses of
// the pods it selects, or for a named port, their address-port pairs. One
// pod's churn rewrites the groups it belongs to, never every node's rule set.
// Written only by the controller.
type AddressGroupSpec struct {
	// namespace is set when the selector is confined to one namespace (a peer
	// with only a podSelector, in that policy's namespace).
	// +optional
	Namespace string `json:"namespace,omitempty"`
	// namespaceSelector selects the namespaces of the member pods.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
	// podSelector selects the member pods. Absent: every pod in the namespaces.
	// +optional
	PodSelector *metav1.LabelSelector `json:"podSelector,omitempty"`
	// namedPort, when set, makes this an endpoint group: members are the
	// pods that declare a container port of this name and protocol, each
	// with the number it resolves to on that pod.
	// +optional
	NamedPort *NamedPort `json:"namedPort,omitempty"`
	// fromIPBlocks is set on the group of a policy rule's ipBlocks, made
	// when a policy has more ipBlocks than the compiler keeps inline in a
	// rule set: its addresses are the CIDRs the blocks cover (each block's
	// CIDR minus its except CIDRs), it has no selectors, and no pod event
	// changes it.
	// +optional
	FromIPBlocks bool `json:"fromIPBlocks,omitempty"`
	// addresses are the member pods' IPs, sorted (plain groups), or the
	// CIDRs of a group made from ipBlocks.
	// +optional
	// +listType=atomic
	Addresses []string `json:"addresses,omitempty"`
	// endpoints are the member pods' IP and port pairs, sorted (named-port groups).
	// +optional
	// +listType=atomic
	Endpoints []Endpoint `json:"endpoints,omitempty"`
}

// NamedPort is a container port name and its protocol.
type NamedPort struct {
	Name     string   `json:"name"`
	Protocol Protocol `json:"protocol"`
}

// Endpoint is a pod address and the port a named port resolves to on that pod.
type Endpoint struct {
	IP   string `json:"ip"`
	Port int32  `json:"port"`
}

// AddressGroupStatus is written by the controller.
type AddressGroupStatus struct {
	// size counts the addresses or endpoints.
	// +optional
	Size int32 `json:"size"`
	// nodes counts the NodeRuleSets that reference the group.
	// +optional
	Nodes int32 `json:"nodes"`
}

// AddressGroup is a shared, deduplicated set of peer addresses referenced by
// NodeRuleSets. It is an internal detail with hashed names, so it is not in
// the nftguard category: `kubectl get nftguard` lists DefaultDenies and
// NodeRuleSets, `kubectl get ag` lists the groups.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=ag
// +kubebuilder:printcolumn:name="Namespace",type=string,JSONPath=`.spec.namespace`
// +kubebuilder:printcolumn:name="Port",type=string,JSONPath=`.spec.namedPort.name`
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.status.size`
// +kubebuilder:printcolumn:name="Nodes",type=integer,JSONPath=`.status.nodes`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AddressGroup struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   AddressGroupSpec   `json:"spec,omitempty"`
	Status AddressGroupStatus `json:"status,omitempty"`
}

// AddressGroupList is a list of AddressGroup.
// +kubebuilder:object:root=true
type AddressGroupList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AddressGroup `json:"items"`
}

func init() {
	SchemeBuilder.Register(&AddressGroup{}, &AddressGroupList{})
}
