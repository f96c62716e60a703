// Package explain computes the verdict nftguard's dataplane gives a
// connection from the compiled NodeRuleSets and AddressGroups, the same data
// the agents program, and explains it: the policies isolating each side, the
// rule that allows it or the nearest miss, and hints for the usual mistakes
// found in the Pods, Namespaces, Services and policies. It is pure: callers
// read the objects and pass them in.
package explain

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/compiler"
)

// Input is a snapshot of the cluster objects the verdict depends on.
type Input struct {
	RuleSets        []v1alpha1.NodeRuleSet
	Groups          map[string]v1alpha1.AddressGroupSpec
	Pods            []corev1.Pod
	Namespaces      []corev1.Namespace
	Services        []corev1.Service
	NetworkPolicies []networkingv1.NetworkPolicy
	DefaultDenies   []v1alpha1.DefaultDeny
}

// Query is one connection: from a pod to a pod or an address, on a port.
type Query struct {
	FromNamespace, FromPod string
	// ToNamespace and ToPod name the destination pod; ToIP is used instead
	// when ToPod is empty.
	ToNamespace, ToPod string
	ToIP               netip.Addr
	// Port is the destination port number; PortName, when set instead, is
	// resolved on the destination pod's container ports.
	Port     int32
	PortName string
	Protocol v1alpha1.Protocol
}

// Verdict is the answer.
type Verdict struct {
	// Allowed is true when the connection's first packet passes both sides
	// (Audit isolation lets it pass and logs it).
	Allowed bool `json:"allowed"`
	// Audited is true when it passes only because an Audit isolation logs
	// instead of dropping.
	Audited bool `json:"audited,omitempty"`
	// Connection restates the query with the addresses used.
	Connection Connection `json:"connection"`
	Egress     Side       `json:"egress"`
	Ingress    Side       `json:"ingress"`
	// Hints point at the usual mistakes when the connection is denied.
	Hints []string `json:"hints,omitempty"`
}

// Connection is the packet evaluated.
type Connection struct {
	From     string `json:"from"`
	To       string `json:"to"`
	SrcIP    string `json:"srcIP"`
	DstIP    string `json:"dstIP"`
	Protocol string `json:"protocol"`
	Port     int32  `json:"port"`
}

// Side is the verdict of one direction: egress on the source pod's node,
// ingress on the destination pod's node.
type Side struct {
	// Node enforcing this side; empty when the endpoint is not a pod nftguard knows.
	Node string `json:"node,omitempty"`
	Pod  string `json:"pod,omitempty"`
	// Isolated is true when some policy isolates the pod in this direction.
	Isolated bool `json:"isolated"`
	// Mode of the isolation: Enforce or Audit.
	Mode     v1alpha1.IsolationMode `json:"mode,omitempty"`
	Policies []string               `json:"policies,omitempty"`
	Allowed  bool                   `json:"allowed"`
	// AllowedBy is the first rule that allows the connection.
	AllowedBy *RuleMatch `json:"allowedBy,omitempty"`
	// NearestMiss is, when denied, the rule that came closest.
	NearestMiss *RuleMatch `json:"nearestMiss,omitempty"`
	// Reason says why, in one sentence.
	Reason string `json:"reason"`
	// Notes warn when the node's table may not hold this rule set.
	Notes []string `json:"notes,omitempty"`
}

// RuleMatch is a compiled rule and how it matched the connection.
type RuleMatch struct {
	Rule     string   `json:"rule"`
	Policies []string `json:"policies"`
	// Peers and Ports describe the rule, for people.
	Peers string `json:"peers"`
	Ports string `json:"ports"`
	// PeerMatched and PortMatched say which half matched (for a miss).
	PeerMatched bool   `json:"peerMatched"`
	PortMatched bool   `json:"portMatched"`
	Why         string `json:"why,omitempty"`
}

