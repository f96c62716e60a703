// Package realnodes runs nftguard on the local cluster of real nodes: each
// node runs kubelet, containerd with runc, and kube-proxy; pods are
// containers from this repository's images on the CNI plugins ptp and
// host-local; CoreDNS serves kube-dns; and nftguard is installed as a user
// installs it, from its images with `kubectl apply -k config/default`.
// Probes go through each pod's Service ClusterIP, as upstream's suite does.
// Every test runs once per kube-proxy mode (nftables, iptables).
package realnodes

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/test/conformance"
	"github.com/nftguard/nftguard/test/localcluster"
)

var (
	proxyModes = flag.String("realnodes.proxy-modes", "nftables,iptables", "kube-proxy modes to run the suite in, each on a cluster of its own")
	keep       = flag.Bool("realnodes.keep", false, "leave the clusters running after the suite (remove them with nftguard-dev down --state-dir ...)")

	clustersMu sync.Mutex
	clusters   = map[string]*clusterOnce{}
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
	// Unique per run: two runs on one machine must not share namespaces.
	name := fmt.Sprintf("rn%s%d", mode[:2], os.Getpid()%1000000)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := localcluster.Up(ctx, localcluster.Config{
		Name: name, StateDir: dir, BinDir: bin, Owned: true,
		Topology: conformance.Topology(),
		RealNodes: &localcluster.RealNodes{
			ProxyMode: mode, Images: localcluster.DefaultImages(bin), Install: filepath.Join(root, "config", "default"),
		},
		Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, "[%s] "+f+"\n", append([]any{name}, a...)...) },
	})
	if err != nil {
		return nil, err
	}
	if err := waitInstalled(ctx, c); err != nil {
		return nil, errors.Join(err, c.Down())
	}
	fmt.Fprintf(os.Stderr, "[%s] cluster up and nftguard running in %s\n", name, time.Since(start).Round(time.Second))
	return c, nil
}

// waitInstalled waits until the controller runs as its Deployment, the
// agent as its DaemonSet on every node, and every node's rule set is
// programmed by its agent.
func waitInstalled(ctx context.Context, c *localcluster.Cluster) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	why := ""
	for {
		var ok bool
		why, ok = notInstalled(ctx, c)
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nftguard not running after 3m: %s", why)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func notInstalled(ctx context.Context, c *localcluster.Cluster) (string, bool) {
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
}

// TestInstalledAsAUserWould: nftguard runs from the images the kustomize
// entry names, the agent on the host network, as installed by kubectl
// apply -k (the cluster waits for it to run and program every node).
func TestInstalledAsAUserWould(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		ctx := context.Background()
		pods, err := c.Clientset().CoreV1().Pods("nftguard-system").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		agents := 0
		for _, p := range pods.Items {
			for _, cs := range p.Status.ContainerStatuses {
				if !strings.HasPrefix(cs.Image, "ghcr.io/nftguard/") {
					t.Errorf("pod %s runs image %q, not the kustomize entry's", p.Name, cs.Image)
				}
			}
			if p.Labels["app.kubernetes.io/component"] == "agent" {
				agents++
				if !p.Spec.HostNetwork {
					t.Errorf("agent pod %s is not on the host network", p.Name)
				}
			}
		}
		if agents != len(c.Nodes()) {
			t.Errorf("%d agent pods for %d nodes", agents, len(c.Nodes()))
		}
	})
}

// TestConformanceThroughServices runs the upstream shapes probing each
// pod through its Service ClusterIP, so that kube-proxy's DNAT sits
// between every probe and nftguard's hooks.
func TestConformanceThroughServices(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		s := &conformance.Suite{Cluster: c, Service: true, ConvergeTimeout: 2 * time.Minute}
		s.Run(t, conformance.Cases())
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

// lastLog is the end of a crashed container's previous run's log.
func lastLog(ctx context.Context, c *localcluster.Cluster, ns, pod string) string {
	b, err := c.Clientset().CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Previous: true, TailLines: ptr.To(int64(3))}).DoRaw(ctx)
	if err != nil {
		return err.Error()
	}
	return strings.TrimSpace(string(b))
}

