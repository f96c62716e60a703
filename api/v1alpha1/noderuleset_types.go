package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Direction is the direction of traffic a rule or an isolation applies to,
// seen from the local pod.
// +kubebuilder:validation:Enum=Ingress;Egress
type Direction string

const (
	DirectionIngress Direction = "Ingress"
	DirectionEgress  Direction = "Egress"
)

// IsolationMode says what happens to traffic that no rule allows.
// +kubebuilder:validation:Enum=Enforce;Audit
type IsolationMode string

const (
	// IsolationEnforce drops (and logs) traffic no rule allows.
	IsolationEnforce IsolationMode = "Enforce"
	// IsolationAudit logs traffic no rule allows as "audit" and lets it pass.
	IsolationAudit IsolationMode = "Audit"
)

// NodeRuleSetSpec is the compiled rule set of one node: everything its agent
// needs to program nftables, with no Kubernetes selector left to evaluate.
// It is written only by the controller.
type NodeRuleSetSpec struct {
	// pods are the pods scheduled to the node that are not hostNetwork and
	// not terminated, sorted by namespace and name. A pod is listed from the
	// moment it is scheduled, before it has addresses: the node's agent
	// programs it as soon as the CNI plugin reports its addresses, with no
	// round trip through the controller.
	// +optional
	// +listType=atomic
	Pods []LocalPod `json:"pods,omitempty"`
	// podCIDRs are the node's pod address ranges (Node.spec.podCIDRs), as
	// canonical CIDRs. When the node's agent knows them (from here or from
	// its own flag), traffic of addresses in them that it has not marked
	// ready is dropped.
	// +optional
	// +listType=atomic
	PodCIDRs []string `json:"podCIDRs,omitempty"`
	// rules are the allow rules the pods reference, deduplicated, sorted by id.
	// +optional
	// +listType=atomic
	Rules []Rule `json:"rules,omitempty"`
	// addressGroups names every AddressGroup the rules reference, sorted.
	// +optional
	// +listType=set
	AddressGroups []string `json:"addressGroups,omitempty"`
	// unwritten, when set, says that the controller's latest compile for the
	// node is not fully written: the node's rule set (reason
	// RuleSetTooLarge) or address groups it references (reason
	// AddressGroupTooLarge) exceed the object size limit. With reason
	// RuleSetTooLarge and policies set, this spec is the latest compile
	// without the rules of those policies: the pods they select stay
	// isolated without them, and every other policy is enforced as
	// compiled. With reason RuleSetTooLarge and no policies (leaving rules
	// out was not enough), the rest of this spec is the last one that fit.
	// The agent programs the spec as usual.
	// +optional
	Unwritten *Unwritten `json:"unwritten,omitempty"`
}

// Unwritten is compiled output the controller could not write because it
// exceeds the object size limit.
type Unwritten struct {
	// reason is RuleSetTooLarge or AddressGroupTooLarge.
	// +kubebuilder:validation:Enum=RuleSetTooLarge;AddressGroupTooLarge
	Reason string `json:"reason"`
	// bytes is the size of the serialized spec that was not written (the
	// largest, for several address groups).
	Bytes int64 `json:"bytes"`
	// limit is the controller's object size limit in bytes.
	Limit int64 `json:"limit"`
	// addressGroups names the address groups not written (reason
	// AddressGroupTooLarge), sorted.
	// +optional
	// +listType=set
	AddressGroups []string `json:"addressGroups,omitempty"`
	// policies names the policies whose rules were left out of this spec
	// so that it fits (reason RuleSetTooLarge), sorted: the largest
	// contributors first, as few as needed.
	// +optional
	// +listType=set
	Policies []string `json:"policies,omitempty"`
}

// LocalPod is a pod on the node and the isolation of each of its directions.
type LocalPod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// uid is the pod's UID. The CNI plugin reports addresses by pod UID: an
	// address is ready only for the pod whose sandbox was given it.
	// +optional
	UID string `json:"uid,omitempty"`
	// ips are the pod's addresses from its status (one per family for
	// dual-stack pods); absent until kubelet reports them.
	// +optional
	// +listType=atomic
	IPs []string `json:"ips,omitempty"`
	// ingress is absent when no policy isolates the pod's ingress.
	// +optional
	Ingress *Isolation `json:"ingress,omitempty"`
	// egress is absent when no policy isolates the pod's egress.
	// +optional
	Egress *Isolation `json:"egress,omitempty"`
}

// Isolation of one direction of a pod: only traffic one of the rules allows
// passes; the rest is handled by mode.
type Isolation struct {
	// mode is Enforce when a NetworkPolicy or an Enforce DefaultDeny isolates
	// the pod, Audit when only Audit DefaultDenies select it.
	Mode IsolationMode `json:"mode"`
	// policies names every policy that isolates the pod in this direction,
	// as "NetworkPolicy/<namespace>/<name>" or "DefaultDeny/<name>", sorted.
	// Drops are attributed to them.
	// +listType=atomic
	Policies []string `json:"policies"`
	// rules are the ids of the rules that allow traffic, sorted.
	// +optional
	// +listType=atomic
	Rules []string `json:"rules,omitempty"`
}

