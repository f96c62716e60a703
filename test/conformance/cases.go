package conformance

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Case is one shape of the upstream suite: the policies it creates and
// the matrices it expects.
type Case struct {
	Name   string
	Setup  func(t *testing.T, s *Suite)
	Expect func(t *testing.T, s *Suite)
}

// Cases are the shapes of the upstream NetworkPolicy e2e suite on the full
// 9x9 matrix. Each starts from no policy.
func Cases() []Case {
	return []Case{
		{"no policy: everything reaches everything", func(*testing.T, *Suite) {}, func(t *testing.T, s *Suite) {
			s.Expect(t, NewReachability(true), TCP80, UDP81, SCTP80, TCP80v6)
		}},
		{"default deny ingress", func(t *testing.T, s *Suite) {
			s.Create(t, Policy("x", "deny-ingress", nil, Ingress))
		}, func(t *testing.T, s *Suite) {
			r := NewReachability(true).Set("*/*", "x/*", false)
			s.Expect(t, r, TCP80, UDP80, SCTP81, TCP80v6)
		}},
		{"default deny egress", func(t *testing.T, s *Suite) {
			s.Create(t, Policy("x", "deny-egress", nil, Egress))
		}, func(t *testing.T, s *Suite) {
			s.Expect(t, NewReachability(true).Set("x/*", "*/*", false), TCP80, UDP81)
		}},
		{"default deny all", func(t *testing.T, s *Suite) {
			s.Create(t, Policy("x", "deny-all", nil, Ingress, Egress))
		}, func(t *testing.T, s *Suite) {
			s.Expect(t, NewReachability(true).Set("x/*", "*/*", false).Set("*/*", "x/*", false), TCP80, SCTP80)
		}},
		{"allow ingress from pods by pod selector", func(t *testing.T, s *Suite) {
			s.Create(t, AllowIngress(Policy("x", "a-from-b", Labels("pod", "a")), nil, PodPeer(Labels("pod", "b"))))
		}, func(t *testing.T, s *Suite) {
			s.Expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("x/b", "x/a", true), TCP80, UDP80)
		}},
		{"allow ingress from namespaces by namespace selector", func(t *testing.T, s *Suite) {
			s.Create(t, AllowIngress(Policy("x", "a-from-y", Labels("pod", "a")), nil, NsPeer(Labels("ns", "y"))))
		}, func(t *testing.T, s *Suite) {
			s.Expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("y/*", "x/a", true), TCP80)
		}},
		{"allow ingress from pods in namespaces (both selectors)", func(t *testing.T, s *Suite) {
			p := networkingv1.NetworkPolicyPeer{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: Labels("ns", "y")},
				PodSelector:       &metav1.LabelSelector{MatchLabels: Labels("pod", "b")},
			}
			s.Create(t, AllowIngress(Policy("x", "a-from-y-b", Labels("pod", "a")), nil, p))
		}, func(t *testing.T, s *Suite) {
			s.Expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("y/b", "x/a", true), TCP80, TCP80v6)
		}},
		{"allow ingress from namespaces by matchExpressions NotIn", func(t *testing.T, s *Suite) {
			p := networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{
				MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "ns", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"x", "y"}}},
			}}
			s.Create(t, AllowIngress(Policy("x", "a-from-not-xy", Labels("pod", "a")), nil, p))
		}, func(t *testing.T, s *Suite) {
			s.Expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("z/*", "x/a", true), TCP80)
		}},
		{"allow ingress from pods by matchExpressions Exists and In", func(t *testing.T, s *Suite) {
			p := networkingv1.NetworkPolicyPeer{
				NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "ns", Operator: metav1.LabelSelectorOpExists}}},
				PodSelector:       &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "pod", Operator: metav1.LabelSelectorOpIn, Values: []string{"c"}}}},
			}
			s.Create(t, AllowIngress(Policy("x", "a-from-c", Labels("pod", "a")), nil, p))
		}, func(t *testing.T, s *Suite) {
			s.Expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("*/c", "x/a", true), TCP80)
		}},
		{"allow ingress on one port only", func(t *testing.T, s *Suite) {
			s.Create(t, AllowIngress(Policy("x", "a-on-81", Labels("pod", "a")), []networkingv1.NetworkPolicyPort{Port(81, corev1.ProtocolTCP)}))
		}, func(t *testing.T, s *Suite) {
			s.Expect(t, NewReachability(true).Set("*/*", "x/a", false), TCP80, UDP81)
			s.Expect(t, NewReachability(true), TCP81)
		}},
		{"allow ingress on a named port", func(t *testing.T, s *Suite) {
			s.Create(t, AllowIngress(Policy("x", "a-on-serve-81-udp", Labels("pod", "a")),
				[]networkingv1.NetworkPolicyPort{NamedPort("serve-81-udp", corev1.ProtocolUDP)}, NsPeer(Labels("ns", "y"))))
		}, func(t *testing.T, s *Suite) {
			s.Expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("y/*", "x/a", true), UDP81)
			s.Expect(t, NewReachability(true).Set("*/*", "x/a", false), UDP80, TCP81)
		}},
		{"allow ingress on a port range (endPort)", func(t *testing.T, s *Suite) {
			pr := Port(79, corev1.ProtocolTCP)
			pr.EndPort = ptr.To[int32](80)
			s.Create(t, AllowIngress(Policy("x", "a-on-79-80", Labels("pod", "a")), []networkingv1.NetworkPolicyPort{pr}))
		}, func(t *testing.T, s *Suite) {
			s.Expect(t, NewReachability(true), TCP80)
			s.Expect(t, NewReachability(true).Set("*/*", "x/a", false), TCP81)
		}},
		{"allow egress on one port and a named port", func(t *testing.T, s *Suite) {
			np := AllowEgress(Policy("x", "a-egress", Labels("pod", "a"), Egress),
				[]networkingv1.NetworkPolicyPort{Port(80, corev1.ProtocolTCP), NamedPort("serve-81-udp", corev1.ProtocolUDP)})
			s.Create(t, np)
		}, func(t *testing.T, s *Suite) {
			s.Expect(t, NewReachability(true), TCP80, UDP81)
			s.Expect(t, NewReachability(true).Set("x/a", "*/*", false), TCP81, UDP80)
		}},
		{"allow egress to pods by selector, named port", func(t *testing.T, s *Suite) {
			np := AllowEgress(Policy("x", "a-to-y-b", Labels("pod", "a"), Egress),
				[]networkingv1.NetworkPolicyPort{NamedPort("serve-80-tcp", corev1.ProtocolTCP)},
				networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: Labels("ns", "y")}, PodSelector: &metav1.LabelSelector{MatchLabels: Labels("pod", "b")}})
			s.Create(t, np)
		}, func(t *testing.T, s *Suite) {
			s.Expect(t, NewReachability(true).Set("x/a", "*/*", false).Set("x/a", "y/b", true), TCP80, TCP80v6)
			s.Expect(t, NewReachability(true).Set("x/a", "*/*", false), TCP81)
		}},
		{"multiple stacked policies", func(t *testing.T, s *Suite) {
			s.Create(t,
				Policy("x", "deny-all", nil, Ingress),
				AllowIngress(Policy("x", "from-y", nil), nil, NsPeer(Labels("ns", "y"))),
				AllowIngress(Policy("x", "b-from-z-c", Labels("pod", "b")), []networkingv1.NetworkPolicyPort{Port(80, corev1.ProtocolTCP)},
					networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: Labels("ns", "z")}, PodSelector: &metav1.LabelSelector{MatchLabels: Labels("pod", "c")}}),
			)
		}, func(t *testing.T, s *Suite) {
			r := NewReachability(true).Set("*/*", "x/*", false).Set("y/*", "x/*", true).Set("z/c", "x/b", true)
			s.Expect(t, r, TCP80)
			s.Expect(t, NewReachability(true).Set("*/*", "x/*", false).Set("y/*", "x/*", true), TCP81)
		}},
		{"ingress from an ipBlock with except", func(t *testing.T, s *Suite) {
			block := &networkingv1.IPBlock{CIDR: "198.18.0.0/15", Except: []string{s.PodIP(t, "y/a") + "/32"}}
			s.Create(t, AllowIngress(Policy("x", "a-from-block", Labels("pod", "a")), nil, networkingv1.NetworkPolicyPeer{IPBlock: block}))
		}, func(t *testing.T, s *Suite) {
			s.Expect(t, NewReachability(true).Set("y/a", "x/a", false), TCP80)
		}},
		{"egress to a CIDR", func(t *testing.T, s *Suite) {
			block := &networkingv1.IPBlock{CIDR: s.PodIP(t, "z/c") + "/32"}
			s.Create(t, AllowEgress(Policy("x", "a-to-z-c", Labels("pod", "a"), Egress), nil, networkingv1.NetworkPolicyPeer{IPBlock: block}))
		}, func(t *testing.T, s *Suite) {
			s.Expect(t, NewReachability(true).Set("x/a", "*/*", false).Set("x/a", "z/c", true), TCP80, UDP80)
		}},
		{"SCTP and UDP are isolated separately", func(t *testing.T, s *Suite) {
			s.Create(t, AllowIngress(Policy("y", "b-sctp-80", Labels("pod", "b")),
				[]networkingv1.NetworkPolicyPort{Port(80, corev1.ProtocolSCTP)}, NsPeer(Labels("ns", "x"))))
		}, func(t *testing.T, s *Suite) {
			s.Expect(t, NewReachability(true).Set("*/*", "y/b", false).Set("x/*", "y/b", true), SCTP80)
			s.Expect(t, NewReachability(true).Set("*/*", "y/b", false), SCTP81, UDP80, TCP80)
		}},
	}
}

