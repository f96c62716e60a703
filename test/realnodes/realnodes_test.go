// Package realnodes runs nftguard on the local cluster of real nodes: each
// node runs kubelet, containerd with runc, and kube-proxy; pods are
// containers from this repository's images on the CNI plugins ptp and
// host-local; CoreDNS serves kube-dns; and nftguard is installed as a user
// installs it, from its images with `kubectl apply -k config/default`.
// Probes go through each pod's Service ClusterIP, as upstream's suite does.
// Every test runs once per kube-proxy mode (nftables, iptables).
package realnodes

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/test/localcluster"
)

var (
	proxyModes = flag.String("realnodes.proxy-modes", "nftables,iptables", "kube-proxy modes to run the suite in, each on a cluster of its own")
	keep       = flag.Bool("realnodes.keep", false, "leave the clusters running after the suite (remove them with nftguard-dev down --state-dir ...)")

	clustersMu sync.Mutex
	clusters   = map[string]*clusterOnce{}
)

var (
	namespaces = []string{"x", "y", "z"}
	podNames   = []string{"a", "b", "c"}
)

type clusterOnce struct {
	once sync.Once
	c    *localcluster.Cluster
	err  error
}

func TestMain(m *testing.M) {
	localcluster.MaybeRunChild()
	flag.Parse()
	code := m.Run()
	clustersMu.Lock()
	defer clustersMu.Unlock()
	for mode, co := range clusters {
		if co.c == nil {
			continue
		}
		if *keep {
			fmt.Fprintf(os.Stderr, "kube-proxy %s cluster left running: KUBECONFIG=%s\n", mode, co.c.Kubeconfig())
			continue
		}
		if err := co.c.Down(); err != nil {
			fmt.Fprintf(os.Stderr, "removing the %s cluster: %v\n", mode, err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// forEachMode runs fn as a subtest per kube-proxy mode, on that mode's
// cluster (started by the first test that needs it).
func forEachMode(t *testing.T, fn func(t *testing.T, c *localcluster.Cluster)) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the real-node cluster needs root (network, mount and PID namespaces)")
	}
	for _, mode := range strings.Split(*proxyModes, ",") {
		t.Run("kube-proxy="+mode, func(t *testing.T) {
			c := cluster(t, mode)
			fn(t, c)
		})
	}
}

func cluster(t *testing.T, mode string) *localcluster.Cluster {
	t.Helper()
	clustersMu.Lock()
	co := clusters[mode]
	if co == nil {
		co = &clusterOnce{}
		clusters[mode] = co
	}
	clustersMu.Unlock()
	co.once.Do(func() { co.c, co.err = startCluster(mode) })
	if co.err != nil {
		t.Fatalf("starting the real-node cluster (kube-proxy %s): %v", mode, co.err)
	}
	return co.c
}

func startCluster(mode string) (*localcluster.Cluster, error) {
	root := localcluster.RepoRoot()
	bin := filepath.Join(root, "bin")
	dir, err := os.MkdirTemp("", "nftguard-realnodes-")
	if err != nil {
		return nil, err
	}
	name := "rn" + strings.ReplaceAll(mode, "tables", "")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := localcluster.Up(ctx, localcluster.Config{
		Name: name, StateDir: dir, BinDir: bin, Owned: true,
		Topology: localcluster.ConformanceTopology(namespaces, podNames),
		RealNodes: &localcluster.RealNodes{
			ProxyMode: mode, Images: localcluster.DefaultImages(bin), Install: filepath.Join(root, "config", "default"),
		},
		Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, "[%s] "+f+"\n", append([]any{name}, a...)...) },
	})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "[%s] cluster up in %s\n", name, time.Since(start).Round(time.Second))
	return c, nil
}

