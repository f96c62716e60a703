package localcluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/internal/dataplane/nftnl"
)

// RebootNode stops a real node as a power cut would and boots it again
// with its disks. Every process of the node dies at once: its init, and
// with its PID namespace containerd, kubelet, kube-proxy, the shims and
// every container, nftguard's agent among them. What the kernel held for
// it goes: nftguard's table and every conntrack entry of its network
// namespace, and the pods' network namespaces with its mount namespace.
// Its /etc, /opt and /var/lib stay (the CNI configuration as the agent
// left it, the agent's attachment registry, containerd's images), and its
// /run starts empty. Its init then starts containerd, kubelet and
// kube-proxy as at boot, and kubelet starts the node's pods again.
// RebootNode returns once every pod of the topology on the node runs
// again with a new address and is Ready, and the cluster's record of the
// pods holds their new addresses.
func (c *Cluster) RebootNode(ctx context.Context, name string) error {
	if c.cfg.RealNodes == nil {
		return fmt.Errorf("node %s: only a real node reboots", name)
	}
	n, ok := c.Node(name)
	if !ok {
		return fmt.Errorf("no node %s", name)
	}
	old := map[string]bool{}
	for _, p := range c.Pods() {
		if p.Node == name {
			old[p.Namespace+"/"+p.Name] = true
		}
	}
	oldIPs := map[string]string{}
	for key := range old {
		ns, pod, _ := strings.Cut(key, "/")
		got, err := c.clientset.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
		if err != nil {
			return err
		}
		oldIPs[key] = got.Status.PodIP
	}
	if _, err := c.Kill(roleNode, name, syscall.SIGKILL); err != nil {
		return fmt.Errorf("node %s: %w", name, err)
	}
	if err := forgetKernelState(n.NetNS); err != nil {
		return fmt.Errorf("node %s: %w", name, err)
	}
	if err := c.startRealNode(n); err != nil {
		return fmt.Errorf("node %s booting again: %w", name, err)
	}
	// Kubelet reports the restarted pods with their new addresses.
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		var pending []string
		for key := range old {
			ns, pod, _ := strings.Cut(key, "/")
			got, err := c.clientset.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
			switch {
			case err != nil:
				pending = append(pending, key+": "+err.Error())
			case got.Status.PodIP == "" || got.Status.PodIP == oldIPs[key] || !podReady(got):
				pending = append(pending, fmt.Sprintf("%s: %s, address %q (was %q)", key, got.Status.Phase, got.Status.PodIP, oldIPs[key]))
			}
		}
		if len(pending) == 0 {
			break
		}
		slices.Sort(pending)
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s: pods not running again 3m after the reboot:\n  %s", name, strings.Join(pending, "\n  "))
		case <-time.After(250 * time.Millisecond):
		}
	}
	return c.waitRealPods(ctx)
}

// forgetKernelState drops what a reboot takes from a node's network
// namespace that nftguard depends on: its table inet nftguard and every
// conntrack entry. (kube-proxy's rules stay; it rewrites them at start.)
func forgetKernelState(path string) error {
	h, err := netns.GetFromPath(netnsPath(path))
	if err != nil {
		return err
	}
	defer h.Close()
	p, err := nftnl.NewProgrammerInNetNS(int(h))
	if err != nil {
		return err
	}
	defer p.Close()
	if err := p.Delete(); err != nil {
		return fmt.Errorf("deleting table inet nftguard: %w", err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return err
	}
	defer nl.Close()
	if err := nl.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		return fmt.Errorf("flushing conntrack: %w", err)
	}
	return nil
}
