package compilertest

import (
	"fmt"
	"math/rand/v2"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/compiler"
)

// Params sizes a synthetic cluster.
type Params struct {
	Seed            uint64
	Nodes           int
	PodsPerNode     int
	Namespaces      int
	NetworkPolicies int
	// DefaultDenies adds an Enforce DefaultDeny for env=prod namespaces
	// (keeping DNS) and an Audit one for env=staging.
	DefaultDenies bool
	// DualStackEvery gives every n-th pod an IPv6 address as well; 0: none.
	DualStackEvery int
}

// synthetic apps: each namespace runs these, in turn.
var syntheticApps = []struct {
	name, tier string
	httpPort   int32
}{
	{"frontend", "web", 8080},
	{"api", "api", 8080},
	{"db", "db", 0},
	{"worker", "worker", 0},
	{"cache", "cache", 0},
	{"gateway", "web", 80},
}

// Synthetic generates a cluster with realistic policy shapes, the same for
// the same Params: namespaces labelled by team and env, a few apps per
// namespace spread over the nodes, per-namespace NetworkPolicies (default
// deny, allow from same-namespace tiers, from other namespaces by label,
// named ports, DNS and ipBlock egress, matchExpressions) and optionally
// DefaultDenies. It is meant for scale tests and benchmarks.
func Synthetic(p Params) *compiler.Snapshot {
	rng := rand.New(rand.NewPCG(p.Seed, p.Seed^0x9e3779b97f4a7c15))
	s := &compiler.Snapshot{}
	for i := range p.Nodes {
		s.Nodes = append(s.Nodes, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node-%04d", i)}})
	}
	nsCount := max(p.Namespaces, 1)
	envs := []string{"prod", "staging", "dev"}
	var nsNames []string
	for i := range nsCount {
		name := fmt.Sprintf("ns-%04d", i)
		nsNames = append(nsNames, name)
		s.Namespaces = append(s.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			corev1.LabelMetadataName: name,
			"team":                   fmt.Sprintf("team-%02d", i%20),
			"env":                    envs[i%len(envs)],
		}}})
	}
	s.Namespaces = append(s.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system", Labels: map[string]string{
		corev1.LabelMetadataName: "kube-system",
	}}})

	// Spread the pods over the nodes: each node gets PodsPerNode slots.
	total := p.Nodes * p.PodsPerNode
	slots := make([]int, total)
	for i := range slots {
		slots[i] = i / max(p.PodsPerNode, 1)
	}
	rng.Shuffle(len(slots), func(i, j int) { slots[i], slots[j] = slots[j], slots[i] })
	v4 := netip.MustParseAddr("10.0.0.0")
	v6 := netip.MustParseAddr("fd00::")
	for i := range total {
		v4 = v4.Next()
		v6 = v6.Next()
		node := s.Nodes[slots[i]].Name
		var pod *corev1.Pod
		if i < 2 {
			pod = syntheticDNSPod(i, node)
		} else {
			ns := nsNames[i%nsCount]
			app := syntheticApps[(i/nsCount)%len(syntheticApps)]
			pod = syntheticPod(ns, fmt.Sprintf("%s-%d", app.name, i), node, app.name, app.tier, app.httpPort)
		}
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: v4.String()}}, PodIP: v4.String()}
		if p.DualStackEvery > 0 && i%p.DualStackEvery == 0 {
			pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: v6.String()})
		}
		s.Pods = append(s.Pods, pod)
	}

	for k := range p.NetworkPolicies {
		ns := nsNames[k%nsCount]
		round := k / nsCount
		s.NetworkPolicies = append(s.NetworkPolicies, syntheticPolicy(rng, ns, round, round+k%nsCount, nsCount))
	}

	if p.DefaultDenies {
		udp := v1alpha1.ProtocolUDP
		tcp := v1alpha1.ProtocolTCP
		dns := intstr.FromInt32(53)
		s.DefaultDenies = append(s.DefaultDenies,
			&v1alpha1.DefaultDeny{
				ObjectMeta: metav1.ObjectMeta{Name: "baseline-prod"},
				Spec: v1alpha1.DefaultDenySpec{
					NamespaceSelector: v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"env": "prod"}},
					PolicyTypes:       []v1alpha1.PolicyType{v1alpha1.PolicyTypeIngress, v1alpha1.PolicyTypeEgress},
					Mode:              v1alpha1.ModeEnforce,
					AllowedEgress: []v1alpha1.EgressRule{{
						Ports: []v1alpha1.NetworkPolicyPort{{Protocol: &udp, Port: &dns}, {Protocol: &tcp, Port: &dns}},
						To: []v1alpha1.NetworkPolicyPeer{{
							NamespaceSelector: &v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{corev1.LabelMetadataName: "kube-system"}},
							PodSelector:       &v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"k8s-app": "kube-dns"}},
						}},
					}},
					AllowedIngress: []v1alpha1.IngressRule{{
						From: []v1alpha1.NetworkPolicyPeer{{PodSelector: &v1alpha1.LabelSelector{}}},
					}},
				},
			},
			&v1alpha1.DefaultDeny{
				ObjectMeta: metav1.ObjectMeta{Name: "audit-staging"},
				Spec: v1alpha1.DefaultDenySpec{
					NamespaceSelector: v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"env": "staging"}},
					Mode:              v1alpha1.ModeAudit,
				},
			},
		)
	}
	return s
}

