// Package v1alpha1 holds the nftguard.io/v1alpha1 API: DefaultDeny (what users
// write), NodeRuleSet (the compiled rule set of one node) and AddressGroup (a
// shared peer address set referenced by rule sets).
//
// +kubebuilder:object:generate=true
// +groupName=nftguard.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of every kind in this package.
	GroupVersion = schema.GroupVersion{Group: "nftguard.io", Version: "v1alpha1"}

	// SchemeBuilder registers the kinds of this package with a scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the kinds of this package to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
