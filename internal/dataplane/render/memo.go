package render

import (
	"slices"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
)

// The Renderer remembers the inputs of what it rendered as copies and
// compares them by value with the fields rendering reads (and only those:
// a rule's policies, say, are not rendered).

func equalGroup(a, b *v1alpha1.AddressGroupSpec) bool {
	if (a.NamedPort == nil) != (b.NamedPort == nil) || (a.NamedPort != nil && *a.NamedPort != *b.NamedPort) {
		return false
	}
	return slices.Equal(a.Addresses, b.Addresses) && slices.Equal(a.Endpoints, b.Endpoints)
}

func copyGroup(g v1alpha1.AddressGroupSpec) v1alpha1.AddressGroupSpec {
	out := v1alpha1.AddressGroupSpec{Addresses: slices.Clone(g.Addresses), Endpoints: slices.Clone(g.Endpoints)}
	if g.NamedPort != nil {
		np := *g.NamedPort
		out.NamedPort = &np
	}
	return out
}

func equalRule(a, b *v1alpha1.Rule) bool {
	return a.ID == b.ID && a.Direction == b.Direction && slices.Equal(a.Ports, b.Ports) &&
		slices.EqualFunc(a.Peers, b.Peers, func(x, y v1alpha1.Peer) bool {
			if x.AddressGroup != y.AddressGroup || (x.IPBlock == nil) != (y.IPBlock == nil) {
				return false
			}
			return x.IPBlock == nil || (x.IPBlock.CIDR == y.IPBlock.CIDR && slices.Equal(x.IPBlock.Except, y.IPBlock.Except))
		})
}

func copyRule(r *v1alpha1.Rule) v1alpha1.Rule { return copyRulePorts(r, slices.Clone(r.Ports)) }

// copyRulePorts copies a rule, taking ports (a copy of its ports) as they are.
func copyRulePorts(r *v1alpha1.Rule, ports []v1alpha1.Port) v1alpha1.Rule {
	out := v1alpha1.Rule{ID: r.ID, Direction: r.Direction, Ports: ports, Peers: make([]v1alpha1.Peer, len(r.Peers))}
	for i, p := range r.Peers {
		out.Peers[i].AddressGroup = p.AddressGroup
		if p.IPBlock != nil {
			out.Peers[i].IPBlock = &v1alpha1.IPBlock{CIDR: p.IPBlock.CIDR, Except: slices.Clone(p.IPBlock.Except)}
		}
	}
	return out
}

func equalIsolation(a, b *v1alpha1.Isolation) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Mode == b.Mode && slices.Equal(a.Rules, b.Rules)
}

func equalPod(a, b *v1alpha1.LocalPod) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && slices.Equal(a.IPs, b.IPs) &&
		equalIsolation(a.Ingress, b.Ingress) && equalIsolation(a.Egress, b.Egress)
}

func copyIsolation(iso *v1alpha1.Isolation) *v1alpha1.Isolation {
	if iso == nil {
		return nil
	}
	return &v1alpha1.Isolation{Mode: iso.Mode, Rules: slices.Clone(iso.Rules)}
}

func copyPod(p v1alpha1.LocalPod) v1alpha1.LocalPod {
	return v1alpha1.LocalPod{Namespace: p.Namespace, Name: p.Name, IPs: slices.Clone(p.IPs),
		Ingress: copyIsolation(p.Ingress), Egress: copyIsolation(p.Egress)}
}