// Explain evaluates q against in.
func Explain(in Input, q Query) (*Verdict, error) {
	x := newIndex(in)
	src, ok := x.pods[q.FromNamespace+"/"+q.FromPod]
	if !ok {
		return nil, fmt.Errorf("pod %s/%s not found", q.FromNamespace, q.FromPod)
	}
	var dst *corev1.Pod
	if q.ToPod != "" {
		if dst, ok = x.pods[q.ToNamespace+"/"+q.ToPod]; !ok {
			return nil, fmt.Errorf("pod %s/%s not found", q.ToNamespace, q.ToPod)
		}
	}
	proto := cmp.Or(q.Protocol, v1alpha1.ProtocolTCP)
	port := q.Port
	var hints []string
	if q.PortName != "" {
		if dst == nil {
			return nil, fmt.Errorf("a named port (%s) needs a destination pod", q.PortName)
		}
		n, found := containerPort(dst, q.PortName, proto)
		if !found {
			return nil, fmt.Errorf("pod %s/%s declares no %s container port named %q", dst.Namespace, dst.Name, proto, q.PortName)
		}
		port = n
	}
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("port %d out of range", port)
	}

	srcIP, dstIP, err := addresses(x, src, dst, q.ToIP)
	if err != nil {
		return nil, err
	}
	pkt := packet{src: srcIP, dst: dstIP, proto: proto, port: port}
	v := &Verdict{Connection: Connection{
		From: src.Namespace + "/" + src.Name, SrcIP: srcIP.String(), DstIP: dstIP.String(),
		Protocol: string(proto), Port: port,
	}}
	if dst != nil {
		v.Connection.To = dst.Namespace + "/" + dst.Name
	} else {
		v.Connection.To = dstIP.String()
	}

	v.Egress = x.side(src, v1alpha1.DirectionEgress, pkt)
	if dst != nil {
		v.Ingress = x.side(dst, v1alpha1.DirectionIngress, pkt)
	} else if owner := x.byIP[dstIP]; owner != nil {
		v.Ingress = x.side(owner, v1alpha1.DirectionIngress, pkt)
	} else {
		v.Ingress = Side{Allowed: true, Reason: "the destination is not a pod: nftguard filters only its egress"}
	}
	v.Allowed = v.Egress.Allowed && v.Ingress.Allowed
	v.Audited = v.Allowed && (v.Egress.auditOnly() || v.Ingress.auditOnly())
	if !v.Allowed || v.Audited {
		hints = append(hints, x.hints(src, dst, pkt, v)...)
	}
	v.Hints = dedupe(hints)
	return v, nil
}

// auditOnly: the side passes only because its isolation is Audit.
func (s Side) auditOnly() bool {
	return s.Isolated && s.Mode == v1alpha1.IsolationAudit && s.AllowedBy == nil
}

type packet struct {
	src, dst netip.Addr
	proto    v1alpha1.Protocol
	port     int32
}

type index struct {
	in       Input
	pods     map[string]*corev1.Pod
	byIP     map[netip.Addr]*corev1.Pod
	ns       map[string]*corev1.Namespace
	ruleSets map[string]*v1alpha1.NodeRuleSet
	// local finds a pod in its node's rule set: node name and entry.
	local map[string]localRef
}

type localRef struct {
	node string
	pod  *v1alpha1.LocalPod
	rs   *v1alpha1.NodeRuleSet
}

func newIndex(in Input) *index {
	x := &index{in: in, pods: map[string]*corev1.Pod{}, byIP: map[netip.Addr]*corev1.Pod{},
		ns: map[string]*corev1.Namespace{}, ruleSets: map[string]*v1alpha1.NodeRuleSet{}, local: map[string]localRef{}}
	for i := range in.Pods {
		p := &in.Pods[i]
		x.pods[p.Namespace+"/"+p.Name] = p
		if p.Spec.HostNetwork {
			continue
		}
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				x.byIP[a] = p
			}
		}
	}
	for i := range in.Namespaces {
		x.ns[in.Namespaces[i].Name] = &in.Namespaces[i]
	}
	for i := range in.RuleSets {
		rs := &in.RuleSets[i]
		x.ruleSets[rs.Name] = rs
		for j := range rs.Spec.Pods {
			lp := &rs.Spec.Pods[j]
			x.local[lp.Namespace+"/"+lp.Name] = localRef{node: rs.Name, pod: lp, rs: rs}
		}
	}
	return x
}

