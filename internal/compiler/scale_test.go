package compiler

import (
	"encoding/json"
	"flag"
	"fmt"
	"testing"
)

// TestScale compiles a cluster of 100 nodes of 110 pods with 1,000
// NetworkPolicies and checks that every rule set stays well within what the
// API server stores comfortably.
func TestScale(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode")
	}
	s := Synthetic(Params{Seed: 1, Nodes: 100, PodsPerNode: 110, Namespaces: 200, NetworkPolicies: 1000, DefaultDenies: true, DualStackEvery: 10})
	res := Compile(s)
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
	checkIntegrity(t, res)
}

var benchTier = flag.String("compiler.tier", "small", "BenchmarkCompile tier: small (10k pods, 1k namespaces, 2k policies), medium or large (100k pods)")

var benchTiers = map[string]Params{
	"small":  {Seed: 1, Nodes: 91, PodsPerNode: 110, Namespaces: 1000, NetworkPolicies: 2000, DefaultDenies: true, DualStackEvery: 10},
	"medium": {Seed: 1, Nodes: 455, PodsPerNode: 110, Namespaces: 5000, NetworkPolicies: 10000, DefaultDenies: true, DualStackEvery: 10},
	"large":  {Seed: 1, Nodes: 910, PodsPerNode: 110, Namespaces: 10000, NetworkPolicies: 20000, DefaultDenies: true, DualStackEvery: 10},
}

func BenchmarkCompile(b *testing.B) {
	p, ok := benchTiers[*benchTier]
	if !ok {
		b.Fatalf("unknown tier %q", *benchTier)
	}
	s := Synthetic(p)
	b.Run(fmt.Sprintf("%s/pods=%d/policies=%d", *benchTier, p.Nodes*p.PodsPerNode, p.NetworkPolicies), func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			Compile(s)
		}
	})
}
