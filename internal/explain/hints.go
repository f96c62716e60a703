package explain

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// policyRules is the rules of one policy in one direction, as the source
// objects state them, with the namespace a bare podSelector refers to.
type policyRules struct {
	name      string // "NetworkPolicy/ns/name" or "DefaultDeny/name"
	namespace string
	rules     []ruleView
}

type ruleView struct {
	peers []networkingv1.NetworkPolicyPeer
	ports []networkingv1.NetworkPolicyPort
}

// hints looks at the policies isolating each denied side for the usual
// mistakes.
func (x *index) hints(src, dst *corev1.Pod, pkt packet, v *Verdict) []string {
	var out []string
	if dst != nil {
		out = append(out, x.servicePortHints(dst, pkt)...)
	} else if svc := x.serviceByClusterIP(pkt.dst); svc != nil {
		out = append(out, fmt.Sprintf("%s is the ClusterIP of Service %s/%s: policies apply after the Service's address is translated, so explain the connection to one of its pods (--to NAMESPACE/POD) on its target port",
			pkt.dst, svc.Namespace, svc.Name))
	}
	if !v.Egress.Allowed || v.Egress.auditOnly() {
		for _, pr := range x.policyRules(v.Egress.Policies, v1alpha1.DirectionEgress, src) {
			out = append(out, x.ruleHints(pr, dst, pkt, "to")...)
		}
		if pkt.port == 53 {
			out = append(out, fmt.Sprintf("the egress of %s/%s is isolated: DNS needs a rule allowing UDP and TCP 53 to the cluster DNS pods (a DefaultDeny's allowedEgress is the usual place)", src.Namespace, src.Name))
		}
	}
	if dst != nil && (!v.Ingress.Allowed || v.Ingress.auditOnly()) {
		for _, pr := range x.policyRules(v.Ingress.Policies, v1alpha1.DirectionIngress, dst) {
			out = append(out, x.ruleHints(pr, src, pkt, "from")...)
		}
	}
	return out
}

// ruleHints checks the peers and ports of one policy's rules against the
// peer pod (nil for an address) and the destination.
func (x *index) ruleHints(pr policyRules, peer *corev1.Pod, pkt packet, toFrom string) []string {
	var out []string
	dst := x.byIP[pkt.dst]
	for i, r := range pr.rules {
		where := fmt.Sprintf("%s rule %d", pr.name, i+1)
		for j, p := range r.peers {
			if p.IPBlock != nil || (p.PodSelector == nil && p.NamespaceSelector == nil) {
				continue
			}
			out = append(out, x.peerHints(fmt.Sprintf("%s %s[%d]", where, toFrom, j), pr.namespace, p, peer)...)
		}
		for _, port := range r.ports {
			if port.Port == nil {
				continue
			}
			proto := v1alpha1.ProtocolTCP
			if port.Protocol != nil {
				proto = v1alpha1.Protocol(*port.Protocol)
			}
			if port.Port.Type == intstr.String {
				if dst == nil {
					continue
				}
				if _, ok := containerPort(dst, port.Port.StrVal, proto); !ok {
					out = append(out, fmt.Sprintf("%s allows the named port %q, which pod %s/%s does not declare for %s (it declares %s)",
						where, port.Port.StrVal, dst.Namespace, dst.Name, proto, declaredPorts(dst)))
				}
				continue
			}
			n := port.Port.IntVal
			if n == pkt.port || proto != pkt.proto || dst == nil {
				continue
			}
			for _, svc := range x.servicesOf(dst) {
				for _, sp := range svc.Spec.Ports {
					if sp.Port == n && string(cmp.Or(sp.Protocol, corev1.ProtocolTCP)) == string(proto) && targetPort(dst, sp) == pkt.port {
						out = append(out, fmt.Sprintf("%s allows port %d, the port of Service %s/%s; policies see the pod's port %d (the Service's targetPort)",
							where, n, svc.Namespace, svc.Name, pkt.port))
					}
				}
			}
		}
	}
	return out
}