// Run runs cases, each from no policy, and removes their policies after.
func (s *Suite) Run(t *testing.T, cases []Case) {
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			s.ResetPolicies(t)
			tc.Setup(t, s)
			s.WaitConverged(t)
			tc.Expect(t, s)
		})
	}
	s.ResetPolicies(t)
}

// RunChanges covers policy update and delete, and pod and namespace label
// changes, on the same matrix.
func (s *Suite) RunChanges(t *testing.T) {
	ctx := context.Background()
	c := s.Cluster.Client()
	s.ResetPolicies(t)

	np := AllowIngress(Policy("x", "a-from-ns", Labels("pod", "a")), nil, NsPeer(Labels("ns", "y")))
	s.Create(t, np)
	s.WaitConverged(t)
	s.Expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("y/*", "x/a", true), TCP80)

	t.Run("policy update", func(t *testing.T) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(np), np); err != nil {
			t.Fatal(err)
		}
		np.Spec.Ingress[0].From = []networkingv1.NetworkPolicyPeer{NsPeer(Labels("ns", "z"))}
		if err := c.Update(ctx, np); err != nil {
			t.Fatal(err)
		}
		s.WaitConverged(t)
		s.Expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("z/*", "x/a", true), TCP80)
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
			PodSelector:       &metav1.LabelSelector{MatchLabels: Labels("role", "client")},
		}}
		if err := c.Update(ctx, np); err != nil {
			t.Fatal(err)
		}
		s.WaitConverged(t)
		s.Expect(t, NewReachability(true).Set("*/*", "x/a", false), TCP80)

		patch := client.MergeFrom(pod.DeepCopy())
		pod.Labels["role"] = "client"
		if err := c.Patch(ctx, pod, patch); err != nil {
			t.Fatal(err)
		}
		s.WaitConverged(t)
		s.Expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("y/b", "x/a", true), TCP80)

		patch = client.MergeFrom(pod.DeepCopy())
		delete(pod.Labels, "role")
		if err := c.Patch(ctx, pod, patch); err != nil {
			t.Fatal(err)
		}
		s.WaitConverged(t)
		s.Expect(t, NewReachability(true).Set("*/*", "x/a", false), TCP80)
	})

	t.Run("namespace label change", func(t *testing.T) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(np), np); err != nil {
			t.Fatal(err)
		}
		np.Spec.Ingress[0].From = []networkingv1.NetworkPolicyPeer{NsPeer(Labels("team", "blue"))}
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
		s.WaitConverged(t)
		s.Expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("z/*", "x/a", true), TCP80)

		patch = client.MergeFrom(ns.DeepCopy())
		delete(ns.Labels, "team")
		if err := c.Patch(ctx, ns, patch); err != nil {
			t.Fatal(err)
		}
		s.WaitConverged(t)
		s.Expect(t, NewReachability(true).Set("*/*", "x/a", false), TCP80)
	})

	t.Run("policy delete", func(t *testing.T) {
		if err := c.Delete(ctx, np); err != nil {
			t.Fatal(err)
		}
		s.WaitConverged(t)
		s.Expect(t, NewReachability(true), TCP80)
	})
}
