package v1alpha1

import (
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
)

// NewScheme returns a scheme with the built-in Kubernetes types and
// nftguard's, as every nftguard client needs.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("registering Kubernetes types: %w", err)
	}
	if err := AddToScheme(s); err != nil {
		return nil, fmt.Errorf("registering nftguard types: %w", err)
	}
	return s, nil
}
