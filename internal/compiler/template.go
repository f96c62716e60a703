package compiler

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// policyTemplate is a policy compiled for the pods of one namespace (a
// DefaultDeny compiles differently per namespace).
type policyTemplate struct {
	rules [2][]*ruleTemplate
}

// compiledRule is a rule ready for a NodeRuleSet, without its policies.
type compiledRule struct {
	id     string
	rule   v1alpha1.Rule
	groups []*groupDef
	// Room for the common single peer, saving two allocations.
	peerBuf  [1]v1alpha1.Peer
	groupBuf [1]*groupDef
}

// ruleTemplate is one rule of a policy. Most rules compile to the same
// rules for every pod (fixed); an ingress rule with named ports resolves them
// on each local pod.
type ruleTemplate struct {
	fixed    []*compiledRule
	fixedBuf [1]*compiledRule

	perPod   bool
	peers    []peer
	numeric  []v1alpha1.Port
	named    []v1alpha1.NamedPort
	resolved map[string][]*compiledRule // by resolved ports
}

// peer is a compiled peer: a group or an IP block.
type peer struct {
	key   string
	group *groupDef
	block *v1alpha1.IPBlock
}

// rulesFor returns the rules the template gives a local pod.
func (rt *ruleTemplate) rulesFor(ix *index, p *podInfo) []*compiledRule {
	if !rt.perPod {
		return rt.fixed
	}
	ports := append(ix.ports[:0], rt.numeric...)
	for _, np := range rt.named {
		if n, ok := p.namedPort(np.Name, np.Protocol); ok {
			ports = append(ports, v1alpha1.Port{Protocol: np.Protocol, Port: n})
		}
	}
	ix.ports = ports
	if len(ports) == 0 {
		// The rule lists ports and none applies to this pod: it allows nothing.
		return nil
	}
	ports = canonicalPorts(ports)
	ix.buf = appendPortsKey(ix.buf[:0], ports)
	if r, ok := rt.resolved[string(ix.buf)]; ok {
		return r
	}
	key := string(ix.buf)
	r := []*compiledRule{ix.newRule(ingress, rt.peers, slices.Clone(ports))}
	rt.resolved[key] = r
	return r
}

func (ix *index) compileTemplate(p *policy, ns string) *policyTemplate {
	t := &policyTemplate{}
	// A policy with more ipBlocks than the rule sets hold inline gets each
	// rule's blocks as a group: one policy's blocks then add a few group
	// references to a rule set, not its every block, and cannot push a node
	// over the object limit (the group is split into shards like any).
	blocks := 0
	for d := range 2 {
		for _, rs := range p.rules[d] {
			for _, pe := range rs.peers {
				if pe.block {
					blocks++
				}
			}
		}
	}
	grouped := blocks > ix.maxInlineBlocks
	for d := range 2 {
		for _, rs := range p.rules[d] {
			if rt := ix.compileRule(d, ns, rs, grouped); rt != nil {
				t.rules[d] = append(t.rules[d], rt)
			}
		}
	}
	return t
}