// Rule allows traffic from (ingress) or to (egress) any of its peers on any of
// its ports.
type Rule struct {
	// id is a content hash: the same rule has the same id on every node.
	ID        string    `json:"id"`
	Direction Direction `json:"direction"`
	// peers: absent means every address.
	// +optional
	// +listType=atomic
	Peers []Peer `json:"peers,omitempty"`
	// ports: absent means every protocol and port. A rule whose peer is a
	// named-port AddressGroup has no ports: the group carries them.
	// +optional
	// +listType=atomic
	Ports []Port `json:"ports,omitempty"`
	// policies names the policies the rule comes from, sorted.
	// +listType=atomic
	Policies []string `json:"policies"`
}

// Peer is an AddressGroup or an IP block. Exactly one is set.
type Peer struct {
	// addressGroup names an AddressGroup (pod addresses, or pod
	// address-port pairs for a named port).
	// +optional
	AddressGroup string `json:"addressGroup,omitempty"`
	// ipBlock is a CIDR minus the except CIDRs.
	// +optional
	IPBlock *IPBlock `json:"ipBlock,omitempty"`
}

// Port is a protocol with a port, a port range, or every port.
type Port struct {
	Protocol Protocol `json:"protocol"`
	// port is 0 (absent) for every port of the protocol.
	// +optional
	Port int32 `json:"port,omitempty"`
	// endPort, when set, makes port..endPort a range.
	// +optional
	EndPort int32 `json:"endPort,omitempty"`
}

// IPBlock is a CIDR minus the except CIDRs inside it, as compiled from a
// NetworkPolicy or DefaultDeny peer (canonical network addresses).
type IPBlock struct {
	CIDR string `json:"cidr"`
	// +optional
	// +listType=atomic
	Except []string `json:"except,omitempty"`
}

// NodeRuleSetStatus is written only by the node's agent.
type NodeRuleSetStatus struct {
	// observedGeneration is the spec generation the agent last programmed.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// conditions: Programmed.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// pods counts the local pods in the programmed rule set.
	// +optional
	Pods int32 `json:"pods,omitempty"`
	// rules counts the programmed rules.
	// +optional
	Rules int32 `json:"rules,omitempty"`
	// chains counts the nftables chains in the table.
	// +optional
	Chains int32 `json:"chains,omitempty"`
	// setElements counts the elements of every set and map in the table.
	// +optional
	SetElements int32 `json:"setElements,omitempty"`
	// drops counts the packets dropped since the agent started.
	// +optional
	Drops int64 `json:"drops,omitempty"`
	// auditEvents counts the packets Audit mode let pass since the agent started.
	// +optional
	AuditEvents int64 `json:"auditEvents,omitempty"`
	// lastProgrammedTime is when the table last changed.
	// +optional
	LastProgrammedTime *metav1.Time `json:"lastProgrammedTime,omitempty"`
	// leftOut, when set, says that the agent programmed observedGeneration
	// without some of its rules: those that reference address groups that
	// do not exist. The pods of the policies it names stay isolated without
	// those rules; every other policy is programmed as compiled.
	// +optional
	LeftOut *LeftOut `json:"leftOut,omitempty"`
}

// LeftOut is what an agent could not program of its rule set.
type LeftOut struct {
	// reason is AddressGroupMissing.
	Reason string `json:"reason"`
	// addressGroups names the missing address groups, sorted.
	// +listType=set
	AddressGroups []string `json:"addressGroups"`
	// policies names the policies whose rules were left out, sorted.
	// +listType=set
	Policies []string `json:"policies"`
}

// NodeRuleSet is the compiled rule set of the node it is named after. The
// controller writes its spec; the node's agent programs it and writes status.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=nrs,categories=nftguard
// +kubebuilder:printcolumn:name="Pods",type=integer,JSONPath=`.status.pods`
// +kubebuilder:printcolumn:name="Rules",type=integer,JSONPath=`.status.rules`
// +kubebuilder:printcolumn:name="Generation",type=integer,JSONPath=`.status.observedGeneration`
// +kubebuilder:printcolumn:name="Programmed",type=string,JSONPath=`.status.conditions[?(@.type=="Programmed")].status`
// +kubebuilder:printcolumn:name="Drops",type=integer,JSONPath=`.status.drops`,priority=1
// +kubebuilder:printcolumn:name="Elements",type=integer,JSONPath=`.status.setElements`,priority=1
// +kubebuilder:printcolumn:name="Unwritten",type=string,JSONPath=`.spec.unwritten.reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type NodeRuleSet struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   NodeRuleSetSpec   `json:"spec,omitempty"`
	Status NodeRuleSetStatus `json:"status,omitempty"`
}

// NodeRuleSetList is a list of NodeRuleSet.
// +kubebuilder:object:root=true
type NodeRuleSetList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []NodeRuleSet `json:"items"`
}

func init() {
	SchemeBuilder.Register(&NodeRuleSet{}, &NodeRuleSetList{})
}
