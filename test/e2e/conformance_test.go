package e2e

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Builders for the policies of the scenarios, in the upstream suite's terms.

func policy(ns, name string, podLabels map[string]string, types ...networkingv1.PolicyType) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: podLabels}, PolicyTypes: types},
	}
}

var (
	ingress = networkingv1.PolicyTypeIngress
	egress  = networkingv1.PolicyTypeEgress
)

func labels(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func podPeer(podLabels map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: podLabels}}
}

func nsPeer(nsLabels map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: nsLabels}}
}

func port(p int32, proto corev1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Port: ptr.To(intstr.FromInt32(p)), Protocol: &proto}
}

func namedPort(name string, proto corev1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Port: ptr.To(intstr.FromString(name)), Protocol: &proto}
}

func allowIngress(np *networkingv1.NetworkPolicy, ports []networkingv1.NetworkPolicyPort, from ...networkingv1.NetworkPolicyPeer) *networkingv1.NetworkPolicy {
	np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{Ports: ports, From: from})
	return np
}

func allowEgress(np *networkingv1.NetworkPolicy, ports []networkingv1.NetworkPolicyPort, to ...networkingv1.NetworkPolicyPeer) *networkingv1.NetworkPolicy {
	np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{Ports: ports, To: to})
	return np
}

// podIP is a conformance pod's IPv4 address.
func podIP(t *testing.T, key string) string {
	t.Helper()
	p, ok := cl.Pod(key)
	if !ok || !p.IPv4.IsValid() {
		t.Fatalf("no pod %s", key)
	}
	return p.IPv4.String()
}

