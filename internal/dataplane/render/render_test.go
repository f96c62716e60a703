package render

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/dptest"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/prefix"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func TestRenderGolden(t *testing.T) {
	long := strings.Repeat("very-long-name-", 10)
	longSpec := v1alpha1.NodeRuleSetSpec{
		Pods: []v1alpha1.LocalPod{{Namespace: "default", Name: long + "pod", IPs: []string{"198.18.0.20"},
			Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Rules: []string{"Rule_" + long}}}},
		Rules: []v1alpha1.Rule{{ID: "Rule_" + long, Direction: v1alpha1.DirectionIngress, Peers: []v1alpha1.Peer{{AddressGroup: long + "group"}}}},
	}
	longGroups := map[string]v1alpha1.AddressGroupSpec{long + "group": {Addresses: []string{"198.18.0.21"}}}

	spec, groups := dptest.Sample()
	ranged, rangedGroups := dptest.SampleWithPodRanges()
	// Two pods dispatching on ports (to the peer chains of their rules)
	// and one walking two of the same rules (in their rule chains).
	dispatch, dispatchGroups := benchNode(2, 18, 3, 2)
	dispatch.Pods = append(dispatch.Pods, v1alpha1.LocalPod{Namespace: "bench", Name: "direct", IPs: []string{"198.19.254.9"},
		Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Rules: []string{"r00000", "r00001"}}})
	cases := []struct {
		name   string
		spec   v1alpha1.NodeRuleSetSpec
		groups map[string]v1alpha1.AddressGroupSpec
		opts   Options
	}{
		{name: "empty"},
		{name: "sample", spec: spec, groups: groups, opts: Options{LogGroup: 7, LogRate: 5, LogBurst: 10}},
		{name: "long-names", spec: longSpec, groups: longGroups},
		{name: "dispatch", spec: dispatch, groups: dispatchGroups},
		{name: "pod-ranges", spec: ranged, groups: rangedGroups, opts: Options{RevokedMark: 0x00800000, PodInterfaces: []string{"vethb2", "veth1a"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tab, err := Render(tc.spec, tc.groups, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			got := tab.String()
			for _, c := range tab.Chains {
				if len(c.Name) > maxNameLen {
					t.Errorf("chain name %q longer than %d", c.Name, maxNameLen)
				}
			}
			for _, s := range tab.Sets {
				if len(s.Name) > maxNameLen {
					t.Errorf("set name %q longer than %d", s.Name, maxNameLen)
				}
			}
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -run TestRenderGolden -update)", err)
			}
			if got != string(want) {
				t.Errorf("Render(%s) differs from %s (rerun with -update to accept):\n%s", tc.name, path, got)
			}
			// Rendering is deterministic.
			again, _ := Render(tc.spec, tc.groups, tc.opts)
			if again.String() != got {
				t.Error("second Render differs")
			}
		})
	}
}

func TestRenderErrors(t *testing.T) {
	spec, groups := dptest.Sample()
	delete(groups, "monitoring")
	if _, err := Render(spec, groups, Options{}); err == nil || !strings.Contains(err.Error(), `address group "monitoring", which was not given`) {
		t.Fatalf("missing group: err = %v", err)
	}

	spec, groups = dptest.Sample()
	spec.Pods[0].Ingress.Rules = append(spec.Pods[0].Ingress.Rules, "r-nope")
	if _, err := Render(spec, groups, Options{}); err == nil || !strings.Contains(err.Error(), `rule "r-nope"`) {
		t.Fatalf("missing rule: err = %v", err)
	}

	spec, groups = dptest.Sample()
	spec.Pods[0].Ingress.Rules = []string{"r-dns"}
	if _, err := Render(spec, groups, Options{}); err == nil || !strings.Contains(err.Error(), "Egress rule") {
		t.Fatalf("direction mismatch: err = %v", err)
	}

	spec, groups = dptest.Sample()
	spec.Pods[0].IPs = []string{"not-an-ip"}
	if _, err := Render(spec, groups, Options{}); err == nil {
		t.Fatal("bad pod IP accepted")
	}

	spec, groups = dptest.Sample()
	spec.Rules[1].Peers[0].IPBlock.Except = []string{"fd00::/64"}
	if _, err := Render(spec, groups, Options{}); err == nil {
		t.Fatal("except of the other family accepted")
	}
}

