package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DefaultDenyMode says whether a DefaultDeny drops or only reports.
// +kubebuilder:validation:Enum=Enforce;Audit
type DefaultDenyMode string

const (
	// ModeEnforce isolates the selected pods: traffic no rule allows is dropped.
	ModeEnforce DefaultDenyMode = "Enforce"
	// ModeAudit changes no verdict: traffic an Enforce DefaultDeny would drop is
	// logged with "action":"audit" and passes.
	ModeAudit DefaultDenyMode = "Audit"
)

// DefaultDenySpec selects pods to isolate and the baseline traffic they keep.
// +kubebuilder:validation:XValidation:rule="!has(self.allowedIngress) || size(self.allowedIngress) == 0 || 'Ingress' in self.policyTypes",message="allowedIngress requires Ingress in policyTypes"
// +kubebuilder:validation:XValidation:rule="!has(self.allowedEgress) || size(self.allowedEgress) == 0 || 'Egress' in self.policyTypes",message="allowedEgress requires Egress in policyTypes"
type DefaultDenySpec struct {
	// namespaceSelector selects the namespaces whose pods are isolated. An
	// empty selector ({}) selects every namespace.
	NamespaceSelector LabelSelector `json:"namespaceSelector"`

	// podSelector narrows the isolated pods within the selected namespaces.
	// Absent: every pod in them.
	// +optional
	PodSelector *LabelSelector `json:"podSelector,omitempty"`

	// policyTypes lists the directions isolated. Default: both.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=2
	// +kubebuilder:default={Ingress,Egress}
	PolicyTypes []PolicyType `json:"policyTypes,omitempty"`

	// mode is Enforce (the default: drop what no rule allows) or Audit (log
	// what Enforce would drop, drop nothing).
	// +optional
	// +kubebuilder:default=Enforce
	Mode DefaultDenyMode `json:"mode,omitempty"`

	// allowedIngress is baseline ingress the isolated pods keep, as if a
	// NetworkPolicy with these rules existed in each selected namespace.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	AllowedIngress []IngressRule `json:"allowedIngress,omitempty"`

	// allowedEgress is baseline egress the isolated pods keep (DNS, say), as
	// if a NetworkPolicy with these rules existed in each selected namespace.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	AllowedEgress []EgressRule `json:"allowedEgress,omitempty"`
}

// DefaultDenyStatus reports what the DefaultDeny selects and where it is enforced.
type DefaultDenyStatus struct {
	// observedGeneration is the generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// selectedPods counts the pods the DefaultDeny selects.
	// +optional
	SelectedPods int32 `json:"selectedPods"`
	// exemptNamespaces lists the namespaces the namespaceSelector matches
	// whose pods no policy isolates: nftguard's own, so that no DefaultDeny
	// can cut its controller off the API server. Their pods are not counted
	// in selectedPods.
	// +optional
	// +listType=set
	ExemptNamespaces []string `json:"exemptNamespaces,omitempty"`
	// desiredNodes counts the nodes that host a selected pod.
	// +optional
	DesiredNodes int32 `json:"desiredNodes"`
	// enforcedNodes counts the desired nodes whose agent has programmed the
	// current rule set.
	// +optional
	EnforcedNodes int32 `json:"enforcedNodes"`
	// enforcement is enforcedNodes/desiredNodes, for display.
	// +optional
	Enforcement string `json:"enforcement,omitempty"`
	// conditions: Enforced.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// drops counts the packets this DefaultDeny's isolation logged, as the
	// drops API counts them (refreshed at most every 30 seconds). A packet
	// of a pod that several policies isolate counts for each of them.
	// +optional
	Drops *DropCounts `json:"drops,omitempty"`
}

// DropCounts are the packets a policy's isolation logged since the drops
// API's replica that counted them started.
type DropCounts struct {
	// dropped counts packets dropped (Enforce mode).
	Dropped int64 `json:"dropped"`
	// audited counts packets an Audit-mode isolation would have dropped.
	Audited int64 `json:"audited"`
	// since is when the counting started.
	Since metav1.Time `json:"since"`
}

// DefaultDeny isolates the pods it selects, like a NetworkPolicy with no rules
// would; NetworkPolicies and its allowed rules then open what they allow.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=dd,categories=nftguard
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="Types",type=string,JSONPath=`.spec.policyTypes`,priority=1
// +kubebuilder:printcolumn:name="Pods",type=integer,JSONPath=`.status.selectedPods`
// +kubebuilder:printcolumn:name="Enforced",type=string,JSONPath=`.status.enforcement`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Enforced")].status`,priority=1
// +kubebuilder:printcolumn:name="Exempt",type=string,JSONPath=`.status.exemptNamespaces`,priority=1
// +kubebuilder:printcolumn:name="Dropped",type=integer,JSONPath=`.status.drops.dropped`,priority=1
// +kubebuilder:printcolumn:name="Audited",type=integer,JSONPath=`.status.drops.audited`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type DefaultDeny struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   DefaultDenySpec   `json:"spec"`
	Status DefaultDenyStatus `json:"status,omitempty"`
}

// DefaultDenyList is a list of DefaultDeny.
// +kubebuilder:object:root=true
type DefaultDenyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []DefaultDeny `json:"items"`
}

func init() {
	SchemeBuilder.Register(&DefaultDeny{}, &DefaultDenyList{})
}
