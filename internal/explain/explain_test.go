package explain_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/compiler"
	"github.com/nftguard/nftguard/internal/explain"
)

func pod(ns, name, node, ip string, lbls map[string]string, ports ...corev1.ContainerPort) corev1.Pod {
	return corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Ports: ports}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

func namespace(name string, lbls map[string]string) corev1.Namespace {
	l := map[string]string{"kubernetes.io/metadata.name": name}
	for k, v := range lbls {
		l[k] = v
	}
	return corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}
}

func sel(kv ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func tcp(p intstr.IntOrString) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: ptr.To(corev1.ProtocolTCP), Port: &p}
}

func np(ns, name string, types []networkingv1.PolicyType, in []networkingv1.NetworkPolicyIngressRule, eg []networkingv1.NetworkPolicyEgressRule, podSel *metav1.LabelSelector) networkingv1.NetworkPolicy {
	return networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: *podSel, PolicyTypes: types, Ingress: in, Egress: eg},
	}
}

var (
	ingressOnly = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	egressOnly  = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
)

// cluster is two namespaces on two nodes: x/a (n1), x/b (n2), y/b and
// y/dns (n2), and a Service in front of x/a.
type cluster struct {
	explain.Input
	// maxGroupEntries, when set, splits the groups of more entries into
	// shards.
	maxGroupEntries int
}

func newCluster() *cluster {
	c := &cluster{}
	c.Namespaces = []corev1.Namespace{namespace("x", nil), namespace("y", map[string]string{"team": "red"})}
	c.Pods = []corev1.Pod{
		pod("x", "a", "n1", "198.18.1.1", map[string]string{"app": "a"},
			corev1.ContainerPort{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP},
			corev1.ContainerPort{ContainerPort: 81, Protocol: corev1.ProtocolTCP}),
		pod("x", "b", "n2", "198.18.2.1", map[string]string{"app": "b"}),
		pod("y", "b", "n2", "198.18.2.2", map[string]string{"app": "b"}),
		pod("y", "dns", "n2", "198.18.2.3", map[string]string{"app": "dns"},
			corev1.ContainerPort{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}),
	}
	c.Services = []corev1.Service{{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "a"}, ClusterIPs: []string{"198.19.0.10"},
			Ports: []corev1.ServicePort{{Port: 8080, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("http")}}},
	}}
	return c
}

// compile fills the rule sets and groups from the policies with the real
// compiler, as the controller would, and marks them programmed.
func (c *cluster) compile(t *testing.T) explain.Input {
	t.Helper()
	s := &compiler.Snapshot{}
	for i := range c.Pods {
		s.Pods = append(s.Pods, &c.Pods[i])
	}
	for i := range c.Namespaces {
		s.Namespaces = append(s.Namespaces, &c.Namespaces[i])
	}
	for _, n := range []string{"n1", "n2"} {
		s.Nodes = append(s.Nodes, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}})
	}
	for i := range c.NetworkPolicies {
		s.NetworkPolicies = append(s.NetworkPolicies, &c.NetworkPolicies[i])
	}
	for i := range c.DefaultDenies {
		s.DefaultDenies = append(s.DefaultDenies, &c.DefaultDenies[i])
	}
	res := compiler.CompileWith(s, compiler.Options{MaxGroupEntries: c.maxGroupEntries})
	in := c.Input
	in.Groups = res.AddressGroups
	for name, spec := range res.NodeRuleSets {
		in.RuleSets = append(in.RuleSets, v1alpha1.NodeRuleSet{
			ObjectMeta: metav1.ObjectMeta{Name: name, Generation: 1},
			Spec:       spec,
			Status: v1alpha1.NodeRuleSetStatus{ObservedGeneration: 1, Conditions: []metav1.Condition{{
				Type: v1alpha1.ConditionProgrammed, Status: metav1.ConditionTrue, Reason: "Programmed", ObservedGeneration: 1,
			}}},
		})
	}
	return in
}

