package compiler

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"regexp"
	"runtime"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

const (
	udp  = corev1.ProtocolUDP
	sctp = corev1.ProtocolSCTP
	in   = metav1.LabelSelectorOpIn
	nin  = metav1.LabelSelectorOpNotIn
	ex   = metav1.LabelSelectorOpExists
	dnex = metav1.LabelSelectorOpDoesNotExist
)

// base is the cluster of the upstream NetworkPolicy e2e suite: namespaces x,
// y, z, each with pods a, b, c (a and c on node n1, b on n2). Pod a has
// tier=web; a declares http=80, b http=8080, c declares no http but dns/UDP
// and, in a sidecar, metrics=9100.
func base() []any {
	objs := []any{mkNode("n1"), mkNode("n2")}
	for i, ns := range []string{"x", "y", "z"} {
		objs = append(objs, mkNS(ns, "ns", ns))
		net := []string{"198.18.1.", "198.18.2.", "198.18.3."}[i]
		objs = append(objs,
			mkPod(ns, "a", "n1", net+"1", labelsOf("app", "a", "tier", "web"),
				containerPorts(cport("serve-80-tcp", 80, ""), cport("http", 80, corev1.ProtocolTCP))),
			mkPod(ns, "b", "n2", net+"2", labelsOf("app", "b"), containerPorts(cport("http", 8080, ""))),
			mkPod(ns, "c", "n1", net+"3", labelsOf("app", "c"),
				containerPorts(cport("dns", 53, udp)), initPorts(cport("metrics", 9100, ""))),
		)
	}
	return objs
}

var (
	xPods = []string{"x/a", "x/b", "x/c"}
	yPods = []string{"y/a", "y/b", "y/c"}
	zPods = []string{"z/a", "z/b", "z/c"}
)

// each gives every listed pod the same view.
func each(v podView, pods ...[]string) map[string]podView {
	out := map[string]podView{}
	for _, list := range pods {
		for _, p := range list {
			out[p] = v
		}
	}
	return out
}