// peerHints checks one pod/namespace selector peer.
func (x *index) peerHints(where, policyNS string, p networkingv1.NetworkPolicyPeer, peer *corev1.Pod) []string {
	var out []string
	var nss []*corev1.Namespace
	if p.NamespaceSelector == nil {
		if ns := x.ns[policyNS]; ns != nil {
			nss = []*corev1.Namespace{ns}
		}
	} else {
		sel, err := metav1.LabelSelectorAsSelector(p.NamespaceSelector)
		if err != nil {
			return nil
		}
		for i := range x.in.Namespaces {
			if sel.Matches(labels.Set(x.in.Namespaces[i].Labels)) {
				nss = append(nss, &x.in.Namespaces[i])
			}
		}
		if len(nss) == 0 {
			out = append(out, fmt.Sprintf("%s: namespaceSelector %s matches no namespace", where, selectorString(p.NamespaceSelector)))
		}
	}
	if p.PodSelector != nil && len(nss) > 0 {
		sel, err := metav1.LabelSelectorAsSelector(p.PodSelector)
		if err == nil {
			found := false
			for _, pod := range x.in.Pods {
				if slices.ContainsFunc(nss, func(n *corev1.Namespace) bool { return n.Name == pod.Namespace }) && sel.Matches(labels.Set(pod.Labels)) {
					found = true
					break
				}
			}
			if !found {
				names := make([]string, len(nss))
				for i, n := range nss {
					names[i] = n.Name
				}
				out = append(out, fmt.Sprintf("%s: podSelector %s matches no pod in namespace %s", where, selectorString(p.PodSelector), list(names)))
			}
		}
	}
	if peer == nil {
		return out
	}
	// The peer's namespace.
	if p.NamespaceSelector != nil {
		if ns := x.ns[peer.Namespace]; ns != nil {
			if miss := failing(p.NamespaceSelector, ns.Labels); len(miss) == 1 {
				out = append(out, fmt.Sprintf("%s: namespaceSelector %s does not select namespace %s: %s (every namespace has the label kubernetes.io/metadata.name=%s)",
					where, selectorString(p.NamespaceSelector), peer.Namespace, miss[0], peer.Namespace))
			}
		}
	} else if peer.Namespace != policyNS && p.PodSelector != nil && len(failing(p.PodSelector, peer.Labels)) == 0 {
		out = append(out, fmt.Sprintf("%s: a podSelector without a namespaceSelector selects pods in namespace %s only; %s/%s is in %s (add a namespaceSelector)",
			where, policyNS, peer.Namespace, peer.Name, peer.Namespace))
	}
	// The peer's labels.
	if p.PodSelector != nil {
		if miss := failing(p.PodSelector, peer.Labels); len(miss) == 1 {
			out = append(out, fmt.Sprintf("%s: podSelector %s does not select pod %s/%s: %s", where, selectorString(p.PodSelector), peer.Namespace, peer.Name, miss[0]))
		}
	}
	return out
}

// failing lists the requirements of sel that set does not meet, for people.
func failing(sel *metav1.LabelSelector, set map[string]string) []string {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return nil
	}
	reqs, _ := s.Requirements()
	var out []string
	for _, r := range reqs {
		if r.Matches(labels.Set(set)) {
			continue
		}
		v, has := set[r.Key()]
		switch {
		case !has:
			out = append(out, fmt.Sprintf("it requires %s but the object has no label %s", r.String(), r.Key()))
		default:
			out = append(out, fmt.Sprintf("it requires %s but the object has %s=%s", r.String(), r.Key(), v))
		}
	}
	return out
}

// servicePortHints: the queried port is a Service port, not the pod's.
func (x *index) servicePortHints(dst *corev1.Pod, pkt packet) []string {
	if len(declared(dst)) == 0 || slices.Contains(declared(dst), pkt.port) {
		return nil
	}
	var out []string
	for _, svc := range x.servicesOf(dst) {
		for _, sp := range svc.Spec.Ports {
			if sp.Port == pkt.port && string(cmp.Or(sp.Protocol, corev1.ProtocolTCP)) == string(pkt.proto) {
				if tp := targetPort(dst, sp); tp != 0 && tp != pkt.port {
					out = append(out, fmt.Sprintf("port %d is the port of Service %s/%s; the pod receives the connection on %d (its targetPort): explain --port %d",
						pkt.port, svc.Namespace, svc.Name, tp, tp))
				}
			}
		}
	}
	return out
}