// manyBlocks isolates x/a, allowing more ipBlocks than rule sets hold
// inline (so they are compiled into a group): 198.19.0.0/24 and up, and
// 198.18.2.0/24 except y/b's 198.18.2.2.
func manyBlocks(c *cluster) {
	var peers []networkingv1.NetworkPolicyPeer
	for i := range compiler.DefaultMaxInlineBlocks {
		peers = append(peers, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: fmt.Sprintf("198.19.%d.0/24", i)}})
	}
	peers = append(peers, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "198.18.2.0/24", Except: []string{"198.18.2.2/32"}}})
	c.NetworkPolicies = append(c.NetworkPolicies, np("x", "a-from-blocks", ingressOnly,
		[]networkingv1.NetworkPolicyIngressRule{{From: peers}}, nil, sel("app", "a")))
}

func TestExplain(t *testing.T) {
	splitCases := 0
	for _, tc := range []struct {
		name  string
		setup func(c *cluster)
		q     explain.Query
		// want
		allowed, audited         bool
		egressIso, ingressIso    bool
		allowedBy                string // a policy of the allowing rule (either side)
		missWhy                  string // in the denied side's nearest miss
		hint                     string // substring of some hint
		ingressReason, egressRsn string
	}{
		{
			name:    "no policy: nothing isolated",
			q:       explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 80},
			allowed: true, ingressReason: "no policy isolates",
		},
		{
			name: "ingress rule allows the peer and port",
			setup: func(c *cluster) {
				c.NetworkPolicies = append(c.NetworkPolicies, np("x", "a-from-b", ingressOnly,
					[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "b")}}, Ports: []networkingv1.NetworkPolicyPort{tcp(intstr.FromInt32(80))}}},
					nil, sel("app", "a")))
			},
			q:       explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 80},
			allowed: true, ingressIso: true, allowedBy: "NetworkPolicy/x/a-from-b",
		},
		{
			name: "peer group of pods in every namespace",
			setup: func(c *cluster) {
				c.NetworkPolicies = append(c.NetworkPolicies, np("x", "a-from-any-b", ingressOnly,
					[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel(), PodSelector: sel("app", "b")}}}},
					nil, sel("app", "a")))
			},
			q:       explain.Query{FromNamespace: "y", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 80},
			allowed: true, ingressIso: true, allowedBy: "NetworkPolicy/x/a-from-any-b",
		},
		{
			name:    "a policy of many ipBlocks, in a group of their CIDRs",
			setup:   manyBlocks,
			q:       explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 80},
			allowed: true, ingressIso: true, allowedBy: "NetworkPolicy/x/a-from-blocks",
		},
		{
			name:       "a policy of many ipBlocks: an excepted peer is not in their group",
			setup:      manyBlocks,
			q:          explain.Query{FromNamespace: "y", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 80},
			ingressIso: true, missWhy: "198.18.2.2 is not among its peers",
		},
		{
			name: "right peer, wrong port: nearest miss names the port",
			setup: func(c *cluster) {
				c.NetworkPolicies = append(c.NetworkPolicies, np("x", "a-from-b", ingressOnly,
					[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "b")}}, Ports: []networkingv1.NetworkPolicyPort{tcp(intstr.FromInt32(80))}}},
					nil, sel("app", "a")))
			},
			q:          explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 81},
			ingressIso: true, missWhy: "the peer matches but the rule allows TCP/80, not TCP/81",
		},
		{
			name: "bare podSelector in another namespace",
			setup: func(c *cluster) {
				c.NetworkPolicies = append(c.NetworkPolicies, np("x", "a-from-b", ingressOnly,
					[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "b")}}}},
					nil, sel("app", "a")))
			},
			q:          explain.Query{FromNamespace: "y", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 80},
			ingressIso: true, missWhy: "198.18.2.2 is not among its peers",
			hint: "a podSelector without a namespaceSelector selects pods in namespace x only; y/b is in y",
		},
		{
			name: "label that differs by one key, selector matching no pod",
			setup: func(c *cluster) {
				c.NetworkPolicies = append(c.NetworkPolicies, np("x", "a-from-bb", ingressOnly,
					[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "bb")}}}},
					nil, sel("app", "a")))
			},
			q:          explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 80},
			ingressIso: true, hint: "it requires app=bb but the object has app=b",
		},
		{
			name: "namespace selector on a label the namespace lacks",
			setup: func(c *cluster) {
				c.NetworkPolicies = append(c.NetworkPolicies, np("x", "a-from-blue", ingressOnly,
					[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("team", "blue")}}}},
					nil, sel("app", "a")))
			},
			q:          explain.Query{FromNamespace: "y", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 80},
			ingressIso: true, hint: "does not select namespace y: it requires team=blue but the object has team=red",
		},
		{
			name: "named port the destination does not declare",
			setup: func(c *cluster) {
				c.NetworkPolicies = append(c.NetworkPolicies, np("x", "a-grpc", ingressOnly,
					[]networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{tcp(intstr.FromString("grpc"))}}},
					nil, sel("app", "a")))
			},
			q:          explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 80},
			ingressIso: true, hint: `allows the named port "grpc", which pod x/a does not declare`,
		},
		{
			name: "ingress named port resolves on the destination",
			setup: func(c *cluster) {
				c.NetworkPolicies = append(c.NetworkPolicies, np("x", "a-http", ingressOnly,
					[]networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{tcp(intstr.FromString("http"))}}},
					nil, sel("app", "a")))
			},
			q:       explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", PortName: "http"},
			allowed: true, ingressIso: true, allowedBy: "NetworkPolicy/x/a-http",
		},
		{
			name: "Service port instead of the pod port",
			setup: func(c *cluster) {
				c.NetworkPolicies = append(c.NetworkPolicies, np("x", "a-8080", ingressOnly,
					[]networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{tcp(intstr.FromInt32(8080))}}},
					nil, sel("app", "a")))
			},
			q:          explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 80},
			ingressIso: true, hint: "allows port 8080, the port of Service x/web; policies see the pod's port 80",
		},
		{
			name: "querying the Service port",
			setup: func(c *cluster) {
				c.NetworkPolicies = append(c.NetworkPolicies, np("x", "a-http", ingressOnly,
					[]networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{tcp(intstr.FromInt32(80))}}},
					nil, sel("app", "a")))
			},
			q:          explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 8080},
			ingressIso: true, hint: "port 8080 is the port of Service x/web; the pod receives the connection on 80",
		},
		{
			name: "egress named port becomes an endpoint group",
			setup: func(c *cluster) {
				c.NetworkPolicies = append(c.NetworkPolicies, np("x", "b-to-http", egressOnly, nil,
					[]networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "a")}}, Ports: []networkingv1.NetworkPolicyPort{tcp(intstr.FromString("http"))}}},
					sel("app", "b")))
			},
			q:       explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 80},
			allowed: true, egressIso: true, allowedBy: "NetworkPolicy/x/b-to-http",
		},
		{
			name: "egress named port: other port of the same pod",
			setup: func(c *cluster) {
				c.NetworkPolicies = append(c.NetworkPolicies, np("x", "b-to-http", egressOnly, nil,
					[]networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "a")}}, Ports: []networkingv1.NetworkPolicyPort{tcp(intstr.FromString("http"))}}},
					sel("app", "b")))
			},
			q:         explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 81},
			egressIso: true, missWhy: "the peer matches but the rule allows TCP/http",
		},
		{
			name: "ipBlock minus except",
			setup: func(c *cluster) {
				c.NetworkPolicies = append(c.NetworkPolicies, np("x", "b-out", egressOnly, nil,
					[]networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "203.0.113.0/24", Except: []string{"203.0.113.128/25"}}}}}},
					sel("app", "b")))
			},
			q:       explain.Query{FromNamespace: "x", FromPod: "b", ToIP: netip.MustParseAddr("203.0.113.5"), Port: 443},
			allowed: true, egressIso: true, allowedBy: "NetworkPolicy/x/b-out", ingressReason: "not a pod",
		},
		{
			name: "ipBlock: the except part is denied",
			setup: func(c *cluster) {
				c.NetworkPolicies = append(c.NetworkPolicies, np("x", "b-out", egressOnly, nil,
					[]networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "203.0.113.0/24", Except: []string{"203.0.113.128/25"}}}}}},
					sel("app", "b")))
			},
			q:         explain.Query{FromNamespace: "x", FromPod: "b", ToIP: netip.MustParseAddr("203.0.113.200"), Port: 443},
			egressIso: true, missWhy: "the port matches but 203.0.113.200 is not among its peers",
		},
		{
			name: "endPort range",
			setup: func(c *cluster) {
				p := tcp(intstr.FromInt32(80))
				p.EndPort = ptr.To[int32](90)
				c.NetworkPolicies = append(c.NetworkPolicies, np("x", "a-range", ingressOnly,
					[]networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{p}}}, nil, sel("app", "a")))
			},
			q:       explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 81},
			allowed: true, ingressIso: true, allowedBy: "NetworkPolicy/x/a-range",
		},
		{
			name: "DefaultDeny egress keeps DNS on UDP only",
			setup: func(c *cluster) {
				c.DefaultDenies = append(c.DefaultDenies, v1alpha1.DefaultDeny{
					ObjectMeta: metav1.ObjectMeta{Name: "base"},
					Spec: v1alpha1.DefaultDenySpec{
						NamespaceSelector: v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"kubernetes.io/metadata.name": "x"}},
						PolicyTypes:       []v1alpha1.PolicyType{v1alpha1.PolicyTypeEgress}, Mode: v1alpha1.ModeEnforce,
						AllowedEgress: []v1alpha1.EgressRule{{
							To: []v1alpha1.NetworkPolicyPeer{{
								NamespaceSelector: &v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"kubernetes.io/metadata.name": "y"}},
								PodSelector:       &v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"app": "dns"}},
							}},
							Ports: []v1alpha1.NetworkPolicyPort{{Protocol: ptr.To(v1alpha1.ProtocolUDP), Port: ptr.To(intstr.FromInt32(53))}},
						}},
					},
				})
			},
			q:         explain.Query{FromNamespace: "x", FromPod: "a", ToNamespace: "y", ToPod: "dns", Port: 53, Protocol: v1alpha1.ProtocolTCP},
			egressIso: true, missWhy: "the peer matches but the rule allows UDP/53, not TCP/53", hint: "DNS needs a rule allowing UDP and TCP 53",
		},
		{
			name: "Audit DefaultDeny changes no verdict",
			setup: func(c *cluster) {
				c.DefaultDenies = append(c.DefaultDenies, v1alpha1.DefaultDeny{
					ObjectMeta: metav1.ObjectMeta{Name: "watch"},
					Spec: v1alpha1.DefaultDenySpec{
						NamespaceSelector: v1alpha1.LabelSelector{},
						PolicyTypes:       []v1alpha1.PolicyType{v1alpha1.PolicyTypeIngress}, Mode: v1alpha1.ModeAudit,
					},
				})
			},
			q:       explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 80},
			allowed: true, audited: true, ingressIso: true, ingressReason: "Audit only",
		},
		{
			name: "Service ClusterIP as destination",
			setup: func(c *cluster) {
				c.NetworkPolicies = append(c.NetworkPolicies, np("x", "b-none", egressOnly, nil, nil, sel("app", "b")))
			},
			q:         explain.Query{FromNamespace: "x", FromPod: "b", ToIP: netip.MustParseAddr("198.19.0.10"), Port: 8080},
			egressIso: true, egressRsn: "allow no egress traffic at all", hint: "is the ClusterIP of Service x/web",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster()
			if tc.setup != nil {
				tc.setup(c)
			}
			v, err := explain.Explain(c.compile(t), tc.q)
			if err != nil {
				t.Fatal(err)
			}
			// Groups split into shards of one address give the same answer.
			split := newCluster()
			if tc.setup != nil {
				tc.setup(split)
			}
			split.maxGroupEntries = 1
			in := split.compile(t)
			shards := 0
			for name := range in.Groups {
				if compiler.LogicalGroup(name) != name {
					shards++
				}
			}
			if shards > 0 {
				splitCases++
			}
			vs, err := explain.Explain(in, tc.q)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(v, vs); diff != "" {
				t.Errorf("with groups in %d shards the verdict differs (-unsplit +split):\n%s", shards, diff)
			}
			if v.Allowed != tc.allowed || v.Audited != tc.audited {
				t.Errorf("allowed=%v audited=%v, want %v %v\n%s", v.Allowed, v.Audited, tc.allowed, tc.audited, dump(v))
			}
			if v.Egress.Isolated != tc.egressIso || v.Ingress.Isolated != tc.ingressIso {
				t.Errorf("isolated egress=%v ingress=%v, want %v %v", v.Egress.Isolated, v.Ingress.Isolated, tc.egressIso, tc.ingressIso)
			}
			if tc.allowedBy != "" {
				var by []string
				for _, s := range []explain.Side{v.Egress, v.Ingress} {
					if s.AllowedBy != nil {
						by = append(by, s.AllowedBy.Policies...)
					}
				}
				if !slices.Contains(by, tc.allowedBy) {
					t.Errorf("allowed by %v, want %s", by, tc.allowedBy)
				}
			}
			if tc.missWhy != "" {
				var whys []string
				for _, s := range []explain.Side{v.Egress, v.Ingress} {
					if s.NearestMiss != nil {
						whys = append(whys, s.NearestMiss.Why)
					}
				}
				if !slices.ContainsFunc(whys, func(w string) bool { return strings.Contains(w, tc.missWhy) }) {
					t.Errorf("nearest misses %q, want one containing %q", whys, tc.missWhy)
				}
			}
			if tc.hint != "" && !slices.ContainsFunc(v.Hints, func(h string) bool { return strings.Contains(h, tc.hint) }) {
				t.Errorf("hints %q, want one containing %q", v.Hints, tc.hint)
			}
			if tc.ingressReason != "" && !strings.Contains(v.Ingress.Reason, tc.ingressReason) {
				t.Errorf("ingress reason %q, want %q", v.Ingress.Reason, tc.ingressReason)
			}
			if tc.egressRsn != "" && !strings.Contains(v.Egress.Reason, tc.egressRsn) {
				t.Errorf("egress reason %q, want %q", v.Egress.Reason, tc.egressRsn)
			}
		})
	}
	if splitCases == 0 {
		t.Errorf("no case split a group into shards")
	}
}