func TestRenderLogPrefix(t *testing.T) {
	spec, groups := dptest.Sample()
	tab, err := Render(spec, groups, Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := tab.Chain("in-shop.web-0")
	if c == nil {
		t.Fatal("no chain in-shop.web-0")
	}
	want := `log prefix "` + prefix.Format(prefix.ActionDrop, prefix.Ingress, prefix.PodKey("shop", "web-0")) + `" group 100`
	if got := c.Rules[len(c.Rules)-2].String(); !strings.Contains(got, want) {
		t.Fatalf("log rule %q lacks %q", got, want)
	}
	if got := c.Rules[len(c.Rules)-1].String(); got != "drop" {
		t.Fatalf("last rule %q, want drop", got)
	}
	a := tab.Chain("eg-lab.probe")
	if got := a.Rules[len(a.Rules)-1].String(); got != "accept" {
		t.Fatalf("audit chain ends with %q", got)
	}
	if got := a.Rules[len(a.Rules)-2].String(); !strings.Contains(got, `"nftguard:audit:eg:`) {
		t.Fatalf("audit log rule %q", got)
	}
	if tab.Chain("in-shop.idle") != nil || tab.Chain("eg-shop.idle") != nil {
		t.Fatal("a pod that is not isolated got a chain")
	}
}

// TestRenderSharedAddress: when two pods claim one address, the first pod
// isolated in the direction keeps it.
func TestRenderSharedAddress(t *testing.T) {
	spec := v1alpha1.NodeRuleSetSpec{Pods: []v1alpha1.LocalPod{
		{Namespace: "a", Name: "old", IPs: []string{"198.18.0.1"}},
		{Namespace: "b", Name: "new", IPs: []string{"198.18.0.1"}, Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce}},
		{Namespace: "c", Name: "newer", IPs: []string{"198.18.0.1"}, Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationAudit}},
	}}
	tab, err := Render(spec, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	m := tab.Set(model.MapIngress4)
	if len(m.Elements) != 1 || m.Elements[0].Verdict.Chain != "in-b.new" {
		t.Fatalf("in4 = %v", m.Elements)
	}
}

