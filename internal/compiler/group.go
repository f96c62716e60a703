package compiler

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// groupDef is a pod peer selector: the definition of an AddressGroup.
type groupDef struct {
	name      string
	namespace string                // fixed namespace; "" when nsSpec is set
	nsSpec    *metav1.LabelSelector // canonical; nil when the namespace is fixed
	podSpec   *metav1.LabelSelector // canonical; nil: every pod
	nsSel     labels.Selector       // nil when the namespace is fixed
	podSel    labels.Selector       // nil: every pod
	namedPort *v1alpha1.NamedPort   // set for an endpoint group
}

// groupKey is hashed into a group's name.
type groupKey struct {
	Namespace         string                `json:"ns,omitempty"`
	NamespaceSelector *metav1.LabelSelector `json:"nss,omitempty"`
	PodSelector       *metav1.LabelSelector `json:"pod,omitempty"`
	NamedPort         *v1alpha1.NamedPort   `json:"port,omitempty"`
}

// group returns the group of the pods matching podSel (nil or {}: all) in
// namespace ns, or, when nsSel is set, in the namespaces it matches; with a
// named port, only the pods declaring it. Equal selectors give one group.
func (ix *index) group(ns string, nsSel, podSel *metav1.LabelSelector, port *v1alpha1.NamedPort) *groupDef {
	k := groupKey{Namespace: ns, NamespaceSelector: canonicalSelector(nsSel), PodSelector: canonicalSelector(podSel), NamedPort: port}
	if k.NamespaceSelector != nil {
		k.Namespace = ""
	}
	if emptySelector(k.PodSelector) {
		k.PodSelector = nil
	}
	b, err := json.Marshal(k)
	if err != nil {
		panic(err) // only strings inside
	}
	sum := sha256.Sum256(b)
	name := "ag-" + hex.EncodeToString(sum[:8])
	if g, ok := ix.groups[name]; ok {
		return g
	}
	g := &groupDef{name: name, namespace: k.Namespace, nsSpec: k.NamespaceSelector, podSpec: k.PodSelector}
	if port != nil {
		p := *port
		g.namedPort = &p
	}
	if g.nsSpec != nil {
		g.nsSel = ix.selector(g.nsSpec)
	}
	if g.podSpec != nil {
		g.podSel = ix.selector(g.podSpec)
	}
	ix.groups[name] = g
	return g
}

// matchesNamespace reports whether the group can hold pods of namespace ns
// whose labels are nsLabels.
func (g *groupDef) matchesNamespace(ns string, nsLabels labels.Set) bool {
	if g.nsSel == nil {
		return ns == g.namespace
	}
	return g.nsSel.Matches(nsLabels)
}

// matchesPod reports whether a pod of a matching namespace is a member.
func (g *groupDef) matchesPod(p *podInfo) bool {
	if g.podSel != nil && !g.podSel.Matches(p.labels) {
		return false
	}
	if g.namedPort != nil {
		_, ok := p.namedPort(g.namedPort.Name, g.namedPort.Protocol)
		return ok
	}
	return true
}

func (g *groupDef) matches(ix *index, p *podInfo) bool {
	return g.matchesNamespace(p.key.ns, ix.nsLabels(p.key.ns)) && g.matchesPod(p)
}

// scanMembers returns the group's members among every eligible pod.
func (ix *index) scanMembers(g *groupDef) []*podInfo {
	var out []*podInfo
	for _, ns := range ix.candidateNamespaces(g) {
		for _, p := range ix.podsByNs[ns] {
			if g.matchesPod(p) {
				out = append(out, p)
			}
		}
	}
	return out
}

// candidateNamespaces returns the namespaces with pods whose pods the group
// can hold.
func (ix *index) candidateNamespaces(g *groupDef) []string {
	if g.nsSel == nil {
		return []string{g.namespace}
	}
	// Selecting namespaces by name is common: look them up.
	var names []string
	if v, ok := g.nsSpec.MatchLabels[corev1.LabelMetadataName]; ok {
		names = []string{v}
	} else {
		for _, e := range g.nsSpec.MatchExpressions {
			if e.Key == corev1.LabelMetadataName && e.Operator == metav1.LabelSelectorOpIn {
				names = e.Values
				break
			}
		}
	}
	if names != nil {
		var out []string
		for _, ns := range names {
			if _, ok := ix.podsByNs[ns]; ok && g.nsSel.Matches(ix.nsLabels(ns)) {
				out = append(out, ns)
			}
		}
		return out
	}
	key := selectorKey(g.nsSpec)
	if out, ok := ix.nsMatches[key]; ok {
		return out
	}
	out := []string{}
	for ns := range ix.podsByNs {
		if g.nsSel.Matches(ix.nsLabels(ns)) {
			out = append(out, ns)
		}
	}
	ix.nsMatches[key] = out
	return out
}

// memberEntry is one address (or address and port) a member gives a group.
type memberEntry struct {
	addr netip.Addr
	port int32
	key  nsName
	str  string // addr.String()
}

func compareEntries(a, b memberEntry) int {
	return cmp.Or(a.addr.Compare(b.addr), cmp.Compare(a.port, b.port), compareNsNames(a.key, b.key))
}

// appendEntries appends what member p gives the group.
func (g *groupDef) appendEntries(out []memberEntry, p *podInfo) []memberEntry {
	var port int32
	if g.namedPort != nil {
		n, ok := p.namedPort(g.namedPort.Name, g.namedPort.Protocol)
		if !ok {
			return out
		}
		port = n
	}
	for i, a := range p.ips {
		out = append(out, memberEntry{addr: a, port: port, key: p.key, str: p.ipStrs[i]})
	}
	return out
}

// spec renders the group with the given members, in any order.
func (g *groupDef) spec(members []*podInfo) v1alpha1.AddressGroupSpec {
	var entries []memberEntry
	for _, p := range members {
		entries = g.appendEntries(entries, p)
	}
	slices.SortFunc(entries, compareEntries)
	return g.specOf(entries)
}

// specOf renders the group from its members' entries, sorted.
func (g *groupDef) specOf(entries []memberEntry) v1alpha1.AddressGroupSpec {
	s := v1alpha1.AddressGroupSpec{
		Namespace:         g.namespace,
		NamespaceSelector: g.nsSpec.DeepCopy(),
		PodSelector:       g.podSpec.DeepCopy(),
	}
	if g.namedPort != nil {
		np := *g.namedPort
		s.NamedPort = &np
	}
	for i, e := range entries {
		if i > 0 && e.addr == entries[i-1].addr && e.port == entries[i-1].port {
			continue
		}
		if g.namedPort == nil {
			s.Addresses = append(s.Addresses, e.str)
		} else {
			s.Endpoints = append(s.Endpoints, v1alpha1.Endpoint{IP: e.str, Port: e.port})
		}
	}
	return s
}
