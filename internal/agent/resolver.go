package agent

import (
	"net/netip"
	"sync"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/audit"
)

// Resolver names the pods and policies of logged packets for the audit log,
// from the rule set being enforced: its local pods, their policies and
// their addresses. It makes no API call.
type Resolver struct {
	mu    sync.RWMutex
	local map[string]localEntry // pod key -> pod
	byIP  map[netip.Addr]podName
}

type podName struct{ namespace, name string }

type localEntry struct {
	podName
	ingress, egress []string
}

// SetRuleSet replaces the local pods with those of the rule set now enforced.
func (r *Resolver) SetRuleSet(spec *v1alpha1.NodeRuleSetSpec) {
	local := make(map[string]localEntry, len(spec.Pods))
	byIP := map[netip.Addr]podName{}
	for _, p := range spec.Pods {
		e := localEntry{podName: podName{p.Namespace, p.Name}}
		if p.Ingress != nil {
			e.ingress = p.Ingress.Policies
		}
		if p.Egress != nil {
			e.egress = p.Egress.Policies
		}
		local[audit.PodKey(p.Namespace, p.Name)] = e
		for _, s := range p.IPs {
			if ip, err := netip.ParseAddr(s); err == nil {
				byIP[ip.Unmap()] = e.podName
			}
		}
	}
	r.mu.Lock()
	r.local, r.byIP = local, byIP
	r.mu.Unlock()
}

// LocalPod implements audit.Resolver.
func (r *Resolver) LocalPod(podKey string, dir audit.Direction) (string, string, []string, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.local[podKey]
	if !ok {
		return "", "", nil, false
	}
	if dir == audit.Egress {
		return e.namespace, e.name, e.egress, true
	}
	return e.namespace, e.name, e.ingress, true
}

// Peer implements audit.Resolver. It names only the node's own pods, from
// the rule set: remote peers are named by the drops API, which holds the
// one pod index of the cluster, so the agent reads no pod of other nodes
// and an unknown (spoofed) address costs it a map miss.
func (r *Resolver) Peer(ip netip.Addr) (string, string, bool) {
	r.mu.RLock()
	p, ok := r.byIP[ip.Unmap()]
	r.mu.RUnlock()
	return p.namespace, p.name, ok
}
