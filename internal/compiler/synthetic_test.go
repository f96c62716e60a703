package compiler_test

import (
	"encoding/json"
	"testing"

	"github.com/nftguard/nftguard/internal/compiler"
	"github.com/nftguard/nftguard/internal/compiler/compilertest"
)

// TestScale compiles a cluster of 100 nodes of 110 pods with 1,000
// NetworkPolicies and checks that every rule set stays well within what the
// API server stores comfortably.
func TestScale(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode")
	}
	s := compilertest.Synthetic(compilertest.Params{Seed: 1, Nodes: 100, PodsPerNode: 110, Namespaces: 200, NetworkPolicies: 1000, DefaultDenies: true, DualStackEvery: 10})
	res := compiler.Compile(s)
	if len(res.NodeRuleSets) != 100 {
		t.Fatalf("got %d rule sets, want 100", len(res.NodeRuleSets))
	}
	const limit = 512 << 10
	var biggest, pods, rules int
	for node, spec := range res.NodeRuleSets {
		b, err := json.Marshal(spec)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) >= limit {
			t.Errorf("node %s: rule set is %d bytes, over %d", node, len(b), limit)
		}
		biggest = max(biggest, len(b))
		pods += len(spec.Pods)
		rules += len(spec.Rules)
	}
	if pods != 100*110 {
		t.Errorf("got %d local pods, want %d", pods, 100*110)
	}
	isolated := 0
	for _, spec := range res.NodeRuleSets {
		for _, p := range spec.Pods {
			if p.Ingress != nil || p.Egress != nil {
				isolated++
			}
		}
	}
	if isolated == 0 || rules == 0 || len(res.AddressGroups) == 0 {
		t.Errorf("degenerate cluster: %d isolated pods, %d rules, %d groups", isolated, rules, len(res.AddressGroups))
	}
	t.Logf("largest rule set %d bytes; %d rules over all nodes; %d groups; %d isolated pods", biggest, rules, len(res.AddressGroups), isolated)
	compiler.CheckIntegrity(t, res)
}

func TestDeterministicSynthetic(t *testing.T) {
	compiler.CheckDeterministic(t, compilertest.Synthetic(compilertest.Params{Seed: 7, Nodes: 6, PodsPerNode: 30, Namespaces: 12, NetworkPolicies: 60, DefaultDenies: true, DualStackEvery: 3}))
}

// TestEngineSynthetic loads a synthetic cluster into an engine, then changes
// it the way a cluster changes, checking against Compile.
func TestEngineSynthetic(t *testing.T) {
	compiler.CheckEngineFollows(t, compilertest.Synthetic(compilertest.Params{Seed: 5, Nodes: 8, PodsPerNode: 20, Namespaces: 10, NetworkPolicies: 60, DefaultDenies: true, DualStackEvery: 5}))
}

func TestOracleAgreesOnSynthetic(t *testing.T) {
	s := compilertest.Synthetic(compilertest.Params{Seed: 3, Nodes: 3, PodsPerNode: 12, Namespaces: 4, NetworkPolicies: 32, DefaultDenies: true, DualStackEvery: 4})
	compiler.CheckOracle(t, s, compiler.Compile(s))
}