func TestExplainNotes(t *testing.T) {
	c := newCluster()
	c.NetworkPolicies = append(c.NetworkPolicies, np("x", "deny", ingressOnly, nil, nil, sel("app", "a")))
	in := c.compile(t)
	for i := range in.RuleSets {
		in.RuleSets[i].Generation = 2
		in.RuleSets[i].Status.Conditions[0].Status = metav1.ConditionFalse
		in.RuleSets[i].Status.Conditions[0].Reason = "ProgramFailed"
	}
	v, err := explain.Explain(in, explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 80})
	if err != nil {
		t.Fatal(err)
	}
	if v.Allowed || len(v.Ingress.Notes) == 0 || !strings.Contains(v.Ingress.Notes[0], "has not programmed this rule set") {
		t.Errorf("verdict %s", dump(v))
	}
	if _, err := explain.Explain(in, explain.Query{FromNamespace: "x", FromPod: "nope", ToNamespace: "x", ToPod: "a", Port: 80}); err == nil {
		t.Error("unknown pod: no error")
	}
	if _, err := explain.Explain(in, explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", PortName: "grpc"}); err == nil {
		t.Error("undeclared named port: no error")
	}
}

// TestExplainNotesUnwritten: a rule set the controller marked as not holding
// the latest compile gets a note, though its agent programmed it.
func TestExplainNotesUnwritten(t *testing.T) {
	c := newCluster()
	c.NetworkPolicies = append(c.NetworkPolicies, np("x", "deny", ingressOnly, nil, nil, sel("app", "a")))
	in := c.compile(t)
	for i := range in.RuleSets {
		in.RuleSets[i].Spec.Unwritten = &v1alpha1.Unwritten{Reason: v1alpha1.ReasonRuleSetTooLarge, Bytes: 2000, Limit: 1000}
	}
	v, err := explain.Explain(in, explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 80})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Ingress.Notes) == 0 || !strings.Contains(v.Ingress.Notes[0], "does not hold the latest compile (RuleSetTooLarge: Compiled rule set is 2000 bytes") {
		t.Errorf("verdict %s", dump(v))
	}
}

