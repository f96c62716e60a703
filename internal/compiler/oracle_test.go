package compiler

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// The oracle decides single connections straight from the Kubernetes
// objects, the way the NetworkPolicy documentation reads, sharing no code
// with the compiler; checkOracle compares it with the verdict the compiled
// rule sets and groups give.

type verdict string

const (
	vAllow verdict = "allow"
	vDrop  verdict = "drop"
	vAudit verdict = "audit" // passes, logged as a would-be drop
)

type oracle struct {
	s        *Snapshot
	exempt   map[string]bool // namespaces whose pods no policy selects
	dds      []oracleDefaultDeny
	nodes    map[string]bool
	nsLabels map[string]labels.Set
	byIP     map[netip.Addr]*corev1.Pod // eligible pods
}

func oracleEligible(p *corev1.Pod) []netip.Addr {
	if p.Spec.NodeName == "" || p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil
	}
	var out []netip.Addr
	raw := []string{p.Status.PodIP}
	if len(p.Status.PodIPs) > 0 {
		raw = nil
		for _, ip := range p.Status.PodIPs {
			raw = append(raw, ip.IP)
		}
	}
	for _, s := range raw {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a)
		}
	}
	return out
}

func newOracle(t *testing.T, s *Snapshot) *oracle {
	t.Helper()
	o := &oracle{s: s, nodes: map[string]bool{}, nsLabels: map[string]labels.Set{}, byIP: map[netip.Addr]*corev1.Pod{}}
	for _, dd := range s.DefaultDenies {
		o.dds = append(o.dds, oracleDefaultDenyOf(t, dd))
	}
	for _, n := range s.Nodes {
		o.nodes[n.Name] = true
	}
	for _, ns := range s.Namespaces {
		l := labels.Set{corev1.LabelMetadataName: ns.Name}
		for k, v := range ns.Labels {
			if k != corev1.LabelMetadataName {
				l[k] = v
			}
		}
		o.nsLabels[ns.Name] = l
	}
	for _, p := range s.Pods {
		for _, a := range oracleEligible(p) {
			o.byIP[a] = p
		}
	}
	return o
}

func (o *oracle) labelsOfNS(ns string) labels.Set {
	if l, ok := o.nsLabels[ns]; ok {
		return l
	}
	return labels.Set{corev1.LabelMetadataName: ns}
}

func matches(s *metav1.LabelSelector, l labels.Set) bool {
	sel, err := metav1.LabelSelectorAsSelector(s)
	return err == nil && sel.Matches(l)
}

// oraclePolicy is a NetworkPolicy, or a DefaultDeny as the NetworkPolicy it
// stands for in the local pod's namespace.
type oraclePolicy struct {
	ns    string
	audit bool
	types [2]bool
	rules [2][]struct {
		ports []networkingv1.NetworkPolicyPort
		peers []networkingv1.NetworkPolicyPeer
	}
}

func (o *oracle) policiesFor(local *corev1.Pod) []oraclePolicy {
	if o.exempt[local.Namespace] {
		return nil
	}
	var out []oraclePolicy
	for _, np := range o.s.NetworkPolicies {
		if np.Namespace != local.Namespace || !matches(&np.Spec.PodSelector, local.Labels) {
			continue
		}
		p := oraclePolicy{ns: np.Namespace}
		if len(np.Spec.PolicyTypes) == 0 {
			p.types = [2]bool{true, len(np.Spec.Egress) > 0}
		} else {
			p.types = [2]bool{slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress), slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)}
		}
		for _, r := range np.Spec.Ingress {
			p.rules[0] = append(p.rules[0], struct {
				ports []networkingv1.NetworkPolicyPort
				peers []networkingv1.NetworkPolicyPeer
			}{r.Ports, r.From})
		}
		for _, r := range np.Spec.Egress {
			p.rules[1] = append(p.rules[1], struct {
				ports []networkingv1.NetworkPolicyPort
				peers []networkingv1.NetworkPolicyPeer
			}{r.Ports, r.To})
		}
		out = append(out, p)
	}
	for _, dd := range o.dds {
		if !matches(dd.namespaceSelector, o.labelsOfNS(local.Namespace)) {
			continue
		}
		// An invalid podSelector narrows nothing (closed); see
		// v1alpha1.ReasonInvalidSelector.
		if _, err := metav1.LabelSelectorAsSelector(dd.podSelector); dd.podSelector != nil && err == nil && !matches(dd.podSelector, local.Labels) {
			continue
		}
		p := oraclePolicy{ns: local.Namespace, audit: dd.audit, types: dd.types}
		for _, r := range dd.ingress {
			p.rules[0] = append(p.rules[0], struct {
				ports []networkingv1.NetworkPolicyPort
				peers []networkingv1.NetworkPolicyPeer
			}{r.Ports, r.From})
		}
		for _, r := range dd.egress {
			p.rules[1] = append(p.rules[1], struct {
				ports []networkingv1.NetworkPolicyPort
				peers []networkingv1.NetworkPolicyPeer
			}{r.Ports, r.To})
		}
		out = append(out, p)
	}
	return out
}

