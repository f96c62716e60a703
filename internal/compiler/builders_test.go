package compiler

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// Objects.

func mkNode(name string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func mkNS(name string, kv ...string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: kvMap(kv)}}
}

type podOpt func(*corev1.Pod)

// mkPod returns a running pod on node with the comma-separated IPs.
func mkPod(ns, name, node, ips string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + ns + "-" + name)},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "main"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if ips != "" {
		for _, ip := range strings.Split(ips, ",") {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
		}
		p.Status.PodIP = p.Status.PodIPs[0].IP
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func labelsOf(kv ...string) podOpt {
	return func(p *corev1.Pod) { p.Labels = kvMap(kv) }
}

// cport is a container port; proto "" is TCP.
func cport(name string, port int32, proto corev1.Protocol) corev1.ContainerPort {
	return corev1.ContainerPort{Name: name, ContainerPort: port, Protocol: proto}
}

func containerPorts(ports ...corev1.ContainerPort) podOpt {
	return func(p *corev1.Pod) { p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, ports...) }
}

func initPorts(ports ...corev1.ContainerPort) podOpt {
	return func(p *corev1.Pod) {
		always := corev1.ContainerRestartPolicyAlways
		p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: "sidecar", RestartPolicy: &always, Ports: ports})
	}
}

func hostNetwork() podOpt { return func(p *corev1.Pod) { p.Spec.HostNetwork = true } }

func phase(ph corev1.PodPhase) podOpt { return func(p *corev1.Pod) { p.Status.Phase = ph } }

// legacyIP keeps only status.podIP, as old kubelets wrote it.
func legacyIP() podOpt { return func(p *corev1.Pod) { p.Status.PodIPs = nil } }

func kvMap(kv []string) map[string]string {
	if len(kv) == 0 {
		return nil
	}
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// Selectors.

func sel(kv ...string) *metav1.LabelSelector { return &metav1.LabelSelector{MatchLabels: kvMap(kv)} }

func all() *metav1.LabelSelector { return &metav1.LabelSelector{} }

func expr(key string, op metav1.LabelSelectorOperator, values ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

// NetworkPolicies.

type npOpt func(*networkingv1.NetworkPolicy)

func mkNP(ns, name string, podSel *metav1.LabelSelector, opts ...npOpt) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: networkingv1.NetworkPolicySpec{PodSelector: *podSel}}
	for _, o := range opts {
		o(np)
	}
	return np
}

func policyTypes(t ...networkingv1.PolicyType) npOpt {
	return func(np *networkingv1.NetworkPolicy) { np.Spec.PolicyTypes = t }
}

const (
	tIn = networkingv1.PolicyTypeIngress
	tEg = networkingv1.PolicyTypeEgress
)

// ingressRule adds a rule; ports nil means absent, peers none means absent.
func ingressRule(ports []networkingv1.NetworkPolicyPort, peers ...networkingv1.NetworkPolicyPeer) npOpt {
	return func(np *networkingv1.NetworkPolicy) {
		np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{Ports: ports, From: peers})
	}
}

func egressRule(ports []networkingv1.NetworkPolicyPort, peers ...networkingv1.NetworkPolicyPeer) npOpt {
	return func(np *networkingv1.NetworkPolicy) {
		np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{Ports: ports, To: peers})
	}
}

func podPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: s}
}

func nsPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: s}
}

func bothPeer(nsSel, podSel *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: nsSel, PodSelector: podSel}
}