func merge(ms ...map[string]podView) map[string]podView {
	out := map[string]podView{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

func TestCompilePolicies(t *testing.T) {
	const (
		npx  = "NetworkPolicy/x/p"
		npx2 = "NetworkPolicy/x/q"
		dd   = "DefaultDeny/dd"
	)
	xAll := "pods(198.18.1.1 198.18.1.2 198.18.1.3)"
	tests := []struct {
		name string
		objs []any
		// want lists the pods a policy isolates; every other local pod of
		// the base cluster must be isolated in neither direction.
		want map[string]podView
	}{
		{
			name: "no policies isolate nothing",
		},
		// policyTypes.
		{
			name: "ingress only",
			objs: []any{mkNP("x", "p", all(), policyTypes(tIn))},
			want: each(podView{In: enforce(pols(npx))}, xPods),
		},
		{
			name: "egress only",
			objs: []any{mkNP("x", "p", all(), policyTypes(tEg))},
			want: each(podView{Eg: enforce(pols(npx))}, xPods),
		},
		{
			name: "ingress and egress",
			objs: []any{mkNP("x", "p", all(), policyTypes(tIn, tEg))},
			want: each(podView{In: enforce(pols(npx)), Eg: enforce(pols(npx))}, xPods),
		},
		{
			name: "empty policyTypes without egress rules isolate ingress",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(nil))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "any on all")}},
		},
		{
			name: "empty policyTypes with egress rules isolate both",
			objs: []any{mkNP("x", "p", sel("app", "a"), egressRule(ports(tcp(53))))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx)), Eg: enforce(pols(npx), "any on TCP/53")}},
		},
		{
			name: "rules of a direction outside policyTypes are ignored",
			objs: []any{mkNP("x", "p", sel("app", "a"), policyTypes(tIn),
				ingressRule(nil, podPeer(sel("app", "b"))), egressRule(nil))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "pods(198.18.1.2) on all")}},
		},
		{
			name: "a NetworkPolicy selects pods of its namespace only",
			objs: []any{mkNP("y", "p", all(), policyTypes(tIn))},
			want: each(podView{In: enforce(pols("NetworkPolicy/y/p"))}, yPods),
		},
		// Peers.
		{
			name: "podSelector peer means the policy's namespace",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(nil, podPeer(sel("app", "b"))))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "pods(198.18.1.2) on all")}},
		},
		{
			name: "empty podSelector peer means every pod of the namespace",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(nil, podPeer(all())))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), xAll+" on all")}},
		},
		{
			name: "namespaceSelector peer",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(nil, nsPeer(sel("ns", "y"))))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "pods(198.18.2.1 198.18.2.2 198.18.2.3) on all")}},
		},
		{
			name: "empty namespaceSelector means every namespace",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(nil, nsPeer(all())))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx),
				"pods(198.18.1.1 198.18.1.2 198.18.1.3 198.18.2.1 198.18.2.2 198.18.2.3 198.18.3.1 198.18.3.2 198.18.3.3) on all")}},
		},
		{
			name: "namespaceSelector on the metadata name label",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(nil, nsPeer(sel(corev1.LabelMetadataName, "z"))))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "pods(198.18.3.1 198.18.3.2 198.18.3.3) on all")}},
		},
		{
			name: "namespaceSelector and podSelector together",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(nil, bothPeer(sel("ns", "y"), sel("app", "b"))))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "pods(198.18.2.2) on all")}},
		},
		{
			name: "matchExpressions In",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(nil, podPeer(expr("app", in, "b", "a"))))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "pods(198.18.1.1 198.18.1.2) on all")}},
		},
		{
			name: "matchExpressions NotIn",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(nil, podPeer(expr("app", nin, "a"))))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "pods(198.18.1.2 198.18.1.3) on all")}},
		},
		{
			name: "matchExpressions Exists",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(nil, podPeer(expr("tier", ex))))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "pods(198.18.1.1) on all")}},
		},
		{
			name: "matchExpressions DoesNotExist",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(nil, podPeer(expr("tier", dnex))))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "pods(198.18.1.2 198.18.1.3) on all")}},
		},
		{
			name: "matchExpressions on namespaces with a pod selector",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(nil, bothPeer(expr("ns", nin, "x"), sel("app", "a"))))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "pods(198.18.2.1 198.18.3.1) on all")}},
		},
		{
			name: "matchExpressions select the target pods",
			objs: []any{mkNP("x", "p", expr("app", nin, "a"), policyTypes(tIn))},
			want: each(podView{In: enforce(pols(npx))}, []string{"x/b", "x/c"}),
		},
		{
			name: "an invalid peer selector selects nothing",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(nil, podPeer(expr("app", "Bogus", "b"))))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "pods() on all")}},
		},
		{
			name: "an invalid target selector selects nothing",
			objs: []any{mkNP("x", "p", expr("app", in), policyTypes(tIn))},
		},
		{
			name: "ipBlock with except, normalised",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(nil,
				blockPeer("198.18.1.7/16", "198.18.200.0/24", "198.18.1.128/25", "10.0.0.0/8", "198.18.1.9/24")))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "cidr(198.18.0.0/16 except 198.18.1.0/24 198.18.200.0/24) on all")}},
		},
		{
			name: "ipBlock that its except empties selects nothing",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(nil, blockPeer("198.18.1.0/24", "198.18.0.0/16")))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx))}},
		},
		{
			name: "ipBlock of IPv6",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(nil, blockPeer("FD00:0:0:0::5/64", "fd00::1:0/112")))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "cidr(fd00::/64 except fd00::1:0/112) on all")}},
		},
		// Empty and absent lists.
		{
			name: "absent from and ports allow everything",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(nil))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "any on all")}},
		},
		{
			name: "empty from and ports allow everything",
			objs: []any{mkNP("x", "p", sel("app", "a"), func(n *networkingv1.NetworkPolicy) {
				n.Spec.Ingress = append(n.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{
					From: []networkingv1.NetworkPolicyPeer{}, Ports: []networkingv1.NetworkPolicyPort{}})
			})},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "any on all")}},
		},
		{
			name: "empty to with ports",
			objs: []any{mkNP("x", "p", sel("app", "a"), policyTypes(tEg), func(n *networkingv1.NetworkPolicy) {
				n.Spec.Egress = append(n.Spec.Egress, networkingv1.NetworkPolicyEgressRule{
					To: []networkingv1.NetworkPolicyPeer{}, Ports: ports(tcp(80))})
			})},
			want: map[string]podView{"x/a": {Eg: enforce(pols(npx), "any on TCP/80")}},
		},
		// Ports.
		{
			name: "numeric ports of each protocol",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(ports(tcp(80), np(udp, 81), np(sctp, 82), np(corev1.ProtocolTCP, 80))))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "any on SCTP/82 TCP/80 UDP/81")}},
		},
		{
			name: "protocol without port covers every port of it",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(ports(np(udp, nil), np(udp, 53), tcp(80))))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "any on TCP/80 UDP/*")}},
		},
		{
			name: "endPort ranges",
			objs: []any{mkNP("x", "p", sel("app", "a"), ingressRule(ports(portRange(corev1.ProtocolTCP, 8000, 8080), portRange(udp, 53, 53))))},
			want: map[string]podView{"x/a": {In: enforce(pols(npx), "any on TCP/8000-8080 UDP/53")}},
		},
		{
			name: "ingress named port resolves on each local pod",
			objs: []any{mkNP("x", "p", all(), ingressRule(ports(tcp("http"))))},
			want: map[string]podView{
				"x/a": {In: enforce(pols(npx), "any on TCP/80")},
				"x/b": {In: enforce(pols(npx), "any on TCP/8080")},
				// c does not declare http: the rule allows it nothing.
				"x/c": {In: enforce(pols(npx))},
			},
		},
		{
			name: "ingress named and numeric ports",
			objs: []any{mkNP("x", "p", all(), ingressRule(ports(tcp("http"), tcp(9090)), podPeer(sel("app", "b"))))},
			want: map[string]podView{
				"x/a": {In: enforce(pols(npx), "pods(198.18.1.2) on TCP/80 TCP/9090")},
				"x/b": {In: enforce(pols(npx), "pods(198.18.1.2) on TCP/8080 TCP/9090")},
				"x/c": {In: enforce(pols(npx), "pods(198.18.1.2) on TCP/9090")},
			},
		},
		{
			name: "ingress named port must match the protocol",
			objs: []any{mkNP("x", "p", all(), ingressRule(ports(np(udp, "http"), np(udp, "dns"))))},
			want: map[string]podView{
				"x/a": {In: enforce(pols(npx))},
				"x/b": {In: enforce(pols(npx))},
				"x/c": {In: enforce(pols(npx), "any on UDP/53")},
			},
		},
		{
			name: "ingress named port of a sidecar container",
			objs: []any{mkNP("x", "p", sel("app", "c"), ingressRule(ports(tcp("metrics"))))},
			want: map[string]podView{"x/c": {In: enforce(pols(npx), "any on TCP/9100")}},
		},
		{
			name: "egress named port becomes an endpoint group of the peers",
			objs: []any{mkNP("x", "p", sel("app", "a"), policyTypes(tEg), egressRule(ports(tcp("http")), podPeer(all())))},
			want: map[string]podView{"x/a": {Eg: enforce(pols(npx), "eps(198.18.1.1:80 198.18.1.2:8080) on all")}},
		},
		{
			name: "egress rule mixing numeric and named ports splits",
			objs: []any{mkNP("x", "p", sel("app", "a"), policyTypes(tEg),
				egressRule(ports(tcp("http"), tcp(443), np(udp, "dns")), podPeer(all()), blockPeer("10.0.0.0/8")))},
			want: map[string]podView{"x/a": {Eg: enforce(pols(npx),
				"cidr(10.0.0.0/8) "+xAll+" on TCP/443",
				"eps(198.18.1.1:80 198.18.1.2:8080) on all",
				"eps(198.18.1.3:53) on all",
			)}},
		},
		{
			name: "egress named port with empty to means every pod declaring it",
			objs: []any{mkNP("x", "p", sel("app", "a"), policyTypes(tEg), egressRule(ports(tcp("http"))))},
			want: map[string]podView{"x/a": {Eg: enforce(pols(npx),
				"eps(198.18.1.1:80 198.18.1.2:8080 198.18.2.1:80 198.18.2.2:8080 198.18.3.1:80 198.18.3.2:8080) on all")}},
		},
		{
			name: "egress named port never matches an ipBlock",
			objs: []any{mkNP("x", "p", sel("app", "a"), policyTypes(tEg), egressRule(ports(tcp("http")), blockPeer("0.0.0.0/0")))},
			want: map[string]podView{"x/a": {Eg: enforce(pols(npx))}},
		},
		// Stacking.
		{
			name: "policies selecting the same pod stack",
			objs: []any{
				mkNP("x", "q", sel("app", "a"), ingressRule(ports(tcp(81)), podPeer(sel("app", "c")))),
				mkNP("x", "p", all(), ingressRule(ports(tcp(80)), podPeer(sel("app", "b")))),
			},
			want: merge(
				each(podView{In: enforce(pols(npx), "pods(198.18.1.2) on TCP/80")}, []string{"x/b", "x/c"}),
				map[string]podView{"x/a": {In: enforce(pols(npx, npx2), "pods(198.18.1.2) on TCP/80", "pods(198.18.1.3) on TCP/81")}},
			),
		},
		{
			name: "the same rule from two policies is one rule",
			objs: []any{
				mkNP("x", "q", sel("app", "a"), ingressRule(ports(tcp(80)), podPeer(sel("app", "b")))),
				mkNP("x", "p", sel("app", "a"), ingressRule(ports(tcp(80)), podPeer(expr("app", in, "b")), podPeer(sel("app", "b")))),
			},
			want: map[string]podView{"x/a": {In: enforce(pols(npx, npx2), "pods(198.18.1.2) on TCP/80")}},
		},
		// DefaultDeny.
		{
			name: "DefaultDeny enforce isolates both directions by default",
			objs: []any{mkDD("dd", sel("ns", "x"))},
			want: each(podView{In: enforce(pols(dd)), Eg: enforce(pols(dd))}, xPods),
		},
		{
			name: "DefaultDeny audit",
			objs: []any{mkDD("dd", expr("ns", in, "x", "y"), ddAudit())},
			want: each(podView{In: audit(pols(dd)), Eg: audit(pols(dd))}, xPods, yPods),
		},
		{
			name: "DefaultDeny with a podSelector and one type",
			objs: []any{mkDD("dd", all(), ddPods(sel("app", "a")), ddTypes(v1alpha1.PolicyTypeIngress), ddEnforce())},
			want: each(podView{In: enforce(pols(dd))}, []string{"x/a", "y/a", "z/a"}),
		},
		{
			name: "DefaultDeny allowed rules: podSelector-only peers mean the pod's namespace",
			objs: []any{mkDD("dd", expr("ns", in, "x", "y"),
				ddIngress(nil, podPeer(sel("app", "b"))),
				ddEgress(ports(np(udp, 53)), bothPeer(sel("ns", "z"), sel("app", "c"))))},
			want: merge(
				each(podView{In: enforce(pols(dd), "pods(198.18.1.2) on all"), Eg: enforce(pols(dd), "pods(198.18.3.3) on UDP/53")}, xPods),
				each(podView{In: enforce(pols(dd), "pods(198.18.2.2) on all"), Eg: enforce(pols(dd), "pods(198.18.3.3) on UDP/53")}, yPods),
			),
		},
		{
			name: "DefaultDeny allowed rules outside its policyTypes are ignored",
			objs: []any{mkDD("dd", sel("ns", "x"), ddTypes(v1alpha1.PolicyTypeIngress), ddEgress(nil, podPeer(all())))},
			want: each(podView{In: enforce(pols(dd))}, xPods),
		},
		{
			name: "DefaultDeny audit allowed rules",
			objs: []any{mkDD("dd", sel("ns", "z"), ddAudit(), ddEgress(ports(np(udp, 53)), nsPeer(sel("ns", "x"))))},
			want: each(podView{In: audit(pols(dd)), Eg: audit(pols(dd), xAll+" on UDP/53")}, zPods),
		},
		{
			name: "audit never weakens a NetworkPolicy",
			objs: []any{
				mkNP("x", "p", all(), policyTypes(tIn)),
				mkDD("dd", all(), ddAudit(), ddIngress(nil)),
			},
			want: merge(
				each(podView{In: enforce(pols(npx)), Eg: audit(pols(dd))}, xPods),
				each(podView{In: audit(pols(dd), "any on all"), Eg: audit(pols(dd))}, yPods, zPods),
			),
		},
		{
			name: "an enforcing DefaultDeny hides audit ones",
			objs: []any{
				mkDD("e", sel("ns", "x")),
				mkDD("a", all(), ddAudit(), ddEgress(nil)),
			},
			want: merge(
				each(podView{In: enforce(pols("DefaultDeny/e")), Eg: enforce(pols("DefaultDeny/e"))}, xPods),
				each(podView{In: audit(pols("DefaultDeny/a")), Eg: audit(pols("DefaultDeny/a"), "any on all")}, yPods, zPods),
			),
		},
		{
			name: "DefaultDeny and NetworkPolicy stack",
			objs: []any{
				mkDD("dd", sel("ns", "x"), ddTypes(v1alpha1.PolicyTypeIngress), ddIngress(nil, podPeer(sel("app", "c")))),
				mkNP("x", "p", sel("app", "a"), ingressRule(nil, podPeer(sel("app", "b")))),
			},
			want: merge(
				each(podView{In: enforce(pols(dd), "pods(198.18.1.3) on all")}, []string{"x/b", "x/c"}),
				map[string]podView{"x/a": {In: enforce(pols(dd, npx), "pods(198.18.1.2) on all", "pods(198.18.1.3) on all")}},
			),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := Compile(snap(base(), tt.objs))
			got := views(t, res)
			want := map[string]podView{}
			for _, p := range append(append(append([]string{}, xPods...), yPods...), zPods...) {
				want[p] = tt.want[p]
			}
			if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("views (-want +got):\n%s", diff)
			}
			checkIntegrity(t, res)
			checkOracle(t, snap(base(), tt.objs), res)
		})
	}
}