// kubectlExec runs the test server's own client in a pod (the image has
// no shell) with kubectl exec, as a user would.
func kubectlExec(ctx context.Context, c *localcluster.Cluster, ns, pod string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	argv := append([]string{"--kubeconfig", c.Kubeconfig(), "exec", "-n", ns, pod, "--", "/testserver"}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(localcluster.RepoRoot(), "bin", "kubectl"), argv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return strings.TrimSpace(stdout.String()), fmt.Errorf("kubectl exec %s/%s -- %s: %w: %s", ns, pod, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// dnsDefaultDeny isolates the egress of namespace ns, keeping DNS to
// kube-dns when withDNS.
func dnsDefaultDeny(name, ns string, withDNS bool) *v1alpha1.DefaultDeny {
	dd := &v1alpha1.DefaultDeny{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.DefaultDenySpec{
			NamespaceSelector: v1alpha1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}},
			PolicyTypes:       []v1alpha1.PolicyType{v1alpha1.PolicyTypeEgress},
			Mode:              v1alpha1.ModeEnforce,
		},
	}
	if withDNS {
		dd.Spec.AllowedEgress = []v1alpha1.EgressRule{{
			To: []v1alpha1.NetworkPolicyPeer{{
				NamespaceSelector: &v1alpha1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "kube-system"}},
				PodSelector:       &v1alpha1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "kube-dns"}},
			}},
			Ports: []v1alpha1.NetworkPolicyPort{
				{Protocol: ptr.To(v1alpha1.ProtocolUDP), Port: ptr.To(intstr.FromInt32(53))},
				{Protocol: ptr.To(v1alpha1.ProtocolTCP), Port: ptr.To(intstr.FromInt32(53))},
			},
		}}
	}
	return dd
}

// TestClusterDNS: through kubectl exec, a pod resolves a Service name with
// CoreDNS and reaches it through its ClusterIP. An egress-isolated pod
// whose DefaultDeny allows DNS still resolves (and is denied the
// connection); one whose DefaultDeny does not, cannot resolve.
func TestClusterDNS(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		ctx := context.Background()
		s := &conformance.Suite{Cluster: c, Service: true, ConvergeTimeout: 2 * time.Minute}
		s.ResetPolicies(t)
		yb, _ := c.Pod("y/b")
		if out, err := kubectlExec(ctx, c, "x", "a", "connect", "b.y:80"); err != nil || out != "y/b" {
			t.Fatalf("x/a connecting to b.y:80 answered %q, %v; want y/b", out, err)
		}
		if out, err := kubectlExec(ctx, c, "z", "a", "resolve", "b.y.svc.cluster.local"); err != nil || out != yb.ServiceIP.String() {
			t.Fatalf("z/a resolving b.y.svc.cluster.local: %q, %v; want %s", out, err, yb.ServiceIP)
		}
		s.Create(t, dnsDefaultDeny("x-egress-with-dns", "x", true), dnsDefaultDeny("z-egress-no-dns", "z", false))
		s.WaitConverged(t)
		if out, err := kubectlExec(ctx, c, "x", "a", "resolve", "b.y.svc.cluster.local"); err != nil || out != yb.ServiceIP.String() {
			t.Errorf("x/a (egress isolated, DNS allowed) resolving b.y.svc.cluster.local: %q, %v; want %s", out, err, yb.ServiceIP)
		}
		if out, err := kubectlExec(ctx, c, "x", "a", "connect", "b.y:80"); err == nil {
			t.Errorf("x/a (egress isolated) reached b.y:80: %q", out)
		}
		if out, err := kubectlExec(ctx, c, "z", "a", "resolve", "--timeout", "3s", "b.y.svc.cluster.local"); err == nil {
			t.Errorf("z/a (egress isolated, no DNS allowance) resolved b.y.svc.cluster.local: %q", out)
		}
		s.ResetPolicies(t)
	})
}

// TestReadinessProbesOfIsolatedPods: kubelet's probes come from the node,
// which no policy isolates a pod from: pods whose ingress is denied to
// everyone stay Ready through many probe periods (1 s, 3 failures).
func TestReadinessProbesOfIsolatedPods(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		ctx := context.Background()
		s := &conformance.Suite{Cluster: c, Service: true, ConvergeTimeout: 2 * time.Minute}
		s.ResetPolicies(t)
		s.Create(t, conformance.Policy("y", "deny-ingress", nil, conformance.Ingress))
		s.WaitConverged(t)
		since := time.Now()
		// The policy holds: nothing else reaches y.
		s.Expect(t, conformance.NewReachability(true).Set("*/*", "y/*", false), conformance.TCP80)
		for time.Since(since) < 8*time.Second {
			time.Sleep(time.Second)
		}
		pods, err := c.Clientset().CoreV1().Pods("y").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods.Items {
			cond := podCondition(&p, corev1.PodReady)
			if cond == nil || cond.Status != corev1.ConditionTrue || cond.LastTransitionTime.Time.After(since) {
				t.Errorf("pod y/%s: Ready %+v after its ingress was denied at %s", p.Name, cond, since.Format(time.RFC3339))
			}
			for _, cs := range p.Status.ContainerStatuses {
				if cs.RestartCount > 0 {
					t.Errorf("pod y/%s: container %s restarted %d times", p.Name, cs.Name, cs.RestartCount)
				}
			}
		}
		s.ResetPolicies(t)
	})
}

func podCondition(p *corev1.Pod, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == t {
			return &p.Status.Conditions[i]
		}
	}
	return nil
}
