package localcluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sys/unix"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// AddPod adds a pod to the running cluster as a kubelet would start one: its
// network namespace, veth and routes on its node (empty Node: the node with
// the fewest pods), its server, then its Pod object and Running status. The
// pod gets the lowest free address of its node, so a deleted pod's address
// is reused, as a CNI plugin would. On real nodes the Pod and its Service
// are created as a user creates them and AddPod returns once kubelet reports
// the pod Ready; kube-proxy serves the new Service a moment later, as in any
// cluster.
func (c *Cluster) AddPod(ctx context.Context, spec PodSpec) (Pod, error) {
	return c.StartPod(ctx, spec, StartOptions{})
}

// StartOptions are the hooks of StartPod.
type StartOptions struct {
	// OnAddresses runs once the pod's interface has its addresses and
	// routes, before the CNI plugin's ADD (so before nftguard has heard of
	// its addresses): a process started here sends from the first moment
	// a pod could. Only on the namespace-only cluster.
	OnAddresses func(Pod) error
}

// StartPod is AddPod in the order a kubelet and a container runtime go
// through: the Pod object (so the controller lists it by UID), its
// network namespace and addresses (the pod network plugin), the OnAddresses
// hook, the CNI ADD of the nftguard plugin (when the cluster runs it), its
// server, and its Running status with its addresses.
func (c *Cluster) StartPod(ctx context.Context, spec PodSpec, opts StartOptions) (Pod, error) {
	if c.clientset == nil {
		return Pod{}, errors.New("the cluster has no API server")
	}
	c.podMu.Lock()
	defer c.podMu.Unlock()
	st := c.state.snapshot()
	if _, ok := c.Pod(spec.Key()); ok {
		return Pod{}, fmt.Errorf("pod %s exists", spec.Key())
	}
	if spec.Node == "" {
		count := map[string]int{}
		for _, p := range st.Pods {
			count[p.Node]++
		}
		for _, n := range st.Nodes {
			if spec.Node == "" || count[n.Name] < count[spec.Node] {
				spec.Node = n.Name
			}
		}
	}
	topo := &Topology{Nodes: st.Topology.Nodes, Namespaces: st.Topology.Namespaces, Pods: []PodSpec{spec}}
	topo = topo.DeepCopy()
	if err := topo.Normalize(); err != nil {
		return Pod{}, err
	}
	spec = topo.Pods[0]
	if st.RealNodes {
		if opts.OnAddresses != nil {
			return Pod{}, errors.New("OnAddresses needs the namespace-only cluster")
		}
		return c.addRealPod(ctx, spec, topo.Namespaces)
	}
	var node Node
	used := map[int]bool{}
	for _, n := range st.Nodes {
		if n.Name == spec.Node {
			node = n
		}
	}
	for _, p := range st.Pods {
		if p.Node == spec.Node {
			used[int(p.IPv4.As4()[3])-2] = true
		}
	}
	k := 0
	for used[k] {
		k++
	}
	if k >= maxPodsPerNode {
		return Pod{}, fmt.Errorf("node %s has no free pod address", spec.Node)
	}
	_, planned := plan(c.cfg.Name, &Topology{Nodes: st.Topology.Nodes, Pods: []PodSpec{spec}})
	pod := planned[0]
	pod.IPv4, pod.IPv6 = podIPv4(node.Index, k), podIPv6(node.Index, k)

	if err := c.state.update(func(s *State) {
		s.Pods = append(s.Pods, pod)
		s.Topology.Pods = append(s.Topology.Pods, spec)
		s.Topology.Namespaces = topo.Namespaces
	}); err != nil {
		return Pod{}, err
	}
	c.cfg.Topology = c.state.snapshot().Topology
	if err := c.registerNamespaces(ctx); err != nil {
		return pod, err
	}
	if err := c.createPods(ctx, []Pod{pod}); err != nil {
		return pod, err
	}
	pod, _ = c.Pod(pod.Key())
	if err := c.buildPod(node, pod); err != nil {
		return pod, err
	}
	if opts.OnAddresses != nil {
		if err := opts.OnAddresses(pod); err != nil {
			return pod, err
		}
	}
	if err := c.cniAdd(ctx, pod); err != nil {
		return pod, err
	}
	if err := c.startPodServers([]Pod{pod}); err != nil {
		return pod, err
	}
	return pod, c.markPodsRunning(ctx, st.Nodes, []Pod{pod})
}

// DeletePod removes a pod as a kubelet would once its containers stopped:
// its server, its veth (and so its routes), its network namespace, and its
// Pod object (deleted with no grace period: nothing else would confirm it).
func (c *Cluster) DeletePod(ctx context.Context, key string) error {
	c.podMu.Lock()
	defer c.podMu.Unlock()
	pod, ok := c.Pod(key)
	if !ok {
		return fmt.Errorf("no pod %q", key)
	}
	if c.state.snapshot().RealNodes {
		return c.deleteRealPod(ctx, pod)
	}
	var errs []error
	// The runtime's DEL runs while the sandbox's network still exists.
	if err := c.cniDel(ctx, pod); err != nil {
		errs = append(errs, err)
	}
	err := c.clientset.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))})
	if err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, err)
	}
	st := c.state.snapshot()
	var keep []ProcessRef
	for _, r := range st.Processes {
		if r.Role == rolePodServer && r.Name == key {
			c.mu.Lock()
			p := c.procs[r.PID]
			c.mu.Unlock()
			errs = append(errs, stopProcess(r, p, time.Second))
			continue
		}
		keep = append(keep, r)
	}
	for _, n := range st.Nodes {
		if n.Name != pod.Node {
			continue
		}
		h, fd, err := nsHandle(n.NetNS)
		if err != nil {
			errs = append(errs, err)
			break
		}
		if l, err := h.LinkByName(pod.HostVeth); err == nil {
			errs = append(errs, h.LinkDel(l))
		}
		h.Close()
		unix.Close(fd)
	}
	errs = append(errs, deleteNetNS(pod.NetNS))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("deleting pod %s: %w", key, err)
	}
	return c.state.update(func(s *State) {
		s.Processes = keep
		s.NetNS = slices.DeleteFunc(s.NetNS, func(n string) bool { return n == pod.NetNS })
		s.Pods = slices.DeleteFunc(s.Pods, func(p Pod) bool { return p.Key() == key })
		s.Topology.Pods = slices.DeleteFunc(s.Topology.Pods, func(p PodSpec) bool { return p.Key() == key })
	})
}
