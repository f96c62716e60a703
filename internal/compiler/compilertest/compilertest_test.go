package compilertest_test

import (
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"github.com/nftguard/nftguard/internal/compiler/compilertest"
)

// The generator is test support: no command of the module links it.
func TestNoCommandImportsIt(t *testing.T) {
	const self = "github.com/nftguard/nftguard/internal/compiler/compilertest"
	out, err := exec.Command("go", "list", "-deps", "github.com/nftguard/nftguard/cmd/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps ./cmd/...: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 || !strings.Contains(string(out), "github.com/nftguard/nftguard/internal/compiler\n") {
		t.Fatalf("go list -deps ./cmd/... listed %d packages, not the compiler: the check would prove nothing", len(deps))
	}
	for _, d := range deps {
		if d == self {
			t.Errorf("a command under cmd/ links %s", self)
		}
	}
}

// Synthetic is deterministic: the same parameters give the same cluster.
func TestSyntheticIsDeterministic(t *testing.T) {
	p := compilertest.Params{Seed: 9, Nodes: 3, PodsPerNode: 10, Namespaces: 4, NetworkPolicies: 16, DefaultDenies: true, DualStackEvery: 2}
	a, b := compilertest.Synthetic(p), compilertest.Synthetic(p)
	if len(a.Pods) != 30 || len(a.Nodes) != 3 || len(a.NetworkPolicies) != 16 || len(a.DefaultDenies) != 2 {
		t.Fatalf("Synthetic(%+v): %d pods, %d nodes, %d policies, %d DefaultDenies; want 30, 3, 16, 2",
			p, len(a.Pods), len(a.Nodes), len(a.NetworkPolicies), len(a.DefaultDenies))
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatal("two calls with the same parameters gave different clusters")
	}
}