// oracleDefaultDeny is a DefaultDeny in networking/v1 terms.
type oracleDefaultDeny struct {
	namespaceSelector, podSelector *metav1.LabelSelector
	audit                          bool
	types                          [2]bool
	ingress                        []networkingv1.NetworkPolicyIngressRule
	egress                         []networkingv1.NetworkPolicyEgressRule
}

// oracleDefaultDenyOf reads a DefaultDeny's selectors and rules as the
// metav1 and networking/v1 types they mirror, through their JSON (as the
// API server would read the same YAML), so that the oracle shares no
// conversion code with the compiler. A field the Kubernetes type does not
// have fails the test.
func oracleDefaultDenyOf(t *testing.T, dd *v1alpha1.DefaultDeny) oracleDefaultDeny {
	t.Helper()
	out := oracleDefaultDeny{audit: dd.Spec.Mode == v1alpha1.ModeAudit, types: [2]bool{true, true}}
	if len(dd.Spec.PolicyTypes) > 0 {
		out.types = [2]bool{slices.Contains(dd.Spec.PolicyTypes, v1alpha1.PolicyTypeIngress), slices.Contains(dd.Spec.PolicyTypes, v1alpha1.PolicyTypeEgress)}
	}
	sel := dd.Spec.NamespaceSelector
	oracleReJSON(t, dd.Name, &sel, &out.namespaceSelector)
	if dd.Spec.PodSelector != nil {
		oracleReJSON(t, dd.Name, dd.Spec.PodSelector, &out.podSelector)
	}
	oracleReJSON(t, dd.Name, dd.Spec.AllowedIngress, &out.ingress)
	oracleReJSON(t, dd.Name, dd.Spec.AllowedEgress, &out.egress)
	return out
}

// oracleReJSON decodes the JSON of in into out, refusing unknown fields.
func oracleReJSON(t *testing.T, what string, in, out any) {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatalf("DefaultDeny %s: encoding %T: %v", what, in, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		t.Fatalf("DefaultDeny %s: reading %s as %T: %v", what, b, out, err)
	}
}

// verdict decides a connection of local (ingress: to it, egress: from it)
// with remote on proto/port.
func (o *oracle) verdict(d int, local *corev1.Pod, remote netip.Addr, proto corev1.Protocol, port int32) verdict {
	var enforce, audit []oraclePolicy
	for _, p := range o.policiesFor(local) {
		if !p.types[d] {
			continue
		}
		if p.audit {
			audit = append(audit, p)
		} else {
			enforce = append(enforce, p)
		}
	}
	allowed := func(ps []oraclePolicy) bool {
		for _, p := range ps {
			for _, r := range p.rules[d] {
				if o.ruleAllows(d, p.ns, local, r.peers, r.ports, remote, proto, port) {
					return true
				}
			}
		}
		return false
	}
	switch {
	case len(enforce) > 0:
		if allowed(enforce) {
			return vAllow
		}
		return vDrop
	case len(audit) > 0:
		if allowed(audit) {
			return vAllow
		}
		return vAudit
	}
	return vAllow
}