// TestConformance reproduces the shapes of the upstream NetworkPolicy e2e
// suite on the full 9x9 matrix. Each case starts from no policy.
func TestConformance(t *testing.T) {
	needCluster(t)
	cases := []struct {
		name   string
		setup  func(t *testing.T)
		expect func(t *testing.T)
	}{
		{"no policy: everything reaches everything", func(*testing.T) {}, func(t *testing.T) {
			expect(t, NewReachability(true), tcp80, udp81, sctp80, tcp80v6)
		}},
		{"default deny ingress", func(t *testing.T) {
			create(t, policy("x", "deny-ingress", nil, ingress))
		}, func(t *testing.T) {
			r := NewReachability(true).Set("*/*", "x/*", false)
			expect(t, r, tcp80, udp80, sctp81, tcp80v6)
		}},
		{"default deny egress", func(t *testing.T) {
			create(t, policy("x", "deny-egress", nil, egress))
		}, func(t *testing.T) {
			expect(t, NewReachability(true).Set("x/*", "*/*", false), tcp80, udp81)
		}},
		{"default deny all", func(t *testing.T) {
			create(t, policy("x", "deny-all", nil, ingress, egress))
		}, func(t *testing.T) {
			expect(t, NewReachability(true).Set("x/*", "*/*", false).Set("*/*", "x/*", false), tcp80, sctp80)
		}},
		{"allow ingress from pods by pod selector", func(t *testing.T) {
			create(t, allowIngress(policy("x", "a-from-b", labels("pod", "a")), nil, podPeer(labels("pod", "b"))))
		}, func(t *testing.T) {
			expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("x/b", "x/a", true), tcp80, udp80)
		}},
		{"allow ingress from namespaces by namespace selector", func(t *testing.T) {
			create(t, allowIngress(policy("x", "a-from-y", labels("pod", "a")), nil, nsPeer(labels("ns", "y"))))
		}, func(t *testing.T) {
			expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("y/*", "x/a", true), tcp80)
		}},
		{"allow ingress from pods in namespaces (both selectors)", func(t *testing.T) {
			p := networkingv1.NetworkPolicyPeer{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: labels("ns", "y")},
				PodSelector:       &metav1.LabelSelector{MatchLabels: labels("pod", "b")},
			}
			create(t, allowIngress(policy("x", "a-from-y-b", labels("pod", "a")), nil, p))
		}, func(t *testing.T) {
			expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("y/b", "x/a", true), tcp80, tcp80v6)
		}},
		{"allow ingress from namespaces by matchExpressions NotIn", func(t *testing.T) {
			p := networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{
				MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "ns", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"x", "y"}}},
			}}
			create(t, allowIngress(policy("x", "a-from-not-xy", labels("pod", "a")), nil, p))
		}, func(t *testing.T) {
			expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("z/*", "x/a", true), tcp80)
		}},
		{"allow ingress from pods by matchExpressions Exists and In", func(t *testing.T) {
			p := networkingv1.NetworkPolicyPeer{
				NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "ns", Operator: metav1.LabelSelectorOpExists}}},
				PodSelector:       &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "pod", Operator: metav1.LabelSelectorOpIn, Values: []string{"c"}}}},
			}
			create(t, allowIngress(policy("x", "a-from-c", labels("pod", "a")), nil, p))
		}, func(t *testing.T) {
			expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("*/c", "x/a", true), tcp80)
		}},
		{"allow ingress on one port only", func(t *testing.T) {
			create(t, allowIngress(policy("x", "a-on-81", labels("pod", "a")), []networkingv1.NetworkPolicyPort{port(81, corev1.ProtocolTCP)}))
		}, func(t *testing.T) {
			expect(t, NewReachability(true).Set("*/*", "x/a", false), tcp80, udp81)
			expect(t, NewReachability(true), tcp81)
		}},
		{"allow ingress on a named port", func(t *testing.T) {
			create(t, allowIngress(policy("x", "a-on-serve-81-udp", labels("pod", "a")),
				[]networkingv1.NetworkPolicyPort{namedPort("serve-81-udp", corev1.ProtocolUDP)}, nsPeer(labels("ns", "y"))))
		}, func(t *testing.T) {
			expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("y/*", "x/a", true), udp81)
			expect(t, NewReachability(true).Set("*/*", "x/a", false), udp80, tcp81)
		}},
		{"allow ingress on a port range (endPort)", func(t *testing.T) {
			pr := port(79, corev1.ProtocolTCP)
			pr.EndPort = ptr.To[int32](80)
			create(t, allowIngress(policy("x", "a-on-79-80", labels("pod", "a")), []networkingv1.NetworkPolicyPort{pr}))
		}, func(t *testing.T) {
			expect(t, NewReachability(true), tcp80)
			expect(t, NewReachability(true).Set("*/*", "x/a", false), tcp81)
		}},
		{"allow egress on one port and a named port", func(t *testing.T) {
			np := allowEgress(policy("x", "a-egress", labels("pod", "a"), egress),
				[]networkingv1.NetworkPolicyPort{port(80, corev1.ProtocolTCP), namedPort("serve-81-udp", corev1.ProtocolUDP)})
			create(t, np)
		}, func(t *testing.T) {
			expect(t, NewReachability(true), tcp80, udp81)
			expect(t, NewReachability(true).Set("x/a", "*/*", false), tcp81, udp80)
		}},
		{"allow egress to pods by selector, named port", func(t *testing.T) {
			np := allowEgress(policy("x", "a-to-y-b", labels("pod", "a"), egress),
				[]networkingv1.NetworkPolicyPort{namedPort("serve-80-tcp", corev1.ProtocolTCP)},
				networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: labels("ns", "y")}, PodSelector: &metav1.LabelSelector{MatchLabels: labels("pod", "b")}})
			create(t, np)
		}, func(t *testing.T) {
			expect(t, NewReachability(true).Set("x/a", "*/*", false).Set("x/a", "y/b", true), tcp80, tcp80v6)
			expect(t, NewReachability(true).Set("x/a", "*/*", false), tcp81)
		}},
		{"multiple stacked policies", func(t *testing.T) {
			create(t,
				policy("x", "deny-all", nil, ingress),
				allowIngress(policy("x", "from-y", nil), nil, nsPeer(labels("ns", "y"))),
				allowIngress(policy("x", "b-from-z-c", labels("pod", "b")), []networkingv1.NetworkPolicyPort{port(80, corev1.ProtocolTCP)},
					networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: labels("ns", "z")}, PodSelector: &metav1.LabelSelector{MatchLabels: labels("pod", "c")}}),
			)
		}, func(t *testing.T) {
			r := NewReachability(true).Set("*/*", "x/*", false).Set("y/*", "x/*", true).Set("z/c", "x/b", true)
			expect(t, r, tcp80)
			expect(t, NewReachability(true).Set("*/*", "x/*", false).Set("y/*", "x/*", true), tcp81)
		}},
		{"ingress from an ipBlock with except", func(t *testing.T) {
			block := &networkingv1.IPBlock{CIDR: "198.18.0.0/15", Except: []string{podIP(t, "y/a") + "/32"}}
			create(t, allowIngress(policy("x", "a-from-block", labels("pod", "a")), nil, networkingv1.NetworkPolicyPeer{IPBlock: block}))
		}, func(t *testing.T) {
			expect(t, NewReachability(true).Set("y/a", "x/a", false), tcp80)
		}},
		{"egress to a CIDR", func(t *testing.T) {
			block := &networkingv1.IPBlock{CIDR: podIP(t, "z/c") + "/32"}
			create(t, allowEgress(policy("x", "a-to-z-c", labels("pod", "a"), egress), nil, networkingv1.NetworkPolicyPeer{IPBlock: block}))
		}, func(t *testing.T) {
			expect(t, NewReachability(true).Set("x/a", "*/*", false).Set("x/a", "z/c", true), tcp80, udp80)
		}},
		{"SCTP and UDP are isolated separately", func(t *testing.T) {
			create(t, allowIngress(policy("y", "b-sctp-80", labels("pod", "b")),
				[]networkingv1.NetworkPolicyPort{port(80, corev1.ProtocolSCTP)}, nsPeer(labels("ns", "x"))))
		}, func(t *testing.T) {
			expect(t, NewReachability(true).Set("*/*", "y/b", false).Set("x/*", "y/b", true), sctp80)
			expect(t, NewReachability(true).Set("*/*", "y/b", false), sctp81, udp80, tcp80)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resetPolicies(t)
			tc.setup(t)
			waitConverged(t)
			tc.expect(t)
		})
	}
	resetPolicies(t)
}