func blockPeer(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func ports(p ...networkingv1.NetworkPolicyPort) []networkingv1.NetworkPolicyPort {
	if p == nil {
		return []networkingv1.NetworkPolicyPort{}
	}
	return p
}

func np(proto corev1.Protocol, port any) networkingv1.NetworkPolicyPort {
	out := networkingv1.NetworkPolicyPort{}
	if proto != "" {
		out.Protocol = &proto
	}
	switch v := port.(type) {
	case nil:
	case int:
		p := intstr.FromInt32(int32(v))
		out.Port = &p
	case string:
		p := intstr.FromString(v)
		out.Port = &p
	}
	return out
}

func tcp(port any) networkingv1.NetworkPolicyPort { return np("", port) }

func portRange(proto corev1.Protocol, from, to int32) networkingv1.NetworkPolicyPort {
	p := np(proto, int(from))
	p.EndPort = &to
	return p
}

// DefaultDenies.

type ddOpt func(*v1alpha1.DefaultDeny)

func mkDD(name string, nsSel *metav1.LabelSelector, opts ...ddOpt) *v1alpha1.DefaultDeny {
	dd := &v1alpha1.DefaultDeny{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.DefaultDenySpec{NamespaceSelector: *fromMeta(nsSel)}}
	for _, o := range opts {
		o(dd)
	}
	return dd
}

func ddAudit() ddOpt { return func(dd *v1alpha1.DefaultDeny) { dd.Spec.Mode = v1alpha1.ModeAudit } }

func ddEnforce() ddOpt { return func(dd *v1alpha1.DefaultDeny) { dd.Spec.Mode = v1alpha1.ModeEnforce } }

func ddPods(s *metav1.LabelSelector) ddOpt {
	return func(dd *v1alpha1.DefaultDeny) { dd.Spec.PodSelector = fromMeta(s) }
}

func ddTypes(t ...v1alpha1.PolicyType) ddOpt {
	return func(dd *v1alpha1.DefaultDeny) { dd.Spec.PolicyTypes = t }
}

func ddIngress(ports []networkingv1.NetworkPolicyPort, peers ...networkingv1.NetworkPolicyPeer) ddOpt {
	return func(dd *v1alpha1.DefaultDeny) {
		dd.Spec.AllowedIngress = append(dd.Spec.AllowedIngress, v1alpha1.IngressRule{Ports: toDDPorts(ports), From: toDDPeers(peers)})
	}
}

func ddEgress(ports []networkingv1.NetworkPolicyPort, peers ...networkingv1.NetworkPolicyPeer) ddOpt {
	return func(dd *v1alpha1.DefaultDeny) {
		dd.Spec.AllowedEgress = append(dd.Spec.AllowedEgress, v1alpha1.EgressRule{Ports: toDDPorts(ports), To: toDDPeers(peers)})
	}
}

func fromMeta(s *metav1.LabelSelector) *v1alpha1.LabelSelector {
	if s == nil {
		return nil
	}
	out := &v1alpha1.LabelSelector{MatchLabels: v1alpha1.MatchLabels(s.MatchLabels)}
	for _, e := range s.MatchExpressions {
		out.MatchExpressions = append(out.MatchExpressions, v1alpha1.LabelSelectorRequirement{Key: e.Key, Operator: e.Operator, Values: e.Values})
	}
	return out
}

func toDDPorts(in []networkingv1.NetworkPolicyPort) []v1alpha1.NetworkPolicyPort {
	if in == nil {
		return nil
	}
	out := []v1alpha1.NetworkPolicyPort{}
	for _, p := range in {
		o := v1alpha1.NetworkPolicyPort{Port: p.Port, EndPort: p.EndPort}
		if p.Protocol != nil {
			proto := v1alpha1.Protocol(*p.Protocol)
			o.Protocol = &proto
		}
		out = append(out, o)
	}
	return out
}

func toDDPeers(in []networkingv1.NetworkPolicyPeer) []v1alpha1.NetworkPolicyPeer {
	var out []v1alpha1.NetworkPolicyPeer
	for _, p := range in {
		o := v1alpha1.NetworkPolicyPeer{PodSelector: fromMeta(p.PodSelector), NamespaceSelector: fromMeta(p.NamespaceSelector)}
		if p.IPBlock != nil {
			o.IPBlock = &v1alpha1.NetworkPolicyIPBlock{CIDR: p.IPBlock.CIDR, Except: p.IPBlock.Except}
		}
		out = append(out, o)
	}
	return out
}

// snap sorts objects into a Snapshot.
func snap(objs ...any) *Snapshot {
	s := &Snapshot{}
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.Node:
			s.Nodes = append(s.Nodes, o)
		case *corev1.Namespace:
			s.Namespaces = append(s.Namespaces, o)
		case *corev1.Pod:
			s.Pods = append(s.Pods, o)
		case *networkingv1.NetworkPolicy:
			s.NetworkPolicies = append(s.NetworkPolicies, o)
		case *v1alpha1.DefaultDeny:
			s.DefaultDenies = append(s.DefaultDenies, o)
		case []any:
			o2 := snap(o...)
			s.Nodes = append(s.Nodes, o2.Nodes...)
			s.Namespaces = append(s.Namespaces, o2.Namespaces...)
			s.Pods = append(s.Pods, o2.Pods...)
			s.NetworkPolicies = append(s.NetworkPolicies, o2.NetworkPolicies...)
			s.DefaultDenies = append(s.DefaultDenies, o2.DefaultDenies...)
		default:
			panic(fmt.Sprintf("snap: unexpected %T", o))
		}
	}
	return s
}

