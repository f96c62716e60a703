package dropsapi

import (
	"net/netip"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
)

// PodIndex maps pod addresses to pod names. It is fed by a pod informer
// (it is a toolscache.ResourceEventHandler) and answers from memory:
// naming a drop never calls the API server, and an address no pod owns
// costs a map miss.
type PodIndex struct {
	mu         sync.RWMutex
	byIP       map[netip.Addr]podRef
	namespaces map[string]string // interned namespace names
}

type podRef struct {
	namespace, name string
	uid             types.UID
}

// NewPodIndex returns an empty index.
func NewPodIndex() *PodIndex {
	return &PodIndex{byIP: map[netip.Addr]podRef{}, namespaces: map[string]string{}}
}

// PodByIP implements Namer.
func (x *PodIndex) PodByIP(ip netip.Addr) (string, string, bool) {
	x.mu.RLock()
	r, ok := x.byIP[ip.Unmap()]
	x.mu.RUnlock()
	return r.namespace, r.name, ok
}

// Len is the number of addresses indexed.
func (x *PodIndex) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.byIP)
}

// named reports whether a pod's addresses name it: host-network pods share
// the node's address, and finished pods have given theirs back.
func named(p *corev1.Pod) bool {
	return !p.Spec.HostNetwork && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

func podIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	add := func(s string) {
		if ip, err := netip.ParseAddr(s); err == nil {
			out = append(out, ip.Unmap())
		}
	}
	for _, ip := range p.Status.PodIPs {
		add(ip.IP)
	}
	if len(out) == 0 && p.Status.PodIP != "" {
		add(p.Status.PodIP)
	}
	return out
}

func (x *PodIndex) set(p *corev1.Pod) {
	ns, ok := x.namespaces[p.Namespace]
	if !ok {
		ns = p.Namespace
		x.namespaces[ns] = ns
	}
	for _, ip := range podIPs(p) {
		x.byIP[ip] = podRef{namespace: ns, name: p.Name, uid: p.UID}
	}
}

// remove drops the addresses of p that p still owns: an address already
// given to a newer pod stays with it.
func (x *PodIndex) remove(p *corev1.Pod) {
	for _, ip := range podIPs(p) {
		if r, ok := x.byIP[ip]; ok && r.uid == p.UID {
			delete(x.byIP, ip)
		}
	}
}

// OnAdd implements toolscache.ResourceEventHandler.
func (x *PodIndex) OnAdd(obj any, _ bool) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if named(p) {
		x.set(p)
	}
}

// OnUpdate implements toolscache.ResourceEventHandler.
func (x *PodIndex) OnUpdate(oldObj, newObj any) {
	p, ok := newObj.(*corev1.Pod)
	if !ok {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if old, ok := oldObj.(*corev1.Pod); ok {
		x.remove(old)
	}
	if named(p) {
		x.set(p)
	}
}

// OnDelete implements toolscache.ResourceEventHandler.
func (x *PodIndex) OnDelete(obj any) {
	if t, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.remove(p)
}