func (o *oracle) ruleAllows(d int, ns string, local *corev1.Pod, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, remote netip.Addr, proto corev1.Protocol, port int32) bool {
	// The destination, on which named ports resolve.
	dst := local
	if d == 1 {
		dst = o.byIP[remote]
	}
	portOK := func(p networkingv1.NetworkPolicyPort, viaPod bool) bool {
		pr := corev1.ProtocolTCP
		if p.Protocol != nil {
			pr = *p.Protocol
		}
		if pr != proto || (pr != corev1.ProtocolTCP && pr != corev1.ProtocolUDP && pr != corev1.ProtocolSCTP) {
			return false
		}
		if p.Port == nil {
			return p.EndPort == nil
		}
		if p.Port.Type == intstr.String {
			if !viaPod || dst == nil || p.EndPort != nil {
				return false
			}
			n, ok := oracleNamedPort(dst, p.Port.StrVal, pr)
			return ok && n == port
		}
		lo := p.Port.IntVal
		hi := lo
		if p.EndPort != nil {
			hi = *p.EndPort
		}
		return lo >= 1 && hi <= 65535 && lo <= hi && lo <= port && port <= hi
	}
	anyPort := func(viaPod bool) bool {
		if len(ports) == 0 {
			return true
		}
		for _, p := range ports {
			if portOK(p, viaPod) {
				return true
			}
		}
		return false
	}
	if len(peers) == 0 {
		// Every remote; a named port needs a destination pod.
		return anyPort(true)
	}
	remotePod := o.byIP[remote]
	for _, p := range peers {
		switch {
		case p.IPBlock != nil && p.PodSelector == nil && p.NamespaceSelector == nil:
			// A named port resolves on a pod: on ingress the local one, on
			// egress there is none behind an IP block.
			if oracleInBlock(remote, p.IPBlock) && anyPort(d == 0) {
				return true
			}
		case p.IPBlock == nil && (p.PodSelector != nil || p.NamespaceSelector != nil):
			if remotePod == nil {
				continue
			}
			if p.NamespaceSelector == nil {
				if remotePod.Namespace != ns {
					continue
				}
			} else if !matches(p.NamespaceSelector, o.labelsOfNS(remotePod.Namespace)) {
				continue
			}
			if p.PodSelector != nil && !matches(p.PodSelector, remotePod.Labels) {
				continue
			}
			if anyPort(true) {
				return true
			}
		}
	}
	return false
}

func oracleNamedPort(p *corev1.Pod, name string, proto corev1.Protocol) (int32, bool) {
	for _, c := range append(slices.Clone(p.Spec.Containers), p.Spec.InitContainers...) {
		for _, cp := range c.Ports {
			pr := cp.Protocol
			if pr == "" {
				pr = corev1.ProtocolTCP
			}
			if cp.Name == name && pr == proto {
				return cp.ContainerPort, true
			}
		}
	}
	return 0, false
}

func oracleInBlock(a netip.Addr, b *networkingv1.IPBlock) bool {
	p, err := netip.ParsePrefix(b.CIDR)
	if err != nil || !p.Contains(a) {
		return false
	}
	for _, e := range b.Except {
		ep, err := netip.ParsePrefix(e)
		if err != nil || ep.Contains(a) {
			return false
		}
	}
	return true
}

// compiledVerdict decides the same connection from the compiled result.
func compiledVerdict(res *Result, d int, local *corev1.Pod, remote netip.Addr, proto corev1.Protocol, port int32) (verdict, bool) {
	spec, ok := res.NodeRuleSets[local.Spec.NodeName]
	if !ok {
		return "", false
	}
	i := slices.IndexFunc(spec.Pods, func(p v1alpha1.LocalPod) bool { return p.Namespace == local.Namespace && p.Name == local.Name })
	if i < 0 {
		return "", false
	}
	iso := spec.Pods[i].Ingress
	if d == 1 {
		iso = spec.Pods[i].Egress
	}
	if iso == nil {
		return vAllow, true
	}
	for _, id := range iso.Rules {
		j := slices.IndexFunc(spec.Rules, func(r v1alpha1.Rule) bool { return r.ID == id })
		if j >= 0 && compiledRuleAllows(res, spec.Rules[j], remote, proto, port) {
			return vAllow, true
		}
	}
	if iso.Mode == v1alpha1.IsolationAudit {
		return vAudit, true
	}
	return vDrop, true
}

func compiledRuleAllows(res *Result, r v1alpha1.Rule, remote netip.Addr, proto corev1.Protocol, port int32) bool {
	portOK := len(r.Ports) == 0
	for _, p := range r.Ports {
		if string(p.Protocol) == string(proto) && (p.Port == 0 || p.Port == port || (p.EndPort != 0 && p.Port <= port && port <= p.EndPort)) {
			portOK = true
		}
	}
	if len(r.Peers) == 0 {
		return portOK
	}
	for _, p := range r.Peers {
		if p.IPBlock != nil {
			if portOK && oracleInBlock(remote, &networkingv1.IPBlock{CIDR: p.IPBlock.CIDR, Except: p.IPBlock.Except}) {
				return true
			}
			continue
		}
		g := res.AddressGroups[p.AddressGroup]
		if g.NamedPort != nil {
			if string(g.NamedPort.Protocol) == string(proto) && slices.Contains(g.Endpoints, v1alpha1.Endpoint{IP: remote.String(), Port: port}) {
				return true
			}
			continue
		}
		if portOK && slices.ContainsFunc(g.Addresses, func(a string) bool {
			// An address, or a CIDR in a group made from ipBlocks.
			if !g.FromIPBlocks {
				return a == remote.String()
			}
			return netip.MustParsePrefix(a).Contains(remote)
		}) {
			return true
		}
	}
	return false
}