// Views: a result rendered with rule ids and group names replaced by what
// they stand for, so that expectations read like the policy.

type podView struct {
	In, Eg *isoView
}

type isoView struct {
	Mode     v1alpha1.IsolationMode
	Policies []string
	// Rules are rendered "<peers> on <ports>", sorted: peers are "any",
	// "pods(<addresses>)", "eps(<ip:port>...)" or "cidr(<cidr> except ...)";
	// ports are "all" or "<proto>/<port>[-<end>]", "<proto>/*".
	Rules []string
}

// views renders every local pod of the result, keyed "ns/name", checking on
// the way that every referenced rule and group exists.
func views(t *testing.T, res *Result) map[string]podView {
	t.Helper()
	out := map[string]podView{}
	for node, spec := range res.NodeRuleSets {
		rules := map[string]v1alpha1.Rule{}
		for _, r := range spec.Rules {
			rules[r.ID] = r
		}
		for _, p := range spec.Pods {
			key := p.Namespace + "/" + p.Name
			if _, dup := out[key]; dup {
				t.Errorf("pod %s on two nodes", key)
			}
			out[key] = podView{
				In: isoViewOf(t, node, p.Ingress, rules, res),
				Eg: isoViewOf(t, node, p.Egress, rules, res),
			}
		}
	}
	return out
}

func isoViewOf(t *testing.T, node string, iso *v1alpha1.Isolation, rules map[string]v1alpha1.Rule, res *Result) *isoView {
	t.Helper()
	if iso == nil {
		return nil
	}
	v := &isoView{Mode: iso.Mode, Policies: iso.Policies}
	for _, id := range iso.Rules {
		r, ok := rules[id]
		if !ok {
			t.Errorf("node %s: rule %s referenced but missing", node, id)
			continue
		}
		v.Rules = append(v.Rules, renderRule(t, r, res))
	}
	slices.Sort(v.Rules)
	return v
}

func renderRule(t *testing.T, r v1alpha1.Rule, res *Result) string {
	t.Helper()
	var peers []string
	for _, p := range r.Peers {
		switch {
		case p.IPBlock != nil:
			s := "cidr(" + p.IPBlock.CIDR
			if len(p.IPBlock.Except) > 0 {
				s += " except " + strings.Join(p.IPBlock.Except, " ")
			}
			peers = append(peers, s+")")
		default:
			g, ok := res.AddressGroups[p.AddressGroup]
			if !ok {
				t.Errorf("group %s referenced but missing", p.AddressGroup)
				continue
			}
			if g.NamedPort != nil {
				var eps []string
				for _, e := range g.Endpoints {
					eps = append(eps, fmt.Sprintf("%s:%d", e.IP, e.Port))
				}
				peers = append(peers, "eps("+strings.Join(eps, " ")+")")
			} else {
				peers = append(peers, "pods("+strings.Join(g.Addresses, " ")+")")
			}
		}
	}
	if len(peers) == 0 {
		peers = []string{"any"}
	}
	var ps []string
	for _, p := range r.Ports {
		switch {
		case p.Port == 0:
			ps = append(ps, string(p.Protocol)+"/*")
		case p.EndPort != 0:
			ps = append(ps, fmt.Sprintf("%s/%d-%d", p.Protocol, p.Port, p.EndPort))
		default:
			ps = append(ps, fmt.Sprintf("%s/%d", p.Protocol, p.Port))
		}
	}
	if len(ps) == 0 {
		ps = []string{"all"}
	}
	return strings.Join(peers, " ") + " on " + strings.Join(ps, " ")
}

func enforce(policies []string, rules ...string) *isoView {
	return &isoView{Mode: v1alpha1.IsolationEnforce, Policies: policies, Rules: rules}
}

func audit(policies []string, rules ...string) *isoView {
	return &isoView{Mode: v1alpha1.IsolationAudit, Policies: policies, Rules: rules}
}

func pols(p ...string) []string { return p }