// TestConformanceChanges covers policy update and delete, and pod and
// namespace label changes, on the same matrix.
func TestConformanceChanges(t *testing.T) {
	needCluster(t)
	ctx := context.Background()
	c := cl.Client()
	resetPolicies(t)

	np := allowIngress(policy("x", "a-from-ns", labels("pod", "a")), nil, nsPeer(labels("ns", "y")))
	create(t, np)
	waitConverged(t)
	expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("y/*", "x/a", true), tcp80)

	t.Run("policy update", func(t *testing.T) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(np), np); err != nil {
			t.Fatal(err)
		}
		np.Spec.Ingress[0].From = []networkingv1.NetworkPolicyPeer{nsPeer(labels("ns", "z"))}
		if err := c.Update(ctx, np); err != nil {
			t.Fatal(err)
		}
		waitConverged(t)
		expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("z/*", "x/a", true), tcp80)
	})

	t.Run("pod label change", func(t *testing.T) {
		pod := &corev1.Pod{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: "y", Name: "b"}, pod); err != nil {
			t.Fatal(err)
		}
		// Allow pods labelled role=client in any namespace, then label y/b.
		if err := c.Get(ctx, client.ObjectKeyFromObject(np), np); err != nil {
			t.Fatal(err)
		}
		np.Spec.Ingress[0].From = []networkingv1.NetworkPolicyPeer{{
			NamespaceSelector: &metav1.LabelSelector{},
			PodSelector:       &metav1.LabelSelector{MatchLabels: labels("role", "client")},
		}}
		if err := c.Update(ctx, np); err != nil {
			t.Fatal(err)
		}
		waitConverged(t)
		expect(t, NewReachability(true).Set("*/*", "x/a", false), tcp80)

		patch := client.MergeFrom(pod.DeepCopy())
		pod.Labels["role"] = "client"
		if err := c.Patch(ctx, pod, patch); err != nil {
			t.Fatal(err)
		}
		waitConverged(t)
		expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("y/b", "x/a", true), tcp80)

		patch = client.MergeFrom(pod.DeepCopy())
		delete(pod.Labels, "role")
		if err := c.Patch(ctx, pod, patch); err != nil {
			t.Fatal(err)
		}
		waitConverged(t)
		expect(t, NewReachability(true).Set("*/*", "x/a", false), tcp80)
	})

	t.Run("namespace label change", func(t *testing.T) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(np), np); err != nil {
			t.Fatal(err)
		}
		np.Spec.Ingress[0].From = []networkingv1.NetworkPolicyPeer{nsPeer(labels("team", "blue"))}
		if err := c.Update(ctx, np); err != nil {
			t.Fatal(err)
		}
		ns := &corev1.Namespace{}
		if err := c.Get(ctx, client.ObjectKey{Name: "z"}, ns); err != nil {
			t.Fatal(err)
		}
		patch := client.MergeFrom(ns.DeepCopy())
		ns.Labels["team"] = "blue"
		if err := c.Patch(ctx, ns, patch); err != nil {
			t.Fatal(err)
		}
		waitConverged(t)
		expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("z/*", "x/a", true), tcp80)

		patch = client.MergeFrom(ns.DeepCopy())
		delete(ns.Labels, "team")
		if err := c.Patch(ctx, ns, patch); err != nil {
			t.Fatal(err)
		}
		waitConverged(t)
		expect(t, NewReachability(true).Set("*/*", "x/a", false), tcp80)
	})

	t.Run("policy delete", func(t *testing.T) {
		if err := c.Delete(ctx, np); err != nil {
			t.Fatal(err)
		}
		waitConverged(t)
		expect(t, NewReachability(true), tcp80)
	})
}