// compileRule compiles a rule of a policy applying to pods of namespace ns,
// with its IP blocks as one group when grouped is set. It returns nil for a
// rule that allows nothing.
func (ix *index) compileRule(d int, ns string, rs ruleSpec, grouped bool) *ruleTemplate {
	allPeers := len(rs.peers) == 0
	pods := make([]peerSpec, 0, len(rs.peers))
	var blocks []peer
	for _, p := range rs.peers {
		switch {
		case p.block && p.podSel == nil && p.nsSel == nil:
			if b, ok := normalizeIPBlock(p.cidr, p.except); ok {
				blocks = append(blocks, peer{key: blockKey(b), block: b})
			}
		case !p.block && (p.podSel != nil || p.nsSel != nil):
			pods = append(pods, p)
		default:
			// Invalid (rejected at admission): selects nothing.
		}
	}
	if !allPeers && len(pods) == 0 && len(blocks) == 0 {
		return nil
	}
	if grouped && len(blocks) > 0 {
		g := ix.blockGroup(canonicalPeers(blocks))
		blocks = []peer{{key: g.peerKey, group: g}}
	}
	allPorts := len(rs.ports) == 0
	numeric := make([]v1alpha1.Port, 0, len(rs.ports))
	var named []v1alpha1.NamedPort
	for _, pp := range rs.ports {
		port, np, ok := parsePort(pp)
		switch {
		case !ok:
		case np != nil:
			if !slices.Contains(named, *np) {
				named = append(named, *np)
			}
		default:
			numeric = append(numeric, port)
		}
	}
	if !allPorts && len(numeric) == 0 && len(named) == 0 {
		return nil
	}
	numeric = canonicalPorts(numeric)
	slices.SortFunc(named, func(a, b v1alpha1.NamedPort) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Protocol, b.Protocol))
	})

	podPeers := func(port *v1alpha1.NamedPort) []peer {
		out := make([]peer, 0, len(pods)+len(blocks))
		for _, p := range pods {
			g := ix.group(ns, p.nsSel, p.podSel, port)
			out = append(out, peer{key: g.peerKey, group: g})
		}
		return out
	}
	rt := &ruleTemplate{}
	if d == ingress {
		peers := canonicalPeers(append(podPeers(nil), blocks...))
		if len(named) == 0 {
			rt.fixedBuf[0] = ix.newRule(d, peers, numeric)
			rt.fixed = rt.fixedBuf[:]
			return rt
		}
		rt.perPod = true
		rt.peers = peers
		rt.numeric = numeric
		rt.named = named
		rt.resolved = map[string][]*compiledRule{}
		return rt
	}
	// Egress: the destination is the peer, so a named port becomes an
	// endpoint group of the peer pods declaring it, in a rule of its own.
	rt.fixed = rt.fixedBuf[:0]
	if allPorts || len(numeric) > 0 {
		rt.fixed = append(rt.fixed, ix.newRule(d, canonicalPeers(append(podPeers(nil), blocks...)), numeric))
	}
	for _, np := range named {
		var peers []peer
		if allPeers {
			g := ix.group("", &metav1.LabelSelector{}, nil, &np)
			peers = []peer{{key: g.peerKey, group: g}}
		} else {
			peers = podPeers(&np)
		}
		if len(peers) == 0 {
			continue // only IP blocks: they never match a named port
		}
		rt.fixed = append(rt.fixed, ix.newRule(d, canonicalPeers(peers), nil))
	}
	if len(rt.fixed) == 0 {
		return nil
	}
	return rt
}

// newRule builds a rule from canonical peers and ports.
func (ix *index) newRule(d int, peers []peer, ports []v1alpha1.Port) *compiledRule {
	cr := &compiledRule{rule: v1alpha1.Rule{Direction: directions[d]}}
	cr.rule.Peers, cr.groups = cr.peerBuf[:0], cr.groupBuf[:0]
	if len(peers) > len(cr.peerBuf) {
		cr.rule.Peers = make([]v1alpha1.Peer, 0, len(peers))
	}
	b := append(ix.buf[:0], "v1\x00"...)
	b = append(b, directions[d]...)
	b = append(b, 0)
	for _, p := range peers {
		b = append(b, p.key...)
		b = append(b, 0)
		if p.group != nil {
			cr.rule.Peers = append(cr.rule.Peers, v1alpha1.Peer{AddressGroup: p.group.name})
			cr.groups = append(cr.groups, p.group)
		} else {
			cr.rule.Peers = append(cr.rule.Peers, v1alpha1.Peer{IPBlock: p.block})
		}
	}
	if len(peers) == 0 {
		cr.rule.Peers, cr.groups = nil, nil
	}
	b = append(b, '|')
	b = appendPortsKey(b, ports)
	ix.buf = b
	if len(ports) > 0 {
		cr.rule.Ports = ports
	}
	sum := sha256.Sum256(b)
	cr.id = "r-" + hex.EncodeToString(sum[:6])
	cr.rule.ID = cr.id
	return cr
}