// TestRenderFamilies: a group gets a set, and the rules matching it a line,
// only for a family it has members of; a group with no member matches
// nothing.
func TestRenderFamilies(t *testing.T) {
	spec := v1alpha1.NodeRuleSetSpec{
		Pods: []v1alpha1.LocalPod{{Namespace: "x", Name: "a", IPs: []string{"198.18.0.1", "fd00::1"},
			Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Rules: []string{"r-in", "r-none"}},
			Egress:  &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Rules: []string{"r-eg"}}}},
		Rules: []v1alpha1.Rule{
			{ID: "r-in", Direction: v1alpha1.DirectionIngress, Peers: []v1alpha1.Peer{
				{AddressGroup: "only4"}, {AddressGroup: "empty"}, {AddressGroup: "only6-nets"}, {IPBlock: &v1alpha1.IPBlock{CIDR: "198.19.0.0/24"}}}},
			{ID: "r-none", Direction: v1alpha1.DirectionIngress, Peers: []v1alpha1.Peer{{AddressGroup: "empty"}}, Ports: []v1alpha1.Port{dptest.TCP(80)}},
			{ID: "r-eg", Direction: v1alpha1.DirectionEgress, Peers: []v1alpha1.Peer{{AddressGroup: "http6"}, {AddressGroup: "http-none"}}},
		},
	}
	named := &v1alpha1.NamedPort{Name: "http", Protocol: v1alpha1.ProtocolTCP}
	groups := map[string]v1alpha1.AddressGroupSpec{
		"only4":      {Addresses: []string{"198.18.1.1"}},
		"empty":      {},
		"only6-nets": {Addresses: []string{"fd00:2::/64"}},
		"http6":      {NamedPort: named, Endpoints: []v1alpha1.Endpoint{{IP: "fd00::1:1", Port: 8080}}},
		"http-none":  {NamedPort: named},
	}
	tab, err := Render(spec, groups, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var sets []string
	for _, s := range tab.Sets {
		sets = append(sets, s.Name)
	}
	if want := []string{shared4("only4"), "agn6-only6-nets", model.MapEgress4, model.MapEgress6, "ep6-http6", model.MapIngress4, model.MapIngress6, "rule-r-in-net4"}; !slices.Equal(sets, want) {
		t.Errorf("sets %q, want %q", sets, want)
	}
	for chain, want := range map[string][]string{
		"rule-r-in": {
			tag("only4") + " . ip saddr @" + shared4("only4") + " accept",
			"ip6 saddr @agn6-only6-nets accept",
			"ip saddr @rule-r-in-net4 accept",
		},
		"rule-r-none": nil,
		"rule-r-eg":   {"ip6 daddr . meta l4proto . th dport @ep6-http6 accept"},
	} {
		c := tab.Chain(chain)
		if c == nil {
			t.Errorf("no chain %s", chain)
			continue
		}
		var got []string
		for _, r := range c.Rules {
			got = append(got, r.String())
		}
		if !slices.Equal(got, want) {
			t.Errorf("chain %s:\n%s\nwant:\n%s", chain, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	// The pod chain still jumps to the rule that matches nothing.
	if c := tab.Chain("in-x.a"); c == nil || len(c.Rules) < 5 || c.Rules[4].String() != "jump rule-r-none" {
		t.Errorf("in-x.a: %v", c)
	}
}

// TestRenderPodReachesItself: each pod chain starts by accepting the pod's
// own traffic to itself (a Service that DNATs back to the pod), by source
// address on ingress and destination address on egress, in both families;
// an Enforce chain drops what conntrack calls invalid first, an Audit chain
// drops nothing.
func TestRenderPodReachesItself(t *testing.T) {
	spec := v1alpha1.NodeRuleSetSpec{Pods: []v1alpha1.LocalPod{{
		Namespace: "x", Name: "a", IPs: []string{"198.18.0.1", "fd00::1"},
		Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce},
		Egress:  &v1alpha1.Isolation{Mode: v1alpha1.IsolationAudit},
	}}}
	tab, err := Render(spec, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for chain, want := range map[string][]string{
		"in-x.a": {"ct state invalid drop", "ip saddr 198.18.0.1 accept", "ip6 saddr fd00::1 accept"},
		"eg-x.a": {"ip daddr 198.18.0.1 accept", "ip6 daddr fd00::1 accept"},
	} {
		c := tab.Chain(chain)
		if c == nil || len(c.Rules) < 4 {
			t.Fatalf("chain %s: %v", chain, c)
		}
		for i, w := range want {
			if got := c.Rules[i].String(); got != w {
				t.Errorf("chain %s rule %d: %q, want %q", chain, i, got, w)
			}
		}
		if last := c.Rules[len(c.Rules)-1].String(); last == "accept" && chain == "in-x.a" {
			t.Errorf("chain %s ends with accept: the pod is not isolated from others", chain)
		}
	}
}

// tag is a group's tag as rules and elements print it.
func tag(group string) string { return fmt.Sprintf("0x%08x", GroupTag(group)) }

// shared4 and shared6 name the shared set holding a group.
func shared4(group string) string { return SharedSetName(model.IPv4, GroupTag(group)) }
func shared6(group string) string { return SharedSetName(model.IPv6, GroupTag(group)) }