// TestInstalledAsAUserWould: the controller runs as its Deployment, the
// agent as its DaemonSet on every node, both from the images, and every
// node's rule set is programmed by its agent.
func TestInstalledAsAUserWould(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		ctx := context.Background()
		waitFor(t, 3*time.Minute, "nftguard's controller and agents to run", func() (string, bool) {
			d, err := c.Clientset().AppsV1().Deployments("nftguard-system").Get(ctx, "nftguard-controller", metav1.GetOptions{})
			if err != nil {
				return err.Error(), false
			}
			if d.Status.AvailableReplicas < 1 {
				return fmt.Sprintf("controller Deployment: %d available; %s", d.Status.AvailableReplicas, podProblems(ctx, c)), false
			}
			ds, err := c.Clientset().AppsV1().DaemonSets("nftguard-system").Get(ctx, "nftguard-agent", metav1.GetOptions{})
			if err != nil {
				return err.Error(), false
			}
			if n := int32(len(c.Nodes())); ds.Status.NumberReady != n || ds.Status.UpdatedNumberScheduled != n {
				return fmt.Sprintf("agent DaemonSet: %d of %d ready; %s", ds.Status.NumberReady, n, podProblems(ctx, c)), false
			}
			return "", true
		})
		pods, err := c.Clientset().CoreV1().Pods("nftguard-system").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods.Items {
			for _, cs := range p.Status.ContainerStatuses {
				if !strings.HasPrefix(cs.Image, "ghcr.io/nftguard/") {
					t.Errorf("pod %s runs image %q, not the kustomize entry's", p.Name, cs.Image)
				}
			}
			if p.Labels["app.kubernetes.io/component"] == "agent" && !p.Spec.HostNetwork {
				t.Errorf("agent pod %s is not on the host network", p.Name)
			}
		}
		waitFor(t, 2*time.Minute, "every NodeRuleSet to be programmed", func() (string, bool) {
			var list v1alpha1.NodeRuleSetList
			if err := c.Client().List(ctx, &list); err != nil {
				return err.Error(), false
			}
			if len(list.Items) != len(c.Nodes()) {
				return fmt.Sprintf("%d NodeRuleSets for %d nodes", len(list.Items), len(c.Nodes())), false
			}
			for _, rs := range list.Items {
				cond := meta.FindStatusCondition(rs.Status.Conditions, v1alpha1.ConditionProgrammed)
				if cond == nil || cond.Status != metav1.ConditionTrue || rs.Status.ObservedGeneration != rs.Generation {
					return fmt.Sprintf("NodeRuleSet %s: %+v", rs.Name, cond), false
				}
			}
			return "", true
		})
	})
}

// podProblems describes nftguard's pods that are not Ready.
func podProblems(ctx context.Context, c *localcluster.Cluster) string {
	pods, err := c.Clientset().CoreV1().Pods("nftguard-system").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, p := range pods.Items {
		for _, cs := range p.Status.ContainerStatuses {
			switch {
			case cs.State.Waiting != nil:
				out = append(out, fmt.Sprintf("%s: %s %s", p.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message))
				if cs.RestartCount > 0 {
					out = append(out, "its last run's log: "+lastLog(ctx, c, p.Namespace, p.Name))
				}
			case cs.State.Terminated != nil:
				out = append(out, fmt.Sprintf("%s: terminated %s", p.Name, cs.State.Terminated.Reason))
			case !cs.Ready:
				out = append(out, fmt.Sprintf("%s: running, not ready (restarts %d)", p.Name, cs.RestartCount))
			}
		}
		if len(p.Status.ContainerStatuses) == 0 {
			out = append(out, fmt.Sprintf("%s: %s", p.Name, p.Status.Phase))
		}
	}
	return strings.Join(out, "; ")
}

// waitFor polls cond every 250 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() (string, bool)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		why, ok := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting %s for %s: %s", d, what, why)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// lastLog is the end of a crashed container's previous run's log.
func lastLog(ctx context.Context, c *localcluster.Cluster, ns, pod string) string {
	b, err := c.Clientset().CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Previous: true, TailLines: ptr.To(int64(3))}).DoRaw(ctx)
	if err != nil {
		return err.Error()
	}
	return strings.TrimSpace(string(b))
}