// servicesOf lists the Services whose selector selects the pod.
func (x *index) servicesOf(p *corev1.Pod) []*corev1.Service {
	var out []*corev1.Service
	for i := range x.in.Services {
		s := &x.in.Services[i]
		if s.Namespace == p.Namespace && len(s.Spec.Selector) > 0 && labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(p.Labels)) {
			out = append(out, s)
		}
	}
	return out
}

func (x *index) serviceByClusterIP(ip netip.Addr) *corev1.Service {
	for i := range x.in.Services {
		for _, s := range x.in.Services[i].Spec.ClusterIPs {
			if a, err := netip.ParseAddr(s); err == nil && a == ip {
				return &x.in.Services[i]
			}
		}
	}
	return nil
}

// targetPort resolves a Service port's target on a pod (0 if unknown).
func targetPort(p *corev1.Pod, sp corev1.ServicePort) int32 {
	switch {
	case sp.TargetPort.Type == intstr.String && sp.TargetPort.StrVal != "":
		n, _ := containerPort(p, sp.TargetPort.StrVal, v1alpha1.Protocol(cmp.Or(sp.Protocol, corev1.ProtocolTCP)))
		return n
	case sp.TargetPort.IntVal != 0:
		return sp.TargetPort.IntVal
	}
	return sp.Port
}

func declared(p *corev1.Pod) []int32 {
	var out []int32
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			out = append(out, cp.ContainerPort)
		}
	}
	return out
}

func declaredPorts(p *corev1.Pod) string {
	var out []string
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			s := fmt.Sprintf("%s/%d", cmp.Or(cp.Protocol, corev1.ProtocolTCP), cp.ContainerPort)
			if cp.Name != "" {
				s = cp.Name + "=" + s
			}
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return "no ports"
	}
	return strings.Join(out, ", ")
}

// policyRules finds the source rules of the named policies in dir; local
// is the isolated pod (a DefaultDeny's bare podSelector means its namespace).
func (x *index) policyRules(names []string, dir v1alpha1.Direction, local *corev1.Pod) []policyRules {
	var out []policyRules
	for _, name := range names {
		kind, rest, _ := strings.Cut(name, "/")
		switch kind {
		case "NetworkPolicy":
			ns, n, _ := strings.Cut(rest, "/")
			for i := range x.in.NetworkPolicies {
				np := &x.in.NetworkPolicies[i]
				if np.Namespace != ns || np.Name != n {
					continue
				}
				pr := policyRules{name: name, namespace: ns}
				if dir == v1alpha1.DirectionIngress {
					for _, r := range np.Spec.Ingress {
						pr.rules = append(pr.rules, ruleView{peers: r.From, ports: r.Ports})
					}
				} else {
					for _, r := range np.Spec.Egress {
						pr.rules = append(pr.rules, ruleView{peers: r.To, ports: r.Ports})
					}
				}
				out = append(out, pr)
			}
		case "DefaultDeny":
			for i := range x.in.DefaultDenies {
				dd := &x.in.DefaultDenies[i]
				if dd.Name != rest {
					continue
				}
				pr := policyRules{name: name, namespace: local.Namespace}
				if dir == v1alpha1.DirectionIngress {
					for _, r := range dd.Spec.AllowedIngress {
						pr.rules = append(pr.rules, ruleView{peers: v1alpha1.NetworkingPeers(r.From), ports: v1alpha1.NetworkingPorts(r.Ports)})
					}
				} else {
					for _, r := range dd.Spec.AllowedEgress {
						pr.rules = append(pr.rules, ruleView{peers: v1alpha1.NetworkingPeers(r.To), ports: v1alpha1.NetworkingPorts(r.Ports)})
					}
				}
				out = append(out, pr)
			}
		}
	}
	return out
}

// selectorString prints a selector the way kubectl's -l flag takes it.
func selectorString(s *metav1.LabelSelector) string {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil || sel.Empty() {
		return "{} (everything)"
	}
	return sel.String()
}

func list(items []string) string {
	if len(items) == 0 {
		return "(none)"
	}
	return strings.Join(items, ", ")
}