// checkIntegrity checks the references of a result: each node's rules are
// exactly those its pods use, its groups exactly those its rules use, every
// group exists and no group is emitted that no node uses.
func checkIntegrity(t *testing.T, res *Result) {
	t.Helper()
	used := map[string]bool{}
	for node, spec := range res.NodeRuleSets {
		ids := map[string]bool{}
		for _, p := range spec.Pods {
			for _, iso := range []*v1alpha1.Isolation{p.Ingress, p.Egress} {
				if iso == nil {
					continue
				}
				if len(iso.Policies) == 0 {
					t.Errorf("node %s pod %s/%s: isolation without policies", node, p.Namespace, p.Name)
				}
				for _, id := range iso.Rules {
					ids[id] = true
				}
			}
		}
		groups := map[string]bool{}
		for _, r := range spec.Rules {
			if !ids[r.ID] {
				t.Errorf("node %s: rule %s not used by any pod", node, r.ID)
			}
			delete(ids, r.ID)
			if len(r.Policies) == 0 {
				t.Errorf("node %s: rule %s without policies", node, r.ID)
			}
			for _, p := range r.Peers {
				if (p.AddressGroup == "") == (p.IPBlock == nil) {
					t.Errorf("node %s: rule %s: peer must set exactly one of group and ipBlock: %+v", node, r.ID, p)
				}
				if p.AddressGroup != "" {
					groups[p.AddressGroup] = true
				}
			}
		}
		for id := range ids {
			t.Errorf("node %s: rule %s used but missing", node, id)
		}
		var want []string
		for g := range groups {
			want = append(want, g)
			used[g] = true
			if _, ok := res.AddressGroups[g]; !ok {
				t.Errorf("node %s: group %s missing from the result", node, g)
			}
		}
		if diff := cmp.Diff(want, spec.AddressGroups, cmpopts.SortSlices(func(a, b string) bool { return a < b }), cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("node %s: addressGroups (-want +got):\n%s", node, diff)
		}
	}
	for g := range res.AddressGroups {
		if !used[g] {
			t.Errorf("group %s emitted but used by no node", g)
		}
	}
}

