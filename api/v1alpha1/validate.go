package v1alpha1

import (
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// SelectorErrors checks every label selector of the spec with the rules
// metav1.LabelSelector is validated with. Admission enforces them, but a
// DefaultDeny stored before it did (the API server keeps such objects
// through CRD validation ratcheting) can still hold an invalid one.
func (s *DefaultDenySpec) SelectorErrors() field.ErrorList {
	spec := field.NewPath("spec")
	var errs field.ErrorList
	check := func(sel *LabelSelector, path *field.Path) {
		if sel != nil {
			errs = append(errs, metav1validation.ValidateLabelSelector(sel.ToMeta(), metav1validation.LabelSelectorValidationOptions{}, path)...)
		}
	}
	check(&s.NamespaceSelector, spec.Child("namespaceSelector"))
	check(s.PodSelector, spec.Child("podSelector"))
	peers := func(list []NetworkPolicyPeer, path *field.Path) {
		for i := range list {
			check(list[i].NamespaceSelector, path.Index(i).Child("namespaceSelector"))
			check(list[i].PodSelector, path.Index(i).Child("podSelector"))
		}
	}
	for i, r := range s.AllowedIngress {
		peers(r.From, spec.Child("allowedIngress").Index(i).Child("from"))
	}
	for i, r := range s.AllowedEgress {
		peers(r.To, spec.Child("allowedEgress").Index(i).Child("to"))
	}
	return errs
}