// addresses picks the packet's addresses: the first family both ends have.
func addresses(x *index, src, dst *corev1.Pod, toIP netip.Addr) (netip.Addr, netip.Addr, error) {
	srcIPs := x.podIPs(src)
	if len(srcIPs) == 0 {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("pod %s/%s has no IP yet", src.Namespace, src.Name)
	}
	dstIPs := []netip.Addr{toIP}
	if dst != nil {
		dstIPs = x.podIPs(dst)
		if len(dstIPs) == 0 {
			return netip.Addr{}, netip.Addr{}, fmt.Errorf("pod %s/%s has no IP yet", dst.Namespace, dst.Name)
		}
	} else if !toIP.IsValid() {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("no destination")
	}
	for _, d := range dstIPs {
		for _, s := range srcIPs {
			if s.Is4() == d.Unmap().Is4() {
				return s, d.Unmap(), nil
			}
		}
	}
	return netip.Addr{}, netip.Addr{}, fmt.Errorf("the source (%v) and destination (%v) share no IP family", srcIPs, dstIPs)
}

// podIPs are a pod's addresses as its node's rule set has them, else as
// its status has them.
func (x *index) podIPs(p *corev1.Pod) []netip.Addr {
	var ss []string
	if l, ok := x.local[p.Namespace+"/"+p.Name]; ok {
		ss = l.pod.IPs
	} else {
		for _, ip := range p.Status.PodIPs {
			ss = append(ss, ip.IP)
		}
		if len(ss) == 0 && p.Status.PodIP != "" {
			ss = []string{p.Status.PodIP}
		}
	}
	var out []netip.Addr
	for _, s := range ss {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// side evaluates one direction of pod, as its node's chain would.
func (x *index) side(p *corev1.Pod, dir v1alpha1.Direction, pkt packet) Side {
	s := Side{Pod: p.Namespace + "/" + p.Name, Node: p.Spec.NodeName}
	if p.Spec.HostNetwork {
		s.Allowed, s.Reason = true, "hostNetwork pods are never isolated"
		return s
	}
	ref, ok := x.local[p.Namespace+"/"+p.Name]
	if !ok {
		s.Allowed = true
		s.Reason = fmt.Sprintf("the pod is in no NodeRuleSet: not isolated (its node %q has no rule set listing it yet)", p.Spec.NodeName)
		return s
	}
	s.Node = ref.node
	if uninstalled(ref.rs) {
		s.Allowed = true
		s.Reason = fmt.Sprintf("node %s deleted its nftguard table for uninstall (annotation %s): it filters no traffic", ref.node, v1alpha1.UninstallAnnotation)
		return s
	}
	s.Notes = programNotes(ref.rs)
	iso := ref.pod.Ingress
	if dir == v1alpha1.DirectionEgress {
		iso = ref.pod.Egress
	}
	if iso == nil {
		s.Allowed = true
		s.Reason = fmt.Sprintf("no policy isolates the pod's %s: everything passes", strings.ToLower(string(dir)))
		return s
	}
	s.Isolated, s.Mode, s.Policies = true, cmp.Or(iso.Mode, v1alpha1.IsolationEnforce), iso.Policies
	rules := map[string]*v1alpha1.Rule{}
	for i := range ref.rs.Spec.Rules {
		rules[ref.rs.Spec.Rules[i].ID] = &ref.rs.Spec.Rules[i]
	}
	var best *RuleMatch
	score := func(m *RuleMatch) int {
		n := 0
		if m.PeerMatched {
			n += 2 // a peer that matches is the closer miss: only the port is wrong
		}
		if m.PortMatched {
			n++
		}
		return n
	}
	for _, id := range iso.Rules {
		r := rules[id]
		if r == nil {
			s.Notes = append(s.Notes, fmt.Sprintf("rule %s is referenced but not in the rule set", id))
			continue
		}
		m, notes := x.match(r, pkt)
		s.Notes = append(s.Notes, notes...)
		if m.PeerMatched && m.PortMatched {
			s.Allowed, s.AllowedBy = true, m
			s.Reason = fmt.Sprintf("allowed by rule %s of %s", r.ID, strings.Join(r.Policies, ", "))
			return s
		}
		if best == nil || score(m) > score(best) {
			best = m
		}
	}
	s.NearestMiss = best
	if s.Mode == v1alpha1.IsolationAudit {
		s.Allowed = true
		s.Reason = fmt.Sprintf("no rule allows it, but the isolation is Audit only (%s): it passes and is logged as audit", strings.Join(iso.Policies, ", "))
		return s
	}
	if len(iso.Rules) == 0 {
		s.Reason = fmt.Sprintf("isolated by %s, which allow no %s traffic at all", strings.Join(iso.Policies, ", "), strings.ToLower(string(dir)))
	} else {
		s.Reason = fmt.Sprintf("isolated by %s and none of its %d rules allows it", strings.Join(iso.Policies, ", "), len(iso.Rules))
	}
	return s
}

// match evaluates one compiled rule on the packet as the dataplane does.
func (x *index) match(r *v1alpha1.Rule, pkt packet) (*RuleMatch, []string) {
	m := &RuleMatch{Rule: r.ID, Policies: r.Policies, Ports: describePorts(r.Ports)}
	var notes, peers []string
	peerIP := pkt.src
	if r.Direction == v1alpha1.DirectionEgress {
		peerIP = pkt.dst
	}
	// A rule whose peers are named-port groups (endpoint groups) has no
	// ports: "ip daddr . meta l4proto . th dport @ep-<group>" matches address
	// and port together.
	named := len(r.Peers) > 0
	for _, p := range r.Peers {
		if g, ok := x.in.Groups[p.AddressGroup]; !ok || g.NamedPort == nil {
			named = false
		}
	}
	m.PortMatched = !named && portsMatch(r.Ports, pkt.proto, pkt.port)
	if len(r.Peers) == 0 {
		m.PeerMatched = true
		peers = []string{"any address"}
	}
	var namedPorts []string
	described := map[string]bool{} // groups described, by name: a split group's shards are one peer
	for _, p := range r.Peers {
		switch {
		case p.AddressGroup != "":
			g, ok := x.in.Groups[p.AddressGroup]
			if !ok {
				notes = append(notes, fmt.Sprintf("address group %s does not exist: the node cannot program this rule set", p.AddressGroup))
				continue
			}
			if group := compiler.LogicalGroup(p.AddressGroup); !described[group] {
				described[group] = true
				peers = append(peers, describeGroup(group, g))
			}
			if g.NamedPort != nil {
				proto := cmp.Or(g.NamedPort.Protocol, v1alpha1.ProtocolTCP)
				namedPorts = append(namedPorts, string(proto)+"/"+g.NamedPort.Name)
				for _, ep := range g.Endpoints {
					a, err := netip.ParseAddr(ep.IP)
					if err != nil || a.Unmap() != pkt.dst {
						continue
					}
					m.PeerMatched = true
					if proto == pkt.proto && ep.Port == pkt.port {
						m.PortMatched = true
					}
				}
				continue
			}
			if addressesContain(g.Addresses, peerIP) {
				m.PeerMatched = true
			}
		case p.IPBlock != nil:
			peers = append(peers, describeBlock(p.IPBlock))
			if blockContains(p.IPBlock, peerIP) {
				m.PeerMatched = true
			}
		}
	}
	if named {
		m.Ports = strings.Join(dedupe(namedPorts), ", ") + " (named, as each destination pod declares it)"
	}
	m.Peers = strings.Join(peers, ", ")
	switch {
	case m.PeerMatched && !m.PortMatched:
		m.Why = fmt.Sprintf("the peer matches but the rule allows %s, not %s/%d", cmp.Or(m.Ports, "every port"), pkt.proto, pkt.port)
	case !m.PeerMatched && m.PortMatched:
		m.Why = fmt.Sprintf("the port matches but %s is not among its peers", peerIP)
	case !m.PeerMatched:
		m.Why = fmt.Sprintf("neither %s nor %s/%d matches", peerIP, pkt.proto, pkt.port)
	}
	return m, notes
}

// portsMatch: no ports means every protocol and port; port 0 every port of
// the protocol; endPort a range.
func portsMatch(ports []v1alpha1.Port, proto v1alpha1.Protocol, port int32) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if cmp.Or(p.Protocol, v1alpha1.ProtocolTCP) != proto {
			continue
		}
		switch {
		case p.Port == 0:
			return true
		case p.EndPort != 0 && port >= p.Port && port <= p.EndPort:
			return true
		case p.Port == port:
			return true
		}
	}
	return false
}

