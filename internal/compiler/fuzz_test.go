package compiler

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// fuzzReader turns fuzz bytes into choices; past the end every choice is 0.
type fuzzReader struct {
	b []byte
	i int
}

func (r *fuzzReader) intn(n int) int {
	if r.i >= len(r.b) {
		return 0
	}
	v := r.b[r.i]
	r.i++
	return int(v) % n
}

func (r *fuzzReader) bool() bool { return r.intn(2) == 1 }

func pick[T any](r *fuzzReader, list ...T) T { return list[r.intn(len(list))] }

// fuzzCluster is a small random cluster and what the generator knows about it.
type fuzzCluster struct {
	snap *Snapshot
	// ineligible holds "ns/name" of pods that must appear nowhere, and
	// foreignIPs the addresses only they have.
	ineligible map[string]bool
	foreignIPs map[string]bool
	// hasRules says, per policy key and direction, whether the policy has
	// rules it applies in that direction.
	hasRules map[string][2]bool
	auditDD  map[string]bool
}

func (r *fuzzReader) selector(allowNil bool) *metav1.LabelSelector {
	switch r.intn(7) {
	case 0:
		if allowNil {
			return nil
		}
		return all()
	case 1:
		return all()
	case 2:
		return sel(pick(r, "app", "tier", "team"), pick(r, "a", "b", "c"))
	case 3:
		op := pick(r, in, nin, ex, dnex, metav1.LabelSelectorOperator("Bogus"))
		var values []string
		if op == in || op == nin || r.intn(8) == 0 {
			values = []string{pick(r, "a", "b", "c"), pick(r, "a", "b", "c")}
		}
		return expr(pick(r, "app", "tier", "team"), op, values...)
	case 4:
		return sel(corev1.LabelMetadataName, pick(r, "x", "y", "z"))
	case 5:
		// Namespaces by name, the engine's pinned groups when In.
		return expr(corev1.LabelMetadataName, pick(r, in, nin), pick(r, "x", "y", "z"), pick(r, "x", "y", "z"))
	default:
		s := sel("app", pick(r, "a", "b"))
		s.MatchExpressions = expr("tier", pick(r, ex, dnex)).MatchExpressions
		return s
	}
}

func (r *fuzzReader) peers() []networkingv1.NetworkPolicyPeer {
	n := r.intn(4)
	if n == 3 {
		return []networkingv1.NetworkPolicyPeer{}
	}
	var out []networkingv1.NetworkPolicyPeer
	for range n {
		switch r.intn(5) {
		case 0:
			out = append(out, podPeer(r.selector(false)))
		case 1:
			out = append(out, nsPeer(r.selector(false)))
		case 2:
			out = append(out, bothPeer(r.selector(false), r.selector(false)))
		case 3:
			b := pick(r,
				blockPeer("198.18.0.0/16"), blockPeer("198.18.0.0/15", "198.18.0.0/24", "198.18.0.128/25"),
				blockPeer("fd00::/64", "fd00::/120"), blockPeer("198.18.0.5/32"), blockPeer("0.0.0.0/0", "0.0.0.0/0"),
				blockPeer("not-a-cidr"))
			out = append(out, b)
		default:
			out = append(out, networkingv1.NetworkPolicyPeer{}) // invalid: selects nothing
		}
	}
	return out
}

func (r *fuzzReader) ports() []networkingv1.NetworkPolicyPort {
	n := r.intn(4)
	if n == 0 {
		return pick(r, nil, []networkingv1.NetworkPolicyPort{})
	}
	var out []networkingv1.NetworkPolicyPort
	for range n {
		out = append(out, pick(r,
			tcp(80), np(udp, 53), np(sctp, 80), np(udp, nil), tcp("http"), np(udp, "dns"), tcp("metrics"),
			portRange(corev1.ProtocolTCP, 80, 90), tcp(0), np("ICMP", 1), portRange(udp, 90, 80)))
	}
	return out
}

