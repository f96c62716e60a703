package e2e

import (
	"testing"

	"github.com/nftguard/nftguard/test/conformance"
)

// TestConformance reproduces the shapes of the upstream NetworkPolicy e2e
// suite on the full 9x9 matrix, probing pod addresses, with explain's
// verdict checked on every cell. Each case starts from no policy.
func TestConformance(t *testing.T) {
	needCluster(t)
	suite.Run(t, conformance.Cases())
}

// TestConformanceChanges covers policy update and delete, and pod and
// namespace label changes, on the same matrix.
func TestConformanceChanges(t *testing.T) {
	needCluster(t)
	suite.ResetPolicies(t)
	suite.RunChanges(t)
}