func TestEligibility(t *testing.T) {
	objs := []any{
		mkNode("n1"), mkNode("n2"), mkNode("empty"), mkNS("x"),
		mkPod("x", "running", "n1", "198.18.0.1"),
		mkPod("x", "pending-with-ip", "n2", "198.18.0.2", phase(corev1.PodPending)),
		mkPod("x", "legacy", "n1", "198.18.0.3", legacyIP()),
		mkPod("x", "dual", "n2", "198.18.0.4,FD00::0004"),
		mkPod("x", "v6", "n2", "fd00::5"),
		mkPod("x", "host", "n1", "198.18.9.1", hostNetwork()),
		mkPod("x", "no-ip", "n1", ""),
		mkPod("x", "bad-ip", "n1", "not-an-ip"),
		mkPod("x", "unscheduled", "", "198.18.9.2"),
		mkPod("x", "succeeded", "n1", "198.18.9.3", phase(corev1.PodSucceeded)),
		mkPod("x", "failed", "n1", "198.18.9.4", phase(corev1.PodFailed)),
		mkPod("x", "elsewhere", "gone", "198.18.0.6"),
		mkNP("x", "p", all(), ingressRule(nil, nsPeer(all()))),
	}
	res := Compile(snap(objs...))
	type local struct{ Name, IPs string }
	got := map[string][]local{}
	for node, spec := range res.NodeRuleSets {
		got[node] = []local{}
		for _, p := range spec.Pods {
			ips, _ := json.Marshal(p.IPs)
			got[node] = append(got[node], local{p.Name, string(ips)})
		}
	}
	// Pods without a valid address yet are listed (by UID) so that their
	// node can program them the moment they have one; they are peers of
	// nothing.
	want := map[string][]local{
		"n1":    {{"bad-ip", `null`}, {"legacy", `["198.18.0.3"]`}, {"no-ip", `null`}, {"running", `["198.18.0.1"]`}},
		"n2":    {{"dual", `["198.18.0.4","fd00::4"]`}, {"pending-with-ip", `["198.18.0.2"]`}, {"v6", `["fd00::5"]`}},
		"empty": {},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("local pods (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(v1alpha1.NodeRuleSetSpec{}, res.NodeRuleSets["empty"]); diff != "" {
		t.Errorf("empty node (-want +got):\n%s", diff)
	}
	// The peer group holds every eligible pod, the one on a node missing
	// from the snapshot included.
	if len(res.AddressGroups) != 1 {
		t.Fatalf("got %d groups, want 1", len(res.AddressGroups))
	}
	for _, g := range res.AddressGroups {
		want := []string{"198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.0.4", "198.18.0.6", "fd00::4", "fd00::5"}
		if diff := cmp.Diff(want, g.Addresses); diff != "" {
			t.Errorf("members (-want +got):\n%s", diff)
		}
	}
	if diff := cmp.Diff(PolicySpan{SelectedPods: 7, Nodes: []string{"n1", "n2"}}, res.Policies["NetworkPolicy/x/p"]); diff != "" {
		t.Errorf("span (-want +got):\n%s", diff)
	}
	checkIntegrity(t, res)
}

func TestSameRuleFromTwoPoliciesIsOneRule(t *testing.T) {
	res := Compile(snap(base(),
		mkNP("x", "q", sel("app", "a"), ingressRule(ports(tcp(80)), podPeer(sel("app", "b")))),
		// The same rule spelt differently, with a duplicated peer and port.
		mkNP("x", "p", sel("app", "a"), ingressRule(ports(tcp(80), tcp(80)), podPeer(expr("app", in, "b")), podPeer(expr("app", in, "b", "b")))),
		// The same rule selecting a pod on the other node.
		mkNP("x", "r", sel("app", "b"), ingressRule(ports(tcp(80)), podPeer(sel("app", "b")))),
		// The same words in namespace y: another group, another rule.
		mkNP("y", "p", sel("app", "a"), ingressRule(ports(tcp(80)), podPeer(sel("app", "b")))),
	))
	rulesOf := func(node, ns, name string) (ids []string, byID map[string]v1alpha1.Rule) {
		byID = map[string]v1alpha1.Rule{}
		for _, r := range res.NodeRuleSets[node].Rules {
			byID[r.ID] = r
		}
		for _, p := range res.NodeRuleSets[node].Pods {
			if p.Namespace == ns && p.Name == name && p.Ingress != nil {
				ids = p.Ingress.Rules
			}
		}
		return ids, byID
	}
	xa, n1 := rulesOf("n1", "x", "a")
	ya, _ := rulesOf("n1", "y", "a")
	xb, n2 := rulesOf("n2", "x", "b")
	if len(xa) != 1 || len(ya) != 1 || len(xb) != 1 {
		t.Fatalf("want one ingress rule each, got x/a %v, y/a %v, x/b %v", xa, ya, xb)
	}
	if xa[0] != xb[0] {
		t.Errorf("the same rule has ids %s on n1 and %s on n2", xa[0], xb[0])
	}
	if xa[0] == ya[0] {
		t.Errorf("rules of namespaces x and y share id %s", xa[0])
	}
	group := n1[xa[0]].Peers[0].AddressGroup
	if !regexp.MustCompile(`^ag-[0-9a-f]{16}$`).MatchString(group) {
		t.Errorf("group name %q", group)
	}
	if !regexp.MustCompile(`^r-[0-9a-f]{12}$`).MatchString(xa[0]) {
		t.Errorf("rule id %q", xa[0])
	}
	want := v1alpha1.Rule{
		ID:        xa[0],
		Direction: v1alpha1.DirectionIngress,
		Peers:     []v1alpha1.Peer{{AddressGroup: group}},
		Ports:     []v1alpha1.Port{{Protocol: v1alpha1.ProtocolTCP, Port: 80}},
		Policies:  []string{"NetworkPolicy/x/p", "NetworkPolicy/x/q"},
	}
	if diff := cmp.Diff(want, n1[xa[0]]); diff != "" {
		t.Errorf("rule on n1 (-want +got):\n%s", diff)
	}
	// A rule lists the policies it comes from on its node only.
	want.Policies = []string{"NetworkPolicy/x/r"}
	if diff := cmp.Diff(want, n2[xb[0]]); diff != "" {
		t.Errorf("rule on n2 (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(v1alpha1.AddressGroupSpec{Namespace: "x", PodSelector: sel("app", "b"), Addresses: []string{"198.18.1.2"}}, res.AddressGroups[group]); diff != "" {
		t.Errorf("group (-want +got):\n%s", diff)
	}
	checkIntegrity(t, res)
}

func TestAddressGroups(t *testing.T) {
	res := Compile(snap(base(),
		// Shared by ingress and egress, spelt two ways.
		mkNP("x", "p", sel("app", "a"), ingressRule(nil, podPeer(sel("app", "b")))),
		mkNP("x", "q", sel("app", "a"), policyTypes(tEg), egressRule(nil, podPeer(expr("app", in, "b")))),
		// A namespaceSelector alone and with an empty podSelector.
		mkNP("x", "r", sel("app", "c"), ingressRule(nil, nsPeer(sel("ns", "y")), bothPeer(sel("ns", "y"), all()))),
		// Every pod of the namespace; a selector matching no pod.
		mkNP("y", "p", sel("app", "c"), ingressRule(nil, podPeer(all()), podPeer(sel("app", "nobody")))),
		// A named port on egress.
		mkNP("z", "p", sel("app", "a"), policyTypes(tEg), egressRule(ports(tcp("http")), podPeer(sel("app", "b")))),
		// A DefaultDeny's podSelector-only peer in two namespaces, one of
		// them giving the group of x/p again.
		mkDD("dd", expr("ns", in, "x", "z"), ddTypes(v1alpha1.PolicyTypeIngress), ddIngress(nil, podPeer(sel("app", "b")))),
		// A policy selecting no pod: its group is not emitted.
		mkNP("x", "unused", sel("app", "nothing"), ingressRule(nil, podPeer(sel("app", "unused")))),
	))
	var got []v1alpha1.AddressGroupSpec
	for name, g := range res.AddressGroups {
		if !regexp.MustCompile(`^ag-[0-9a-f]{16}$`).MatchString(name) {
			t.Errorf("group name %q", name)
		}
		got = append(got, g)
	}
	want := []v1alpha1.AddressGroupSpec{
		{Namespace: "x", PodSelector: sel("app", "b"), Addresses: []string{"198.18.1.2"}},
		{NamespaceSelector: sel("ns", "y"), Addresses: []string{"198.18.2.1", "198.18.2.2", "198.18.2.3"}},
		{Namespace: "y", Addresses: []string{"198.18.2.1", "198.18.2.2", "198.18.2.3"}},
		{Namespace: "y", PodSelector: sel("app", "nobody")},
		{Namespace: "z", PodSelector: sel("app", "b"), NamedPort: &v1alpha1.NamedPort{Name: "http", Protocol: v1alpha1.ProtocolTCP},
			Endpoints: []v1alpha1.Endpoint{{IP: "198.18.3.2", Port: 8080}}},
		{Namespace: "z", PodSelector: sel("app", "b"), Addresses: []string{"198.18.3.2"}},
	}
	key := func(g v1alpha1.AddressGroupSpec) string { b, _ := json.Marshal(g); return string(b) }
	if diff := cmp.Diff(want, got, cmpopts.SortSlices(func(a, b v1alpha1.AddressGroupSpec) bool { return key(a) < key(b) })); diff != "" {
		t.Errorf("groups (-want +got):\n%s", diff)
	}
	checkIntegrity(t, res)
}

func TestPolicySpans(t *testing.T) {
	res := Compile(snap(base(), mkNode("n3"),
		mkNP("x", "all", all(), policyTypes(tIn)),
		mkNP("y", "none", sel("app", "none")),
		mkNP("z", "a", sel("app", "a"), policyTypes(tEg)),
		mkDD("b", all(), ddPods(sel("app", "b")), ddAudit()),
		mkDD("none", sel("ns", "none")),
	))
	want := map[string]PolicySpan{
		"NetworkPolicy/x/all":  {SelectedPods: 3, Nodes: []string{"n1", "n2"}},
		"NetworkPolicy/y/none": {},
		"NetworkPolicy/z/a":    {SelectedPods: 1, Nodes: []string{"n1"}},
		"DefaultDeny/b":        {SelectedPods: 3, Nodes: []string{"n2"}},
		"DefaultDeny/none":     {},
	}
	if diff := cmp.Diff(want, res.Policies); diff != "" {
		t.Errorf("spans (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(v1alpha1.NodeRuleSetSpec{}, res.NodeRuleSets["n3"]); diff != "" {
		t.Errorf("node without pods (-want +got):\n%s", diff)
	}
}

// TestGolden pins the whole output for a small cluster, ids and names
// included: they are stored in API objects, so a change of hashing churns
// every rule set and must be deliberate.
func TestGolden(t *testing.T) {
	res := Compile(snap(
		mkNode("n1"), mkNS("x"),
		mkPod("x", "a", "n1", "198.18.0.1", labelsOf("app", "a"), containerPorts(cport("http", 80, ""))),
		mkPod("x", "b", "n1", "198.18.0.2,fd00::2", labelsOf("app", "b"), containerPorts(cport("http", 8080, ""))),
		mkNP("x", "p", sel("app", "a"), policyTypes(tIn, tEg),
			ingressRule(ports(tcp(80), portRange(udp, 5000, 5010)), podPeer(sel("app", "b"))),
			egressRule(ports(tcp("http"), np(sctp, nil)), podPeer(all()), blockPeer("10.0.0.0/8", "10.1.0.0/16"))),
		mkDD("dd", all(), ddAudit()),
	))
	got, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	const file = "testdata/golden.json"
	if *update {
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s (-want +got; go test ./internal/compiler -run TestGolden -update rewrites it):\n%s", file, diff)
	}
}

var update = flag.Bool("update", false, "rewrite testdata/golden.json")

// TestDeterministic: see checkDeterministic; the synthetic clusters of
// compilertest get the same check in synthetic_test.go.
func TestDeterministic(t *testing.T) {
	checkDeterministic(t, snap(base(),
		mkNP("x", "p", all(), ingressRule(ports(tcp("http")))),
		mkNP("y", "q", sel("app", "b"), egressRule(ports(np(udp, 53)), nsPeer(sel("ns", "z")))),
		mkDD("dd", sel("ns", "y"), ddIngress(nil, podPeer(sel("app", "b"))))))
}

// checkDeterministic checks that Compile leaves its input alone and gives
// the same result twice and for any order of the snapshot's objects.
func checkDeterministic(t *testing.T, s *Snapshot) {
	t.Helper()
	before := deepCopySnapshot(s)
	want := mustJSON(t, Compile(s))
	if diff := cmp.Diff(before, s); diff != "" {
		t.Fatalf("Compile modified its input (-before +after):\n%s", diff)
	}
	if got := mustJSON(t, Compile(s)); got != want {
		t.Fatal("two compilations of one snapshot differ")
	}
	for seed := range uint64(5) {
		if got := mustJSON(t, Compile(shuffled(s, seed))); got != want {
			t.Fatalf("shuffle %d changes the result", seed)
		}
	}
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// shuffled returns the snapshot with its slices in another order.
func shuffled(s *Snapshot, seed uint64) *Snapshot {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	out := &Snapshot{
		Pods:            slices.Clone(s.Pods),
		Namespaces:      slices.Clone(s.Namespaces),
		Nodes:           slices.Clone(s.Nodes),
		NetworkPolicies: slices.Clone(s.NetworkPolicies),
		DefaultDenies:   slices.Clone(s.DefaultDenies),
	}
	rng.Shuffle(len(out.Pods), func(i, j int) { out.Pods[i], out.Pods[j] = out.Pods[j], out.Pods[i] })
	rng.Shuffle(len(out.Namespaces), func(i, j int) { out.Namespaces[i], out.Namespaces[j] = out.Namespaces[j], out.Namespaces[i] })
	rng.Shuffle(len(out.Nodes), func(i, j int) { out.Nodes[i], out.Nodes[j] = out.Nodes[j], out.Nodes[i] })
	rng.Shuffle(len(out.NetworkPolicies), func(i, j int) {
		out.NetworkPolicies[i], out.NetworkPolicies[j] = out.NetworkPolicies[j], out.NetworkPolicies[i]
	})
	rng.Shuffle(len(out.DefaultDenies), func(i, j int) {
		out.DefaultDenies[i], out.DefaultDenies[j] = out.DefaultDenies[j], out.DefaultDenies[i]
	})
	return out
}

func deepCopySnapshot(s *Snapshot) *Snapshot {
	out := &Snapshot{}
	for _, o := range s.Pods {
		out.Pods = append(out.Pods, o.DeepCopy())
	}
	for _, o := range s.Namespaces {
		out.Namespaces = append(out.Namespaces, o.DeepCopy())
	}
	for _, o := range s.Nodes {
		out.Nodes = append(out.Nodes, o.DeepCopy())
	}
	for _, o := range s.NetworkPolicies {
		out.NetworkPolicies = append(out.NetworkPolicies, o.DeepCopy())
	}
	for _, o := range s.DefaultDenies {
		out.DefaultDenies = append(out.DefaultDenies, o.DeepCopy())
	}
	return out
}

// TestIPBlockGroups: a policy with more ipBlocks than the rule sets hold
// inline gets each rule's blocks as one group of the CIDRs they cover; a
// policy with fewer keeps them inline; the group of 20,000 blocks is split
// into shards and the rule set stays small.
func TestIPBlockGroups(t *testing.T) {
	few := []networkingv1.NetworkPolicyPeer{blockPeer("198.18.0.0/16", "198.18.1.0/24", "198.18.2.128/25"), blockPeer("fd00::/64")}
	many := slices.Clone(few)
	for i := range DefaultMaxInlineBlocks {
		many = append(many, blockPeer(fmt.Sprintf("198.19.%d.0/24", i)))
	}
	res := Compile(snap(base(),
		mkNP("x", "few", sel("app", "a"), ingressRule(nil, few...)),
		mkNP("y", "many", sel("app", "a"), ingressRule(nil, many...), policyTypes(tIn, tEg), egressRule(ports(tcp(53)), blockPeer("198.18.0.5/32"))),
	))
	checkIntegrity(t, res)
	rules := map[string]v1alpha1.Rule{}
	for _, r := range res.NodeRuleSets["n1"].Rules {
		rules[r.ID] = r
	}
	peersOf := func(ns string, egress bool) []v1alpha1.Peer {
		t.Helper()
		for _, p := range res.NodeRuleSets["n1"].Pods {
			if p.Namespace == ns && p.Name == "a" {
				iso := p.Ingress
				if egress {
					iso = p.Egress
				}
				if iso == nil || len(iso.Rules) != 1 {
					t.Fatalf("%s/a: isolation %+v, want one rule", ns, iso)
				}
				return rules[iso.Rules[0]].Peers
			}
		}
		t.Fatalf("%s/a not on n1", ns)
		return nil
	}
	for _, p := range peersOf("x", false) {
		if p.IPBlock == nil {
			t.Errorf("a policy of %d blocks: peer %+v, want its blocks inline", len(few), p)
		}
	}
	// The policy's every rule gets a group, even one with a single block:
	// the bound is on the policy.
	for _, egress := range []bool{false, true} {
		peers := peersOf("y", egress)
		if len(peers) != 1 || peers[0].AddressGroup == "" {
			t.Fatalf("a policy of %d blocks, egress %v: peers %+v, want one group", len(many)+1, egress, peers)
		}
	}
	g := res.AddressGroups[peersOf("y", false)[0].AddressGroup]
	want := []string{"198.18.0.0/24", "198.18.2.0/25", "198.18.3.0/24", "198.18.4.0/22", "198.18.8.0/21", "198.18.16.0/20",
		"198.18.32.0/19", "198.18.64.0/18", "198.18.128.0/17"}
	for i := range DefaultMaxInlineBlocks {
		want = append(want, fmt.Sprintf("198.19.%d.0/24", i))
	}
	want = append(want, "fd00::/64")
	slices.SortFunc(want, func(a, b string) int {
		pa, pb := netip.MustParsePrefix(a), netip.MustParsePrefix(b)
		if c := pa.Addr().Compare(pb.Addr()); c != 0 {
			return c
		}
		return pa.Bits() - pb.Bits()
	})
	if diff := cmp.Diff(v1alpha1.AddressGroupSpec{FromIPBlocks: true, Addresses: want}, g); diff != "" {
		t.Errorf("group of the blocks (-want +got):\n%s", diff)
	}
	if eg := res.AddressGroups[peersOf("y", true)[0].AddressGroup]; !slices.Equal(eg.Addresses, []string{"198.18.0.5/32"}) || !eg.FromIPBlocks {
		t.Errorf("group of the egress block: %+v", eg)
	}

	var blocks []networkingv1.NetworkPolicyPeer
	for i := range 20000 {
		blocks = append(blocks, blockPeer(fmt.Sprintf("198.%d.%d.%d/32", 18+i>>16, i>>8&255, i&255)))
	}
	res = Compile(snap(base(), mkNP("z", "huge", sel("app", "a"), ingressRule(nil, blocks...))))
	checkIntegrity(t, res)
	checkShards(t, res, DefaultMaxGroupEntries)
	entries := 0
	for _, g := range res.AddressGroups {
		if g.FromIPBlocks {
			entries += len(g.Addresses)
		}
	}
	if entries != 20000 {
		t.Errorf("the group's shards hold %d CIDRs, want 20,000", entries)
	}
	b, err := json.Marshal(res.NodeRuleSets["n1"])
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 4096 {
		t.Errorf("rule set of 20,000 blocks in groups: %d bytes, want a few shard references", len(b))
	}
}

func TestBlockPrefixes(t *testing.T) {
	for _, tc := range []struct {
		cidr   string
		except []string
		want   []string
	}{
		{"198.18.0.0/24", nil, []string{"198.18.0.0/24"}},
		{"198.18.0.0/24", []string{"198.18.0.0/25"}, []string{"198.18.0.128/25"}},
		{"198.18.0.0/30", []string{"198.18.0.1/32"}, []string{"198.18.0.0/32", "198.18.0.2/31"}},
		{"198.18.0.0/30", []string{"198.18.0.1/32", "198.18.0.2/31"}, []string{"198.18.0.0/32"}},
		{"fd00::/126", []string{"fd00::2/127"}, []string{"fd00::/127"}},
	} {
		b, ok := normalizeIPBlock(tc.cidr, tc.except)
		if !ok {
			t.Fatalf("%s except %v: not a block", tc.cidr, tc.except)
		}
		var got []string
		for _, p := range blockPrefixes(b) {
			got = append(got, p.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s except %v: %v, want %v", tc.cidr, tc.except, got, tc.want)
		}
		// Every address of the block is covered iff it is not excepted.
		block := netip.MustParsePrefix(tc.cidr)
		for a := block.Addr(); block.Contains(a); a = a.Next() {
			in := slices.ContainsFunc(blockPrefixes(b), func(p netip.Prefix) bool { return p.Contains(a) })
			excepted := slices.ContainsFunc(tc.except, func(e string) bool { return netip.MustParsePrefix(e).Contains(a) })
			if in == excepted {
				t.Errorf("%s except %v: %s covered %v", tc.cidr, tc.except, a, in)
			}
		}
	}
}

// TestBlockGroupsSharedWhileUsed: equal blocks give one group definition
// while a template uses it (a DefaultDeny's templates, one per namespace,
// share its entries), and the index does not keep it once none does.
func TestBlockGroupsSharedWhileUsed(t *testing.T) {
	ix := newIndex(Options{})
	blocks := func() []peer {
		var out []peer
		for i := range 20 {
			b, _ := normalizeIPBlock(fmt.Sprintf("198.19.%d.0/24", i), nil)
			out = append(out, peer{key: blockKey(b), block: b})
		}
		return canonicalPeers(out)
	}
	g1, g2 := ix.blockGroup(blocks()), ix.blockGroup(blocks())
	if g1 != g2 || len(g1.blocks) != 20 {
		t.Fatalf("equal blocks gave %p and %p (%d entries), want one group of 20", g1, g2, len(g1.blocks))
	}
	name := g1.name
	g1, g2 = nil, nil
	runtime.GC()
	for id, w := range ix.blockGroups {
		if w.Value() != nil {
			t.Errorf("group %x still held by the index with no template using it", id)
		}
	}
	if g := ix.blockGroup(blocks()); g.name != name {
		t.Errorf("the same blocks again: group %s, want %s", g.name, name)
	}
}