func fuzzClusterFrom(data []byte) *fuzzCluster {
	r := &fuzzReader{b: data}
	c := &fuzzCluster{ineligible: map[string]bool{}, foreignIPs: map[string]bool{}, hasRules: map[string][2]bool{}, auditDD: map[string]bool{}}
	s := &Snapshot{}
	nodes := 1 + r.intn(3)
	for i := range nodes {
		s.Nodes = append(s.Nodes, mkNode(fmt.Sprintf("n%d", i)))
	}
	// Namespace z may be missing: its pods still exist.
	for _, ns := range []string{"x", "y", "z"}[:1+r.intn(3)] {
		s.Namespaces = append(s.Namespaces, mkNS(ns, "team", pick(r, "a", "b", "c")))
	}
	for i := range r.intn(12) {
		ns := pick(r, "x", "y", "z")
		name := fmt.Sprintf("p%d", i)
		node := "n" + fmt.Sprint(r.intn(nodes))
		eligible := true
		switch r.intn(10) {
		case 0:
			node, eligible = "", false
		case 1:
			node = "gone" // a peer, not a local pod
		}
		v4, v6 := fmt.Sprintf("198.18.0.%d", i+1), fmt.Sprintf("fd00::%x", i+1)
		// A pod without a valid address yet is still a local pod (listed
		// by UID before it has addresses), and a peer of nothing.
		ips := pick(r, v4, v4, v6, v4+","+v6, "", "bogus")
		var opts []podOpt
		labels := []string{}
		if r.bool() {
			labels = append(labels, "app", pick(r, "a", "b", "c"))
		}
		if r.bool() {
			labels = append(labels, "tier", pick(r, "a", "b"))
		}
		opts = append(opts, labelsOf(labels...))
		switch r.intn(4) {
		case 1:
			opts = append(opts, containerPorts(cport("http", pick[int32](r, 80, 8080), "")))
		case 2:
			opts = append(opts, containerPorts(cport("dns", 53, udp), cport("http", 80, corev1.ProtocolUDP)))
		case 3:
			opts = append(opts, initPorts(cport("metrics", 9100, ""), cport("http", 81, "")))
		}
		switch r.intn(8) {
		case 0:
			opts = append(opts, hostNetwork())
			eligible = false
		case 1:
			opts = append(opts, phase(pick(r, corev1.PodSucceeded, corev1.PodFailed)))
			eligible = false
		case 2:
			opts = append(opts, phase(corev1.PodPending))
		}
		s.Pods = append(s.Pods, mkPod(ns, name, node, ips, opts...))
		if !eligible {
			c.ineligible[ns+"/"+name] = true
			for _, ip := range strings.Split(ips, ",") {
				if ip != "" {
					c.foreignIPs[strings.ToLower(ip)] = true
				}
			}
		}
	}
	for i := range r.intn(5) {
		ns := pick(r, "x", "y", "z")
		p := mkNP(ns, fmt.Sprintf("np%d", i), r.selector(false))
		switch r.intn(5) {
		case 1:
			p.Spec.PolicyTypes = []networkingv1.PolicyType{tIn}
		case 2:
			p.Spec.PolicyTypes = []networkingv1.PolicyType{tEg}
		case 3:
			p.Spec.PolicyTypes = []networkingv1.PolicyType{tEg, tIn}
		}
		for range r.intn(3) {
			p.Spec.Ingress = append(p.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{Ports: r.ports(), From: r.peers()})
		}
		for range r.intn(3) {
			p.Spec.Egress = append(p.Spec.Egress, networkingv1.NetworkPolicyEgressRule{Ports: r.ports(), To: r.peers()})
		}
		types := [2]bool{true, len(p.Spec.Egress) > 0}
		if len(p.Spec.PolicyTypes) > 0 {
			types = [2]bool{slices.Contains(p.Spec.PolicyTypes, tIn), slices.Contains(p.Spec.PolicyTypes, tEg)}
		}
		c.hasRules[v1alpha1.NetworkPolicyKey(ns, p.Name)] = [2]bool{types[0] && len(p.Spec.Ingress) > 0, types[1] && len(p.Spec.Egress) > 0}
		s.NetworkPolicies = append(s.NetworkPolicies, p)
	}
	for i := range r.intn(3) {
		var opts []ddOpt
		if r.bool() {
			opts = append(opts, ddAudit())
			c.auditDD[v1alpha1.DefaultDenyKey(fmt.Sprintf("dd%d", i))] = true
		}
		if r.bool() {
			opts = append(opts, ddPods(r.selector(false)))
		}
		types := [2]bool{true, true}
		switch r.intn(3) {
		case 1:
			opts = append(opts, ddTypes(v1alpha1.PolicyTypeIngress))
			types[1] = false
		case 2:
			opts = append(opts, ddTypes(v1alpha1.PolicyTypeEgress))
			types[0] = false
		}
		nIn, nEg := r.intn(3), r.intn(3)
		for range nIn {
			opts = append(opts, ddIngress(r.ports(), r.peers()...))
		}
		for range nEg {
			opts = append(opts, ddEgress(r.ports(), r.peers()...))
		}
		c.hasRules[v1alpha1.DefaultDenyKey(fmt.Sprintf("dd%d", i))] = [2]bool{types[0] && nIn > 0, types[1] && nEg > 0}
		s.DefaultDenies = append(s.DefaultDenies, mkDD(fmt.Sprintf("dd%d", i), r.selector(false), opts...))
	}
	c.snap = s
	return c
}