func syntheticPod(ns, name, node, app, tier string, httpPort int32) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{
			"app": app, "tier": tier, "version": "v1",
		}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{
			Name:  app,
			Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP}},
		}}},
	}
	if httpPort != 0 {
		pod.Spec.Containers[0].Ports = append(pod.Spec.Containers[0].Ports, corev1.ContainerPort{Name: "http", ContainerPort: httpPort})
	}
	if tier == "db" {
		pod.Spec.Containers[0].Ports = append(pod.Spec.Containers[0].Ports, corev1.ContainerPort{Name: "postgres", ContainerPort: 5432})
	}
	return pod
}

func syntheticDNSPod(i int, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: fmt.Sprintf("coredns-%d", i), Labels: map[string]string{"k8s-app": "kube-dns"}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{
			Name: "coredns",
			Ports: []corev1.ContainerPort{
				{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
				{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
			},
		}}},
	}
}

// syntheticPolicy returns the round-th policy of a namespace, of the given
// shape (taken modulo the number of shapes).
func syntheticPolicy(rng *rand.Rand, ns string, round, shape, nsCount int) *networkingv1.NetworkPolicy {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	port := func(proto corev1.Protocol, v intstr.IntOrString) networkingv1.NetworkPolicyPort {
		return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &v}
	}
	labels := func(kv ...string) *metav1.LabelSelector {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return &metav1.LabelSelector{MatchLabels: m}
	}
	otherNS := fmt.Sprintf("ns-%04d", rng.IntN(nsCount))
	team := fmt.Sprintf("team-%02d", rng.IntN(20))
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("policy-%d", round)}}
	spec := &np.Spec
	switch shape % 8 {
	case 0: // default deny ingress
		spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	case 1: // web reachable from the whole cluster on its named http port
		spec.PodSelector = *labels("tier", "web")
		spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			Ports: []networkingv1.NetworkPolicyPort{port(tcp, intstr.FromString("http"))},
			From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}},
		}}
	case 2: // api from web in the namespace, metrics from the team's namespaces
		spec.PodSelector = *labels("tier", "api")
		spec.Ingress = []networkingv1.NetworkPolicyIngressRule{
			{
				Ports: []networkingv1.NetworkPolicyPort{port(tcp, intstr.FromInt32(8080))},
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: labels("tier", "web")}},
			},
			{
				Ports: []networkingv1.NetworkPolicyPort{port(tcp, intstr.FromString("metrics"))},
				From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: labels("team", team), PodSelector: labels("app", "prometheus")}},
			},
		}
	case 3: // db from api
		spec.PodSelector = *labels("tier", "db")
		spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			Ports: []networkingv1.NetworkPolicyPort{port(tcp, intstr.FromInt32(5432))},
			From:  []networkingv1.NetworkPolicyPeer{{PodSelector: labels("tier", "api")}},
		}}
	case 4: // api egress: db, DNS, an external range
		spec.PodSelector = *labels("tier", "api")
		spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
		spec.Egress = []networkingv1.NetworkPolicyEgressRule{
			{
				Ports: []networkingv1.NetworkPolicyPort{port(tcp, intstr.FromString("postgres"))},
				To:    []networkingv1.NetworkPolicyPeer{{PodSelector: labels("tier", "db")}},
			},
			{
				Ports: []networkingv1.NetworkPolicyPort{port(udp, intstr.FromInt32(53)), port(tcp, intstr.FromInt32(53))},
				To: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: labels(corev1.LabelMetadataName, "kube-system"),
					PodSelector:       labels("k8s-app", "kube-dns"),
				}},
			},
			{
				Ports: []networkingv1.NetworkPolicyPort{port(tcp, intstr.FromInt32(443))},
				To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{
					CIDR:   fmt.Sprintf("172.%d.0.0/16", 16+rng.IntN(16)),
					Except: []string{fmt.Sprintf("172.16.%d.0/24", rng.IntN(256))},
				}}},
			},
		}
	case 5: // expressions: web and api from non-dev namespaces on a range
		spec.PodSelector = metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"web", "api"}},
		}}
		end := int32(8100)
		p := port(tcp, intstr.FromInt32(8000))
		p.EndPort = &end
		spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			Ports: []networkingv1.NetworkPolicyPort{p},
			From: []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "env", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"dev"}},
				}},
				PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "tier", Operator: metav1.LabelSelectorOpExists},
				}},
			}},
		}}
	case 6: // workers talk to another namespace's http, named
		spec.PodSelector = *labels("tier", "worker")
		spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
		spec.Egress = []networkingv1.NetworkPolicyEgressRule{{
			Ports: []networkingv1.NetworkPolicyPort{port(tcp, intstr.FromString("http")), port(tcp, intstr.FromInt32(8443))},
			To:    []networkingv1.NetworkPolicyPeer{{NamespaceSelector: labels(corev1.LabelMetadataName, otherNS)}},
		}}
	case 7: // cache from the namespace's apps
		spec.PodSelector = *labels("tier", "cache")
		spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			Ports: []networkingv1.NetworkPolicyPort{port(tcp, intstr.FromInt32(6379))},
			From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: labels("tier", "api")},
				{PodSelector: labels("tier", "worker")},
			},
		}}
	}
	if round >= 8 {
		// Later rounds: more of the same shapes under new names, selecting
		// by version too, as teams add policies.
		spec.PodSelector.MatchLabels = mergeLabels(spec.PodSelector.MatchLabels, "version", "v1")
	}
	return np
}

func mergeLabels(m map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for kk, vv := range m {
		out[kk] = vv
	}
	return out
}