func addressesContain(addrs []string, ip netip.Addr) bool {
	for _, s := range addrs {
		if strings.Contains(s, "/") {
			if p, err := netip.ParsePrefix(s); err == nil && p.Masked().Contains(ip) {
				return true
			}
			continue
		}
		if a, err := netip.ParseAddr(s); err == nil && a.Unmap() == ip {
			return true
		}
	}
	return false
}

// blockContains: inside cidr and outside every except.
func blockContains(b *v1alpha1.IPBlock, ip netip.Addr) bool {
	p, err := netip.ParsePrefix(b.CIDR)
	if err != nil || !p.Masked().Contains(ip) {
		return false
	}
	for _, e := range b.Except {
		if ep, err := netip.ParsePrefix(e); err == nil && ep.Masked().Contains(ip) {
			return false
		}
	}
	return true
}

// uninstalled reports whether the node's agent has deleted its table for
// uninstall: it then enforces nothing, whatever its rule set says, until it
// programs the rule set again (and reports Programmed=True).
func uninstalled(rs *v1alpha1.NodeRuleSet) bool {
	return v1alpha1.NodeProgress(rs, rs.Generation).State == v1alpha1.NodeUninstalled
}

// programNotes warn when the node's table may not hold its rule set, as
// v1alpha1.NodeProgress says.
func programNotes(rs *v1alpha1.NodeRuleSet) []string {
	p := v1alpha1.NodeProgress(rs, rs.Generation)
	c := meta.FindStatusCondition(rs.Status.Conditions, v1alpha1.ConditionProgrammed)
	switch {
	case p.State == v1alpha1.NodeTooLarge:
		return []string{fmt.Sprintf("node %s does not hold the latest compile (%s: %s): its table may hold an older rule set", rs.Name, p.Reason, p.Message)}
	case p.State == v1alpha1.NodeProgrammed:
		return nil
	case p.State == v1alpha1.NodeFailed && rs.Status.LeftOut != nil:
		return []string{fmt.Sprintf("node %s programmed its rule set without some rules (%s: %s)", rs.Name, p.Reason, p.Message)}
	case c == nil:
		return []string{fmt.Sprintf("node %s has not reported its rule set programmed (is its agent running?)", rs.Name)}
	case c.Status != metav1.ConditionTrue:
		return []string{fmt.Sprintf("node %s has not programmed this rule set (Programmed=%s, %s: %s): its table may hold an older one", rs.Name, c.Status, c.Reason, c.Message)}
	}
	return []string{fmt.Sprintf("node %s has programmed generation %d, not %d yet", rs.Name, rs.Status.ObservedGeneration, rs.Generation)}
}