func FuzzCompile(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("nftguard"))
	f.Add([]byte{2, 2, 0, 0, 0, 9, 0, 1, 0, 1, 2, 1, 3, 0, 1, 0, 4, 1, 2, 0, 0, 1, 2, 3, 1, 1, 2, 0, 3, 1, 2, 2, 3, 1, 0, 2, 1})
	rng := rand.New(rand.NewPCG(1, 2))
	for range 16 {
		b := make([]byte, 64+rng.IntN(192))
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := fuzzClusterFrom(data)
		// Every third cluster runs with nftguard's namespace y exempt.
		var opts Options
		if len(data)%3 == 1 {
			opts.ExemptNamespaces = []string{"y"}
		}
		// Every other one has its policies' ipBlocks made into groups.
		if len(data)%2 == 0 {
			opts.MaxInlineBlocks = 1
		}
		res := CompileWith(c.snap, opts)
		want := mustJSON(t, res)
		if got := mustJSON(t, CompileWith(c.snap, opts)); got != want {
			t.Fatal("two compilations differ")
		}
		if got := mustJSON(t, CompileWith(shuffled(c.snap, uint64(len(data))), opts)); got != want {
			t.Fatal("shuffled input changes the result")
		}
		checkIntegrity(t, res)
		checkInvariants(t, c, res)
		checkOracle(t, c.snap, res, opts.ExemptNamespaces...)
		for node, spec := range res.NodeRuleSets {
			for _, p := range spec.Pods {
				if slices.Contains(opts.ExemptNamespaces, p.Namespace) && (p.Ingress != nil || p.Egress != nil) {
					t.Errorf("node %s: pod %s/%s of an exempt namespace is isolated", node, p.Namespace, p.Name)
				}
			}
		}
	})
}

func checkInvariants(t *testing.T, c *fuzzCluster, res *Result) {
	t.Helper()
	if len(res.NodeRuleSets) != len(c.snap.Nodes) {
		t.Errorf("%d rule sets for %d nodes", len(res.NodeRuleSets), len(c.snap.Nodes))
	}
	if len(res.Policies) != len(c.hasRules) {
		t.Errorf("%d spans for %d policies", len(res.Policies), len(c.hasRules))
	}
	for key := range c.hasRules {
		if _, ok := res.Policies[key]; !ok {
			t.Errorf("no span for %s", key)
		}
	}
	for node, spec := range res.NodeRuleSets {
		if !slices.IsSortedFunc(spec.Pods, func(a, b v1alpha1.LocalPod) int {
			return compareNsNames(nsName{a.Namespace, a.Name}, nsName{b.Namespace, b.Name})
		}) {
			t.Errorf("node %s: pods not sorted", node)
		}
		if !slices.IsSortedFunc(spec.Rules, func(a, b v1alpha1.Rule) int { return strings.Compare(a.ID, b.ID) }) {
			t.Errorf("node %s: rules not sorted", node)
		}
		if !slices.IsSorted(spec.AddressGroups) {
			t.Errorf("node %s: groups not sorted", node)
		}
		for _, p := range spec.Pods {
			key := p.Namespace + "/" + p.Name
			if c.ineligible[key] {
				t.Errorf("node %s: ineligible pod %s is local", node, key)
			}
			for d, iso := range []*v1alpha1.Isolation{p.Ingress, p.Egress} {
				if iso == nil {
					continue
				}
				if !slices.IsSorted(iso.Policies) || !slices.IsSorted(iso.Rules) {
					t.Errorf("pod %s: isolation lists not sorted: %+v", key, iso)
				}
				anyRules := false
				for _, pol := range iso.Policies {
					anyRules = anyRules || c.hasRules[pol][d]
					if (iso.Mode == v1alpha1.IsolationAudit) != c.auditDD[pol] {
						t.Errorf("pod %s: %s isolation lists %s", key, iso.Mode, pol)
					}
				}
				if !anyRules && len(iso.Rules) > 0 {
					t.Errorf("pod %s direction %d: rules %v from policies %v without rules", key, d, iso.Rules, iso.Policies)
				}
			}
		}
	}
	for name, g := range res.AddressGroups {
		for _, a := range g.Addresses {
			if c.foreignIPs[a] {
				t.Errorf("group %s holds %s of an ineligible pod", name, a)
			}
		}
		for _, e := range g.Endpoints {
			if c.foreignIPs[e.IP] {
				t.Errorf("group %s holds %s of an ineligible pod", name, e.IP)
			}
		}
	}
}