var oracleProbes = []struct {
	proto corev1.Protocol
	port  int32
}{
	{corev1.ProtocolTCP, 80}, {corev1.ProtocolTCP, 81}, {corev1.ProtocolTCP, 85}, {corev1.ProtocolTCP, 8080},
	{corev1.ProtocolTCP, 9100}, {corev1.ProtocolUDP, 53}, {corev1.ProtocolUDP, 80}, {corev1.ProtocolSCTP, 80},
}

// checkOracle compares oracle and compiled verdicts for every local pod,
// direction, remote (every pod address and a few outside ones) and probe.
// checkOracle compares the compiled verdicts with the oracle's; exempt
// are the namespaces the compilation exempted.
func checkOracle(t *testing.T, s *Snapshot, res *Result, exempt ...string) {
	t.Helper()
	o := newOracle(t, s)
	o.exempt = map[string]bool{}
	for _, ns := range exempt {
		o.exempt[ns] = true
	}
	remotes := []netip.Addr{netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("198.18.0.200"), netip.MustParseAddr("fd00::ff"), netip.MustParseAddr("198.18.9.1")}
	for _, p := range s.Pods {
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil && !slices.Contains(remotes, a) {
				remotes = append(remotes, a)
			}
		}
	}
	failures := 0
	for _, local := range s.Pods {
		if len(oracleEligible(local)) == 0 || !o.nodes[local.Spec.NodeName] {
			continue
		}
		for d := range 2 {
			for _, remote := range remotes {
				for _, pr := range oracleProbes {
					want := o.verdict(d, local, remote, pr.proto, pr.port)
					got, ok := compiledVerdict(res, d, local, remote, pr.proto, pr.port)
					if !ok {
						t.Fatalf("local pod %s/%s missing from its node's rule set", local.Namespace, local.Name)
					}
					if got != want {
						failures++
						if failures <= 5 {
							t.Errorf("%s %s/%s remote %s %s/%d: compiled %s, oracle %s",
								[]string{"ingress to", "egress from"}[d], local.Namespace, local.Name, remote, pr.proto, pr.port, got, want)
						}
					}
				}
			}
		}
	}
	if failures > 5 {
		t.Errorf("... %d disagreements in all", failures)
	}
}

// TestOracleReadsDefaultDenies: a DefaultDeny built from networking/v1
// rules (by the builders' own conversion) reads back, through the oracle's,
// as the same rules and selectors.
func TestOracleReadsDefaultDenies(t *testing.T) {
	ingressPorts := ports(tcp(80), tcp("http"), np(udp, 53), np(sctp, 9000), portRange(corev1.ProtocolTCP, 8000, 8100))
	ingressPeers := []networkingv1.NetworkPolicyPeer{
		podPeer(sel("app", "a")),
		nsPeer(expr("team", in, "a", "b")),
		bothPeer(expr("env", nin, "dev"), expr("tier", ex)),
		blockPeer("198.18.0.0/16", "198.18.1.0/24", "198.18.2.0/24"),
		blockPeer("fd00::/64"),
	}
	egressPorts := ports(np(udp, nil))
	egressPeers := []networkingv1.NetworkPolicyPeer{nsPeer(all()), podPeer(expr("k8s-app", dnex))}
	dd := mkDD("dd", expr("ns", ex), ddAudit(), ddPods(sel("role", "db")), ddTypes(v1alpha1.PolicyTypeEgress),
		ddIngress(ingressPorts, ingressPeers...), ddIngress(nil), ddEgress(egressPorts, egressPeers...))

	got := oracleDefaultDenyOf(t, dd)
	want := oracleDefaultDeny{
		namespaceSelector: expr("ns", ex),
		podSelector:       sel("role", "db"),
		audit:             true,
		types:             [2]bool{false, true},
		ingress:           []networkingv1.NetworkPolicyIngressRule{{Ports: ingressPorts, From: ingressPeers}, {}},
		egress:            []networkingv1.NetworkPolicyEgressRule{{Ports: egressPorts, To: egressPeers}},
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(oracleDefaultDeny{}), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("the oracle reads the DefaultDeny differently (-want +got):\n%s", diff)
	}
}