// canonicalPeers sorts peers and removes duplicates.
func canonicalPeers(peers []peer) []peer {
	slices.SortFunc(peers, func(a, b peer) int { return cmp.Compare(a.key, b.key) })
	return slices.CompactFunc(peers, func(a, b peer) bool { return a.key == b.key })
}

func blockKey(b *v1alpha1.IPBlock) string {
	return "b:" + b.CIDR + "!" + strings.Join(b.Except, ",")
}

// normalizeIPBlock returns the block in canonical network form: the CIDR
// masked, the exceptions masked, sorted, and stripped of those outside the
// block or inside another exception. It reports false for a block that is
// invalid or that its exceptions empty.
func normalizeIPBlock(cidr string, exceptions []string) (*v1alpha1.IPBlock, bool) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return nil, false
	}
	p = p.Masked()
	var except []netip.Prefix
	for _, s := range exceptions {
		e, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, false
		}
		e = e.Masked()
		if !e.Overlaps(p) {
			continue
		}
		if e.Bits() <= p.Bits() {
			return nil, false
		}
		except = append(except, e)
	}
	slices.SortFunc(except, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	out := &v1alpha1.IPBlock{CIDR: p.String()}
	var last netip.Prefix
	for _, e := range except {
		if last.IsValid() && last.Bits() <= e.Bits() && last.Contains(e.Addr()) {
			continue
		}
		out.Except = append(out.Except, e.String())
		last = e
	}
	return out, true
}

// parsePort compiles a port entry to a numeric port (or range, or every
// port of the protocol) or a named port. It reports false for an invalid
// entry, which allows nothing.
func parsePort(pp portSpec) (v1alpha1.Port, *v1alpha1.NamedPort, bool) {
	proto := pp.protocol
	if proto == "" {
		proto = v1alpha1.ProtocolTCP
	}
	switch proto {
	case v1alpha1.ProtocolTCP, v1alpha1.ProtocolUDP, v1alpha1.ProtocolSCTP:
	default:
		return v1alpha1.Port{}, nil, false
	}
	if pp.port == nil {
		if pp.endPort != nil {
			return v1alpha1.Port{}, nil, false
		}
		return v1alpha1.Port{Protocol: proto}, nil, true
	}
	if pp.port.Type == intstr.String {
		if pp.port.StrVal == "" || pp.endPort != nil {
			return v1alpha1.Port{}, nil, false
		}
		return v1alpha1.Port{}, &v1alpha1.NamedPort{Name: pp.port.StrVal, Protocol: proto}, true
	}
	n := pp.port.IntVal
	if n < 1 || n > 65535 {
		return v1alpha1.Port{}, nil, false
	}
	out := v1alpha1.Port{Protocol: proto, Port: n}
	if pp.endPort != nil {
		e := *pp.endPort
		if e < n || e > 65535 {
			return v1alpha1.Port{}, nil, false
		}
		if e > n {
			out.EndPort = e
		}
	}
	return out, nil, true
}

// canonicalPorts sorts ports, removes duplicates and the ports of a
// protocol that an every-port entry of the same protocol covers.
func canonicalPorts(ports []v1alpha1.Port) []v1alpha1.Port {
	slices.SortFunc(ports, comparePorts)
	ports = slices.Compact(ports)
	out := ports[:0]
	for i, p := range ports {
		if i > 0 && p.Protocol == out[len(out)-1].Protocol && out[len(out)-1].Port == 0 {
			continue
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func comparePorts(a, b v1alpha1.Port) int {
	return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port), cmp.Compare(a.EndPort, b.EndPort))
}

// appendPortsKey appends the text form of canonical ports used in rule hashes
// and cache keys.
func appendPortsKey(b []byte, ports []v1alpha1.Port) []byte {
	for _, p := range ports {
		b = append(b, p.Protocol...)
		b = append(b, ':')
		b = strconv.AppendInt(b, int64(p.Port), 10)
		if p.EndPort != 0 {
			b = append(b, '-')
			b = strconv.AppendInt(b, int64(p.EndPort), 10)
		}
		b = append(b, ',')
	}
	return b
}