func describePorts(ps []v1alpha1.Port) string {
	var out []string
	for _, p := range ps {
		proto := cmp.Or(p.Protocol, v1alpha1.ProtocolTCP)
		switch {
		case p.Port == 0:
			out = append(out, string(proto)+"/any")
		case p.EndPort != 0:
			out = append(out, fmt.Sprintf("%s/%d-%d", proto, p.Port, p.EndPort))
		default:
			out = append(out, fmt.Sprintf("%s/%d", proto, p.Port))
		}
	}
	return strings.Join(out, ", ")
}

func describeGroup(name string, g v1alpha1.AddressGroupSpec) string {
	var sel []string
	if g.Namespace != "" {
		sel = append(sel, "namespace "+g.Namespace)
	}
	if g.NamespaceSelector != nil {
		sel = append(sel, "namespaces "+selectorString(g.NamespaceSelector))
	}
	if g.PodSelector != nil {
		sel = append(sel, "pods "+selectorString(g.PodSelector))
	}
	if g.NamedPort != nil {
		sel = append(sel, fmt.Sprintf("port %s/%s", g.NamedPort.Protocol, g.NamedPort.Name))
	}
	if g.FromIPBlocks {
		sel = append(sel, "the CIDRs of the policy's ipBlocks")
	}
	if len(sel) == 0 {
		return name
	}
	return name + " (" + strings.Join(sel, ", ") + ")"
}

func describeBlock(b *v1alpha1.IPBlock) string {
	if len(b.Except) == 0 {
		return b.CIDR
	}
	return b.CIDR + " except " + strings.Join(b.Except, ", ")
}

func containerPort(p *corev1.Pod, name string, proto v1alpha1.Protocol) (int32, bool) {
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == name && string(cmp.Or(cp.Protocol, corev1.ProtocolTCP)) == string(proto) {
				return cp.ContainerPort, true
			}
		}
	}
	return 0, false
}

func dedupe(ss []string) []string {
	var out []string
	for _, s := range ss {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}
