package agent

import (
	"context"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/audit"
)

// Resolver names the pods and policies of logged packets for the audit log.
// Local pods and their policies come from the rule set being enforced; peers
// are looked up in the API by IP (pods support the status.podIP field
// selector) and cached, including negative answers, for a short while.
type Resolver struct {
	Reader client.Reader
	TTL    time.Duration

	mu    sync.RWMutex
	local map[string]localEntry // pod key -> pod
	byIP  map[netip.Addr]podName

	cacheMu sync.Mutex
	cache   map[netip.Addr]cachedPeer
}

type podName struct{ namespace, name string }

type localEntry struct {
	podName
	ingress, egress []string
}

type cachedPeer struct {
	podName
	ok      bool
	expires time.Time
}

const maxCachedPeers = 4096

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
				byIP[ip] = e.podName
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

// Peer implements audit.Resolver.
func (r *Resolver) Peer(ip netip.Addr) (string, string, bool) {
	r.mu.RLock()
	p, ok := r.byIP[ip]
	r.mu.RUnlock()
	if ok {
		return p.namespace, p.name, true
	}
	now := time.Now()
	r.cacheMu.Lock()
	c, hit := r.cache[ip]
	r.cacheMu.Unlock()
	if hit && now.Before(c.expires) {
		return c.namespace, c.name, c.ok
	}
	c = cachedPeer{expires: now.Add(r.ttl())}
	if r.Reader != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var pods corev1.PodList
		if err := r.Reader.List(ctx, &pods, client.MatchingFields{"status.podIP": ip.String()}); err == nil {
			for _, p := range pods.Items {
				if !p.Spec.HostNetwork && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
					c.podName, c.ok = podName{p.Namespace, p.Name}, true
					break
				}
			}
		}
	}
	r.cacheMu.Lock()
	if r.cache == nil || len(r.cache) >= maxCachedPeers {
		r.cache = map[netip.Addr]cachedPeer{}
	}
	r.cache[ip] = c
	r.cacheMu.Unlock()
	return c.namespace, c.name, c.ok
}

func (r *Resolver) ttl() time.Duration {
	if r.TTL > 0 {
		return r.TTL
	}
	return 30 * time.Second
}
