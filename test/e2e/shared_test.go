package e2e

import (
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/test/conformance"
	"github.com/nftguard/nftguard/test/localcluster"
)

// suite runs the shared conformance checks on this package's cluster, with
// explain's verdict checked against every IPv4 cell.
var suite = &conformance.Suite{Explain: true}

// Short names for the shared model, probes and policy builders.
type (
	Reachability = conformance.Reachability
	probe        = conformance.Probe
)

var (
	namespaces      = conformance.Namespaces
	podNames        = conformance.PodNames
	allPods         = conformance.AllPods
	agrees          = conformance.Agrees
	NewReachability = conformance.NewReachability

	policy       = conformance.Policy
	labels       = conformance.Labels
	podPeer      = conformance.PodPeer
	nsPeer       = conformance.NsPeer
	allowIngress = conformance.AllowIngress
	allowEgress  = conformance.AllowEgress
	ingress      = conformance.Ingress
	egress       = conformance.Egress

	tcp80   = conformance.TCP80
	tcp81   = conformance.TCP81
	udp80   = conformance.UDP80
	udp81   = conformance.UDP81
	sctp80  = conformance.SCTP80
	sctp81  = conformance.SCTP81
	tcp80v6 = conformance.TCP80v6
)

func waitConverged(t *testing.T)                 { t.Helper(); suite.WaitConverged(t) }
func resetPolicies(t *testing.T)                 { t.Helper(); suite.ResetPolicies(t) }
func create(t *testing.T, objs ...client.Object) { t.Helper(); suite.Create(t, objs...) }
func expect(t *testing.T, r *Reachability, probes ...probe) {
	t.Helper()
	suite.Expect(t, r, probes...)
}
func expectMatrix(t *testing.T, r *Reachability, withExplain bool, probes ...probe) {
	t.Helper()
	suite.ExpectMatrix(t, r, withExplain, probes...)
}
func observe(t *testing.T, p probe) (map[[2]string]localcluster.Outcome, *localcluster.Matrix) {
	t.Helper()
	return suite.Observe(t, p)
}