// TestExplainNotesLeftOut: a rule set its agent programmed without the
// rules of a missing group gets a note naming them.
func TestExplainNotesLeftOut(t *testing.T) {
	c := newCluster()
	c.NetworkPolicies = append(c.NetworkPolicies, np("x", "deny", ingressOnly, nil, nil, sel("app", "a")))
	in := c.compile(t)
	for i := range in.RuleSets {
		in.RuleSets[i].Status.LeftOut = &v1alpha1.LeftOut{Reason: v1alpha1.ReasonAddressGroupMissing,
			AddressGroups: []string{"ag-gone"}, Policies: []string{"NetworkPolicy/x/deny"}}
	}
	v, err := explain.Explain(in, explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 80})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Ingress.Notes) == 0 || !strings.Contains(v.Ingress.Notes[0], "programmed its rule set without some rules (AddressGroupMissing: Address groups ag-gone do not exist") {
		t.Errorf("verdict %s", dump(v))
	}
}

// TestExplainUninstalled: a node whose agent deleted its table for
// uninstall enforces nothing, whatever its rule set says; the other nodes
// still do.
func TestExplainUninstalled(t *testing.T) {
	c := newCluster()
	c.NetworkPolicies = append(c.NetworkPolicies,
		np("x", "deny", ingressOnly, nil, nil, sel()),
		np("y", "no-egress", egressOnly, nil, nil, sel("app", "b")))
	in := c.compile(t)
	for i := range in.RuleSets {
		if in.RuleSets[i].Name != "n1" {
			continue
		}
		in.RuleSets[i].Annotations = map[string]string{"nftguard.io/uninstall": "true"}
		in.RuleSets[i].Status.Conditions[0].Status = metav1.ConditionFalse
		in.RuleSets[i].Status.Conditions[0].Reason = "Uninstalled"
	}
	// x/a is on n1: its ingress isolation is gone with the table.
	v, err := explain.Explain(in, explain.Query{FromNamespace: "x", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 80})
	if err != nil {
		t.Fatal(err)
	}
	if !v.Allowed || !v.Ingress.Allowed || !strings.Contains(v.Ingress.Reason, "uninstall") {
		t.Errorf("to a pod of an uninstalled node: %s", dump(v))
	}
	// x/b is on n2, which still enforces; so does y/b's egress there.
	v, err = explain.Explain(in, explain.Query{FromNamespace: "x", FromPod: "a", ToNamespace: "x", ToPod: "b", Port: 80})
	if err != nil {
		t.Fatal(err)
	}
	if v.Allowed || v.Ingress.Allowed {
		t.Errorf("to a pod of an enforcing node: %s", dump(v))
	}
	v, err = explain.Explain(in, explain.Query{FromNamespace: "y", FromPod: "b", ToNamespace: "x", ToPod: "a", Port: 80})
	if err != nil {
		t.Fatal(err)
	}
	if v.Allowed || v.Egress.Allowed || !v.Ingress.Allowed {
		t.Errorf("from an egress-isolated pod of an enforcing node: %s", dump(v))
	}
}

func dump(v *explain.Verdict) string {
	var b strings.Builder
	for _, s := range []explain.Side{v.Egress, v.Ingress} {
		b.WriteString(s.Reason + "\n")
		if s.NearestMiss != nil {
			b.WriteString("  miss: " + s.NearestMiss.Why + "\n")
		}
	}
	for _, h := range v.Hints {
		b.WriteString("  hint: " + h + "\n")
	}
	return b.String()
}
