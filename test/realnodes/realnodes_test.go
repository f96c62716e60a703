// Package realnodes runs nftguard on the local cluster of real nodes: each
// node runs kubelet, containerd with runc, and kube-proxy; pods are
// containers from this repository's images on the CNI plugins ptp and
// host-local; CoreDNS serves kube-dns; and nftguard is installed as a user
// installs it, from its images with `kubectl apply -k config/default` (or
// config/identity-layout with -realnodes.identity-layout).
// Probes go through each pod's Service ClusterIP, as upstream's suite does.
// Every test runs once per kube-proxy mode (nftables, iptables).
package realnodes

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/render"
	"github.com/nftguard/nftguard/test/conformance"
	"github.com/nftguard/nftguard/test/localcluster"
)

// ownNamespace is where config/default (and config/identity-layout) installs nftguard.
const ownNamespace = "nftguard-system"

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

// stateRoot holds each run's cluster state directories; clusters of runs
// that died (a timeout, a kill) are swept from it before this run starts.
var stateRoot = filepath.Join(os.TempDir(), "nftguard-realnodes")

func TestMain(m *testing.M) {
	localcluster.MaybeRunChild()
	flag.Parse()
	if os.Geteuid() == 0 {
		if err := localcluster.SweepStale(stateRoot); err != nil {
			fmt.Fprintf(os.Stderr, "removing the clusters of earlier runs that died: %v\n", err)
		}
	}
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
	if err := os.MkdirAll(stateRoot, 0o755); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(stateRoot, "run-")
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
			ProxyMode: mode, Images: localcluster.DefaultImages(bin), Install: kustomization(*identityLayout),
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

// TestConformanceThroughServices runs the upstream shapes, and the policy,
// pod-label and namespace-label changes, probing each pod through its
// Service ClusterIP, so that kube-proxy's DNAT sits between every probe and
// nftguard's hooks.
func TestConformanceThroughServices(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		s := &conformance.Suite{Cluster: c, Service: true, ConvergeTimeout: 2 * time.Minute, ExemptNamespaces: []string{ownNamespace}}
		s.Run(t, conformance.Cases())
		t.Run("changes", func(t *testing.T) {
			s.ResetPolicies(t)
			s.RunChanges(t)
			s.ResetPolicies(t)
		})
	})
}

// TestRevocationThroughServices: long-lived TCP connections and a UDP flow
// through ClusterIP Services (kube-proxy DNAT: the conntrack entry's
// original tuple holds the ClusterIP, its reply the pod) stop within a
// second of a policy that denies them, while the allowed ones go on.
func TestRevocationThroughServices(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		s := &conformance.Suite{Cluster: c, ConvergeTimeout: 2 * time.Minute, ExemptNamespaces: []string{ownNamespace}}
		s.RunRevocation(t, true)
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

// kubectl runs bin/kubectl with the cluster's admin kubeconfig, as a user
// would, and returns its standard output; the error carries its standard
// error.
func kubectl(ctx context.Context, c *localcluster.Cluster, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(localcluster.RepoRoot(), "bin", "kubectl"), append([]string{"--kubeconfig", c.Kubeconfig()}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// kubectlExec runs the test server's own client in a pod (the image has
// no shell) with kubectl exec.
func kubectlExec(ctx context.Context, c *localcluster.Cluster, ns, pod string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := kubectl(ctx, c, append([]string{"exec", "-n", ns, pod, "--", "/testserver"}, args...)...)
	return strings.TrimSpace(out), err
}

// policySuite is the conformance checks through Services on c, from no
// policy.
func policySuite(t *testing.T, c *localcluster.Cluster) *conformance.Suite {
	t.Helper()
	s := &conformance.Suite{Cluster: c, Service: true, ConvergeTimeout: 2 * time.Minute, ExemptNamespaces: []string{ownNamespace}}
	s.ResetPolicies(t)
	return s
}

// agentPod is the agent pod of node.
func agentPod(ctx context.Context, t *testing.T, c *localcluster.Cluster, node string) corev1.Pod {
	t.Helper()
	pods, err := c.Clientset().CoreV1().Pods("nftguard-system").List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/component=agent", FieldSelector: "spec.nodeName=" + node,
	})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("the agent pod of node %s: %v, %v", node, pods, err)
	}
	return pods.Items[0]
}

// dnsDefaultDeny isolates the egress of namespace ns, keeping DNS to
// kube-dns when withDNS.
func dnsDefaultDeny(name, ns string, withDNS bool) *v1alpha1.DefaultDeny {
	dd := &v1alpha1.DefaultDeny{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.DefaultDenySpec{
			NamespaceSelector: v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"kubernetes.io/metadata.name": v1alpha1.LabelValue(ns)}},
			PolicyTypes:       []v1alpha1.PolicyType{v1alpha1.PolicyTypeEgress},
			Mode:              v1alpha1.ModeEnforce,
		},
	}
	if withDNS {
		dd.Spec.AllowedEgress = []v1alpha1.EgressRule{{
			To: []v1alpha1.NetworkPolicyPeer{{
				NamespaceSelector: &v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"kubernetes.io/metadata.name": "kube-system"}},
				PodSelector:       &v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"k8s-app": "kube-dns"}},
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
		s := policySuite(t, c)
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
		s := policySuite(t, c)
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

// TestDropLogThroughKubectlLogs: a denied connection through a Service
// shows up, named and attributed, in `kubectl logs` of the destination
// node's agent pod (its drop-log container follows the drop log file), and
// in the drops API through the API server.
func TestDropLogThroughKubectlLogs(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		ctx := context.Background()
		s := policySuite(t, c)
		s.Create(t, conformance.Policy("y", "deny-ingress", nil, conformance.Ingress))
		s.WaitConverged(t)
		dst, _ := c.Pod("y/b")
		r := c.ProbeWith(ctx, localcluster.ProbeRequest{From: "x/a", To: "y/b", Port: intstr.FromInt32(80), Protocol: corev1.ProtocolTCP, Service: true})
		if !r.Blocked() {
			t.Fatalf("x/a -> y/b through its Service: %s, want blocked", r)
		}
		agent := agentPod(ctx, t, c, dst.Node).Name
		var last string
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, err := kubectl(ctx, c, "logs", "-n", "nftguard-system", agent, "-c", "drop-log")
			if err != nil {
				t.Fatal(err)
			}
			last = out
			if found := dropLine(last, "x", "a", "y", "b", "NetworkPolicy/y/deny-ingress"); found != "" {
				t.Logf("kubectl logs %s -c drop-log: %s", agent, found)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no drop line for x/a -> y/b in kubectl logs %s -c drop-log after 30s:\n%s", agent, last)
			}
			time.Sleep(500 * time.Millisecond)
		}

		// The agent pushed the line to the drops API (with its pod-bound
		// token, to the controller pods it found in the Service's
		// EndpointSlices), which the API server's aggregator reaches:
		// kubectl reads it there, named and attributed.
		deadline = time.Now().Add(2 * time.Minute) // the agents mount the CA once the controller publishes it
		for {
			out, err := kubectl(ctx, c, "get", "--raw", "/apis/drops.nftguard.io/v1alpha1/namespaces/y/drops")
			if err == nil && dropFlow(out, "x", "a", "y", "b", "NetworkPolicy/y/deny-ingress", dst.Node) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no flow x/a -> y/b in the drops API after 2m: %v\n%s", err, out)
			}
			time.Sleep(time.Second)
		}
		s.ResetPolicies(t)
	})
}

// listedFlow is a flow of a DropList (docs/drops-api.md).
type listedFlow struct {
	Node     string   `json:"node"`
	Action   string   `json:"action"`
	Policies []string `json:"policies"`
	Src, Dst struct {
		Namespace string `json:"namespace"`
		Pod       string `json:"pod"`
	}
}

// dropFlow reports whether a DropList holds a flow from srcNS/srcPod to
// dstNS/dstPod on node naming policy.
func dropFlow(list, srcNS, srcPod, dstNS, dstPod, policy, node string) bool {
	var l struct {
		Items []listedFlow `json:"items"`
	}
	if json.Unmarshal([]byte(list), &l) != nil {
		return false
	}
	return slices.ContainsFunc(l.Items, func(f listedFlow) bool {
		return f.Action == "drop" && f.Node == node && f.Src.Namespace == srcNS && f.Src.Pod == srcPod &&
			f.Dst.Namespace == dstNS && f.Dst.Pod == dstPod && slices.Contains(f.Policies, policy)
	})
}

// dropLine finds a drop line (docs/audit-log.md) from srcNS/srcPod to
// dstNS/dstPod naming policy.
func dropLine(logs, srcNS, srcPod, dstNS, dstPod, policy string) string {
	for _, line := range strings.Split(logs, "\n") {
		var l struct {
			Action   string   `json:"action"`
			Policies []string `json:"policies"`
			Src, Dst struct {
				Namespace string `json:"namespace"`
				Pod       string `json:"pod"`
			}
		}
		if json.Unmarshal([]byte(line), &l) != nil {
			continue
		}
		if l.Action == "drop" && l.Src.Namespace == srcNS && l.Src.Pod == srcPod && l.Dst.Namespace == dstNS && l.Dst.Pod == dstPod && slices.Contains(l.Policies, policy) {
			return line
		}
	}
	return ""
}

// TestAgentRollout: rolling the agent DaemonSet to a new image, node by
// node, drops no allowed connection and lets no denied one through: the
// table stays in the kernel while a node's agent is replaced, and the new
// agent adopts it.
func TestAgentRollout(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		ctx := context.Background()
		root := localcluster.RepoRoot()
		s := policySuite(t, c)

		// The next version: the agent rebuilt under another tag (its
		// labels, so its digest, differ), imported into every node. It is
		// built as make images builds it: with the CNI plugin it installs.
		tag := fmt.Sprintf("v0.1.0-next%d", time.Now().UnixNano()%1e6)
		dir := t.TempDir()
		build := exec.CommandContext(ctx, filepath.Join(root, "bin", "imagebuild"), "-out", dir, "-registry", "ghcr.io/nftguard",
			"-tag", tag, "-platforms", "linux/"+runtime.GOARCH, agentImageArg(t, root))
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("building the next agent image: %v\n%s", err, out)
		}
		if err := c.ImportImage(ctx, filepath.Join(dir, "agent.tar")); err != nil {
			t.Fatal(err)
		}

		s.Create(t, conformance.AllowIngress(conformance.Policy("y", "from-x", nil, conformance.Ingress), nil,
			conformance.NsPeer(conformance.Labels("ns", "x"))))
		s.WaitConverged(t)
		probes := probeDuring(ctx, c, fromXToY)
		time.Sleep(time.Second)
		image := "ghcr.io/nftguard/agent:" + tag
		err := rollAgents(ctx, c, "set", "image", "daemonset/nftguard-agent", "agent="+image, "drop-log="+image)
		probes.stop(t, "the rollout")
		if err != nil {
			t.Fatal(err)
		}

		pods, err := c.Clientset().CoreV1().Pods("nftguard-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent"})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods.Items {
			if p.Spec.Containers[0].Image != image {
				t.Errorf("agent pod %s runs %s after the rollout, want %s", p.Name, p.Spec.Containers[0].Image, image)
			}
		}
		s.ResetPolicies(t)
	})
}

// probePairs are pairs of pods (from, to) that must and must not connect.
type probePairs struct{ allowed, denied [][2]string }

// fromXToY are the pairs of probeDuring while ingress of namespace y is
// allowed from namespace x alone: allowed from x, denied from z.
var fromXToY = probePairs{
	allowed: [][2]string{{"x/a", "y/b"}, {"x/b", "y/a"}, {"x/c", "y/c"}},
	denied:  [][2]string{{"z/a", "y/b"}, {"z/b", "y/a"}, {"z/c", "y/c"}},
}

// prober probes pairs of pods through their Services, over and over, until
// stopped, and keeps what went wrong.
type prober struct {
	done            chan struct{}
	wg              sync.WaitGroup
	mu              sync.Mutex
	probes          int
	dropped, leaked []string
}

// probeDuring starts probing each allowed and each denied pair every 50 ms.
func probeDuring(ctx context.Context, c *localcluster.Cluster, pairs probePairs) *prober {
	p := &prober{done: make(chan struct{})}
	loop := func(pair [2]string, want bool) {
		defer p.wg.Done()
		for {
			select {
			case <-p.done:
				return
			default:
			}
			r := c.ProbeWith(ctx, localcluster.ProbeRequest{From: pair[0], To: pair[1], Port: intstr.FromInt32(80),
				Protocol: corev1.ProtocolTCP, Service: true})
			p.mu.Lock()
			p.probes++
			switch {
			case r.Err != nil:
				p.dropped = append(p.dropped, r.String())
			case want && !r.Reachable():
				p.dropped = append(p.dropped, time.Now().Format("15:04:05.000")+" "+r.String())
			case !want && !r.Blocked():
				p.leaked = append(p.leaked, time.Now().Format("15:04:05.000")+" "+r.String())
			}
			p.mu.Unlock()
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, pair := range pairs.allowed {
		p.wg.Add(1)
		go loop(pair, true)
	}
	for _, pair := range pairs.denied {
		p.wg.Add(1)
		go loop(pair, false)
	}
	return p
}

// stop ends the probes and fails t for every allowed probe that failed and
// every denied one that got through during what.
func (p *prober) stop(t *testing.T, what string) {
	t.Helper()
	close(p.done)
	p.wg.Wait()
	t.Logf("%d probes during %s", p.probes, what)
	if len(p.dropped) > 0 {
		t.Errorf("%d allowed probes failed during %s:\n%s", len(p.dropped), what, strings.Join(p.dropped, "\n"))
	}
	if len(p.leaked) > 0 {
		t.Errorf("%d denied probes got through during %s:\n%s", len(p.leaked), what, strings.Join(p.leaked, "\n"))
	}
}

// rollAgents changes the agent DaemonSet with kubectl args (in the
// nftguard namespace unless they name one), waits for the rollout and for
// every node to be programmed again, and two seconds more.
func rollAgents(ctx context.Context, c *localcluster.Cluster, args ...string) error {
	if !slices.Contains(args, "-k") {
		args = append([]string{"-n", "nftguard-system"}, args...)
	}
	if _, err := kubectl(ctx, c, args...); err != nil {
		return err
	}
	if _, err := kubectl(ctx, c, "-n", "nftguard-system", "rollout", "status", "daemonset/nftguard-agent", "--timeout=3m"); err != nil {
		return err
	}
	if err := waitInstalled(ctx, c); err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	return nil
}

// TestCNIPluginChained: each node's agent pod installed the plugin from its
// image into the node's /opt/cni/bin and chained it last in the node's
// 10-ptp.conflist, with the socket it serves on the node's /run; a pod
// created afterwards goes through it (its attachment is in the agent's
// registry on the node's /var/lib).
func TestCNIPluginChained(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		ctx := context.Background()
		for _, n := range c.Nodes() {
			root, err := c.NodeRoot(n.Name)
			if err != nil {
				t.Fatal(err)
			}
			conflist := filepath.Join(root, "etc", "cni", "net.d", "10-ptp.conflist")
			if why := waitChained(conflist); why != "" {
				t.Errorf("node %s: %s", n.Name, why)
			}
			bin := filepath.Join(root, "opt", "cni", "bin", "nftguard")
			if fi, err := os.Stat(bin); err != nil || fi.Mode().Perm() != 0o755 {
				t.Errorf("node %s: the plugin binary: %v, %v; want mode 0755", n.Name, fi, err)
			} else {
				cmd := exec.CommandContext(ctx, bin)
				cmd.Env = []string{"CNI_COMMAND=VERSION"}
				if out, err := cmd.Output(); err != nil || !strings.Contains(string(out), "supportedVersions") {
					t.Errorf("node %s: the installed plugin's VERSION: %q, %v", n.Name, out, err)
				}
			}
			if fi, err := os.Lstat(filepath.Join(root, "run", "nftguard", "cni.sock")); err != nil || fi.Mode().Type() != os.ModeSocket {
				t.Errorf("node %s: the agent's socket on the node: %v, %v", n.Name, fi, err)
			}
		}

		policySuite(t, c)
		p, err := c.AddPod(ctx, localcluster.PodSpec{Namespace: "y", Name: "through-cni", Node: "node-1",
			Labels: map[string]string{"pod": "through-cni"}, Ports: []localcluster.PortSpec{{Name: "http", Port: 80}}})
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := c.DeletePod(ctx, "y/through-cni"); err != nil {
				t.Error(err)
			}
		}()
		pod, err := c.Clientset().CoreV1().Pods("y").Get(ctx, "through-cni", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		root, err := c.NodeRoot(p.Node)
		if err != nil {
			t.Fatal(err)
		}
		records, _ := filepath.Glob(filepath.Join(root, "var", "lib", "nftguard", "cni", "*.json"))
		found := false
		for _, r := range records {
			if b, err := os.ReadFile(r); err == nil && bytes.Contains(b, []byte(string(pod.UID))) {
				found = true
			}
		}
		if !found {
			t.Errorf("no attachment of pod y/through-cni (uid %s) among the %d records of %s's agent: its ADD did not reach the agent", pod.UID, len(records), p.Node)
		}
	})
}

// waitChained waits up to 30 s for the conflist to chain nftguard, and
// says why it does not if it still does not (notChained).
func waitChained(path string) string {
	why := notChained(path)
	for deadline := time.Now().Add(30 * time.Second); why != "" && time.Now().Before(deadline); why = notChained(path) {
		time.Sleep(100 * time.Millisecond)
	}
	return why
}

// notChained says why the conflist does not end with the nftguard entry
// on the agent's socket and state directory ("" if it does), after ptp.
func notChained(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var list struct {
		Plugins []struct {
			Type     string `json:"type"`
			Socket   string `json:"socket"`
			StateDir string `json:"stateDir"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		return fmt.Sprintf("%s: %v", path, err)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Type)
	}
	if !slices.Equal(types, []string{"ptp", "nftguard"}) || list.Plugins[1].Socket != "/run/nftguard/cni.sock" ||
		list.Plugins[1].StateDir != "/var/lib/nftguard/cni" {
		return fmt.Sprintf("%s chains %q (want ptp, then nftguard on /run/nftguard/cni.sock with state in /var/lib/nftguard/cni):\n%s", path, types, b)
	}
	return ""
}

// agentImageArg is the agent's image argument of hack/imagebuild, as
// mk/images.mk gives it to make images (AGENT_IMAGE).
func agentImageArg(t *testing.T, root string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "mk", "images.mk"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "AGENT_IMAGE := "); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatal("mk/images.mk sets no AGENT_IMAGE")
	return ""
}

// TestBadInputSaysWhereAndCleansUp: an image archive that does not import,
// or a node component that does not start, fails the cluster with the node,
// the component and its log in the error; everything started is removed
// (processes, network namespaces, cgroups) and the logs stay.
func TestBadInputSaysWhereAndCleansUp(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the real-node cluster needs root (network, mount and PID namespaces)")
	}
	bin := filepath.Join(localcluster.RepoRoot(), "bin")
	for i, tc := range []struct {
		name   string
		mutate func(rn *localcluster.RealNodes, dir string)
		want   []string
		log    string // the log the error must point to, which must exist
	}{
		{
			name: "an image that does not import",
			mutate: func(rn *localcluster.RealNodes, dir string) {
				bad := filepath.Join(dir, "broken.tar")
				if err := os.WriteFile(bad, []byte("not an archive\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				rn.Images = append(rn.Images, bad)
			},
			want: []string{"node node-1", "exited before it was ready", "FAILED: importing image", "broken.tar"},
			log:  "node-node-1.log",
		},
		{
			name:   "a kubelet that does not start",
			mutate: func(rn *localcluster.RealNodes, _ string) { rn.KubeletArgs = []string{"--no-such-flag"} },
			want:   []string{"node node-1", "FAILED: kubelet exited", "node-1-kubelet.log"},
			log:    "node-1-kubelet.log",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("rnbad%d%d", i, os.Getpid()%100000)
			dir := t.TempDir()
			rn := &localcluster.RealNodes{Images: localcluster.DefaultImages(bin)}
			tc.mutate(rn, t.TempDir())
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			c, err := localcluster.Up(ctx, localcluster.Config{
				Name: name, StateDir: dir, BinDir: bin, Owned: true, RealNodes: rn,
				Topology: &localcluster.Topology{Nodes: []localcluster.NodeSpec{{Name: "node-1"}}},
			})
			if err == nil {
				c.Down()
				t.Fatal("the cluster came up")
			}
			t.Logf("Up: %v", err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error does not say %q", w)
				}
			}
			if b, rerr := os.ReadFile(filepath.Join(dir, "logs", tc.log)); rerr != nil || len(b) == 0 {
				t.Errorf("the log %s is not kept: %v", tc.log, rerr)
			}
			if left, _ := filepath.Glob("/run/netns/ngd-" + name + "-*"); len(left) > 0 {
				t.Errorf("network namespaces left: %v", left)
			}
			if left, _ := filepath.Glob("/sys/fs/cgroup/*/nftguard-" + name + "-*"); len(left) > 0 {
				t.Errorf("cgroups left: %v", left)
			}
			if _, err := os.Stat(filepath.Join(dir, localcluster.StateFile)); !os.IsNotExist(err) {
				t.Errorf("the state file is left: %v", err)
			}
		})
	}
}

// TestAgentTokenIsBoundToItsNode: the agent's ServiceAccount token, as
// kubelet issued it into the agent pod on node-1, names node-1, so the
// admission policy lets it write node-1's NodeRuleSet status and refuses
// node-2's.
func TestAgentTokenIsBoundToItsNode(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		ctx := context.Background()
		pod := agentPod(ctx, t, c, "node-1")
		// kubelet's projected volume, a tmpfs in node-1's mount namespace.
		root, err := c.NodeRoot("node-1")
		if err != nil {
			t.Fatal(err)
		}
		volumes := filepath.Join(root, "var", "lib", "kubelet", "pods", string(pod.UID), "volumes", "kubernetes.io~projected")
		pattern := filepath.Join(volumes, "kube-api-access-*", "token")
		files, _ := filepath.Glob(pattern)
		if len(files) != 1 {
			t.Fatalf("the agent's token %s: %v", pattern, files)
		}
		token, err := os.ReadFile(files[0])
		if err != nil {
			t.Fatal(err)
		}
		// Its token for the drops API, bound to the same pod, is for that
		// audience alone: the API server does not accept it.
		dropsToken, err := os.ReadFile(filepath.Join(volumes, "drops-token", "token"))
		if err != nil {
			t.Fatal(err)
		}
		dcfg := rest.AnonymousClientConfig(c.RESTConfig())
		dcfg.BearerToken = string(dropsToken)
		dcs, err := kubernetes.NewForConfig(dcfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dcs.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{}); !apierrors.IsUnauthorized(err) {
			t.Errorf("the drops token against the Kubernetes API: %v, want Unauthorized", err)
		}
		cfg := rest.AnonymousClientConfig(c.RESTConfig())
		cfg.BearerToken = string(token)
		scheme, err := v1alpha1.NewScheme()
		if err != nil {
			t.Fatal(err)
		}
		agent, err := client.New(cfg, client.Options{Scheme: scheme})
		if err != nil {
			t.Fatal(err)
		}
		for _, node := range []string{"node-1", "node-2"} {
			var rs v1alpha1.NodeRuleSet
			if err := agent.Get(ctx, client.ObjectKey{Name: node}, &rs); err != nil {
				t.Fatalf("the agent reading NodeRuleSet %s: %v", node, err)
			}
			err := agent.Status().Update(ctx, &rs)
			switch {
			case node == "node-1" && err != nil:
				t.Errorf("node-1's agent writing its own NodeRuleSet status: %v", err)
			case node == "node-2" && !apierrors.IsForbidden(err):
				t.Errorf("node-1's agent writing node-2's NodeRuleSet status: %v, want Forbidden", err)
			case node == "node-2" && !strings.Contains(err.Error(), "its credentials are for node node-1"):
				t.Errorf("the refusal does not name the token's node: %v", err)
			}
		}
	})
}

// TestAddAndDeletePod: AddPod on real nodes creates the Pod and its
// Service as a user would and returns once the pod is Ready, with its
// address and network namespace, so that probes from and to it work;
// DeletePod removes both and the pod from the cluster's record.
func TestAddAndDeletePod(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		ctx := context.Background()
		policySuite(t, c)
		p, err := c.AddPod(ctx, localcluster.PodSpec{Namespace: "y", Name: "added", Node: "node-2",
			Labels: map[string]string{"pod": "added"}, Ports: []localcluster.PortSpec{{Name: "http", Port: 80}}})
		if err != nil {
			t.Fatal(err)
		}
		if !p.IPv4.IsValid() || !p.ServiceIP.IsValid() || p.NetNS == "" || p.Node != "node-2" {
			t.Fatalf("added pod recorded as %+v", p)
		}
		if r := c.ProbeWith(ctx, localcluster.ProbeRequest{From: "y/added", To: "x/a", Port: intstr.FromInt32(80), Service: true}); !r.Reachable() {
			t.Errorf("%s: want connected", r)
		}
		// Its own Service: kube-proxy serves it once the EndpointSlice
		// reaches every node, a moment after the pod is Ready (until then
		// it rejects: refused; once, a probe in that moment got no answer).
		deadline := time.Now().Add(30 * time.Second)
		for {
			r := c.ProbeWith(ctx, localcluster.ProbeRequest{From: "x/a", To: "y/added", Port: intstr.FromString("http"), Service: true})
			if r.Reachable() {
				break
			}
			if r.Err != nil || time.Now().After(deadline) {
				t.Fatalf("%s: want connected", r)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err := c.DeletePod(ctx, "y/added"); err != nil {
			t.Fatal(err)
		}
		if _, ok := c.Pod("y/added"); ok {
			t.Error("the deleted pod is still recorded")
		}
		if _, err := c.Clientset().CoreV1().Pods("y").Get(ctx, "added", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("the deleted Pod object: %v, want NotFound", err)
		}
		if _, err := c.Clientset().CoreV1().Services("y").Get(ctx, "added", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("the deleted pod's Service: %v, want NotFound", err)
		}
	})
}

// TestUninstallLeavesNodesThatStartPods: marking every NodeRuleSet for
// uninstall (what kubectl nftguard uninstall does) takes the CNI plugin
// out of every node before the agents delete their tables, so that once
// nftguard is deleted new pods still start and talk; installing it again
// chains the plugin and adopts the pods started meanwhile, which keep
// talking.
func TestUninstallLeavesNodesThatStartPods(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		ctx := context.Background()
		policySuite(t, c)
		reinstall := func() {
			t.Helper()
			if _, err := kubectl(ctx, c, "apply", "--server-side", "-k", kustomization(*identityLayout)); err != nil {
				t.Fatal(err)
			}
			if err := waitInstalled(ctx, c); err != nil {
				t.Fatal(err)
			}
			for _, n := range c.Nodes() {
				root, err := c.NodeRoot(n.Name)
				if err != nil {
					t.Fatal(err)
				}
				if why := waitChained(filepath.Join(root, "etc", "cni", "net.d", "10-ptp.conflist")); why != "" {
					t.Fatalf("node %s after installing again: %s", n.Name, why)
				}
			}
		}

		if _, err := kubectl(ctx, c, "annotate", "nrs", "--all", "--overwrite", v1alpha1.UninstallAnnotation+"=true"); err != nil {
			t.Fatal(err)
		}
		var pending []string
		for deadline := time.Now().Add(time.Minute); ; {
			pending = pending[:0]
			var list v1alpha1.NodeRuleSetList
			if err := c.Client().List(ctx, &list); err != nil {
				t.Fatal(err)
			}
			for _, rs := range list.Items {
				if cond := meta.FindStatusCondition(rs.Status.Conditions, v1alpha1.ConditionProgrammed); cond == nil || cond.Reason != v1alpha1.ReasonUninstalled {
					pending = append(pending, fmt.Sprintf("%s: %+v", rs.Name, cond))
				}
			}
			if len(pending) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if len(pending) > 0 {
			t.Fatalf("not uninstalled after 1m: %s", strings.Join(pending, "; "))
		}
		for _, n := range c.Nodes() {
			root, err := c.NodeRoot(n.Name)
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(root, "etc", "cni", "net.d", "10-ptp.conflist"))
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(b, []byte(`"nftguard"`)) {
				t.Errorf("node %s reports Uninstalled, but its conflist still chains nftguard:\n%s", n.Name, b)
			}
			if _, err := os.Stat(filepath.Join(root, "opt", "cni", "bin", "nftguard")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("node %s reports Uninstalled, but the plugin binary is still there: %v", n.Name, err)
			}
		}

		if _, err := kubectl(ctx, c, "delete", "--wait", "--timeout=3m", "-k", kustomization(*identityLayout)); err != nil {
			reinstall()
			t.Fatal(err)
		}
		p, err := c.AddPod(ctx, localcluster.PodSpec{Namespace: "y", Name: "after-uninstall", Node: "node-1",
			Labels: map[string]string{"pod": "after-uninstall"}, Ports: []localcluster.PortSpec{{Name: "http", Port: 80}}})
		reinstall()
		if err != nil {
			t.Fatalf("a pod created once nftguard was deleted: %v", err)
		}
		defer func() {
			if err := c.DeletePod(ctx, "y/after-uninstall"); err != nil {
				t.Error(err)
			}
		}()
		// Adopted: without it, its address would be held (not ready).
		if r := c.ProbeWith(ctx, localcluster.ProbeRequest{From: "x/a", To: p.Namespace + "/" + p.Name, Port: intstr.FromInt32(80)}); !r.Reachable() {
			t.Errorf("the pod started while nftguard was gone, after installing it again: %s; want connected", r)
		}
		if r := c.ProbeWith(ctx, localcluster.ProbeRequest{From: p.Namespace + "/" + p.Name, To: "x/a", Port: intstr.FromInt32(80)}); !r.Reachable() {
			t.Errorf("from the pod started while nftguard was gone, after installing it again: %s; want connected", r)
		}
	})
}

// TestEverythingDeniedStillManaged: an Enforce DefaultDeny with
// namespaceSelector {} (ingress and egress) exempts nftguard's own
// namespace and says so in its status; the controller, restarted under
// it on the pod network, still reaches the API server, and a policy
// change made afterwards is enforced.
func TestEverythingDeniedStillManaged(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		ctx := context.Background()
		s := policySuite(t, c)
		defer s.ResetPolicies(t)
		dd := &v1alpha1.DefaultDeny{
			ObjectMeta: metav1.ObjectMeta{Name: "everything"},
			Spec: v1alpha1.DefaultDenySpec{
				PolicyTypes: []v1alpha1.PolicyType{v1alpha1.PolicyTypeIngress, v1alpha1.PolicyTypeEgress},
				Mode:        v1alpha1.ModeEnforce,
			},
		}
		s.Create(t, dd)
		s.WaitConverged(t)
		if err := c.Client().Get(ctx, client.ObjectKeyFromObject(dd), dd); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(dd.Status.ExemptNamespaces, ownNamespace) {
			t.Errorf("DefaultDeny status exemptNamespaces = %v, want %s", dd.Status.ExemptNamespaces, ownNamespace)
		}
		if r := c.ProbeWith(ctx, localcluster.ProbeRequest{From: "x/b", To: "x/a", Port: intstr.FromInt32(80)}); r.Reachable() {
			t.Fatalf("%s under the {} DefaultDeny: want blocked", r)
		}

		pods, err := c.Clientset().CoreV1().Pods(ownNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=controller"})
		if err != nil || len(pods.Items) == 0 {
			t.Fatalf("the controller pods: %v, %v", pods, err)
		}
		for _, p := range pods.Items {
			if err := c.Clientset().CoreV1().Pods(ownNamespace).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		// The Deployment's new pod starts under the DefaultDeny.
		for deadline := time.Now().Add(2 * time.Minute); ; {
			d, err := c.Clientset().AppsV1().Deployments(ownNamespace).Get(ctx, "nftguard-controller", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			list, err := c.Clientset().CoreV1().Pods(ownNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=controller"})
			if err != nil {
				t.Fatal(err)
			}
			fresh := 0
			for _, p := range list.Items {
				if !slices.ContainsFunc(pods.Items, func(old corev1.Pod) bool { return old.UID == p.UID }) && podCondition(&p, corev1.PodReady) != nil &&
					podCondition(&p, corev1.PodReady).Status == corev1.ConditionTrue {
					fresh++
				}
			}
			if fresh > 0 && d.Status.AvailableReplicas > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no new controller pod Ready 2m after the old ones were deleted: %s", podProblems(ctx, c))
			}
			time.Sleep(250 * time.Millisecond)
		}

		s.Create(t,
			&networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a-from-b"},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}},
					Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
						PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pod": "b"}}}}}},
				},
			},
			&networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "b-to-a"},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "b"}},
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
					Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{
						PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}}}}}},
				},
			})
		var r localcluster.ProbeResult
		for deadline := time.Now().Add(2 * time.Minute); ; {
			r = c.ProbeWith(ctx, localcluster.ProbeRequest{From: "x/b", To: "x/a", Port: intstr.FromInt32(80)})
			if r.Reachable() || time.Now().After(deadline) {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if !r.Reachable() {
			t.Fatalf("%s 2m after allowing it, with the controller restarted under the {} DefaultDeny: want connected", r)
		}
		if r := c.ProbeWith(ctx, localcluster.ProbeRequest{From: "x/c", To: "x/a", Port: intstr.FromInt32(80)}); r.Reachable() {
			t.Errorf("%s: want blocked (only x/b is allowed)", r)
		}
	})
}

// TestCNIEntryPutBack: when the pod network's installer rewrites its
// conflist without the nftguard entry (here: node-1's file replaced by one
// holding only ptp, through a rename as installers write), the node's
// agent puts the entry back, and its NodeRuleSet says CNIChained=True
// again.
func TestCNIEntryPutBack(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		ctx := context.Background()
		root, err := c.NodeRoot("node-1")
		if err != nil {
			t.Fatal(err)
		}
		conflist := filepath.Join(root, "etc", "cni", "net.d", "10-ptp.conflist")
		b, err := os.ReadFile(conflist)
		if err != nil {
			t.Fatal(err)
		}
		var doc map[string]any
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		plugins, _ := doc["plugins"].([]any)
		doc["plugins"] = slices.DeleteFunc(plugins, func(p any) bool { m, _ := p.(map[string]any); return m["type"] == "nftguard" })
		out, err := json.MarshalIndent(doc, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		tmp := conflist + ".tmp"
		if err := os.WriteFile(tmp, out, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, conflist); err != nil {
			t.Fatal(err)
		}
		if why := notChained(conflist); why == "" {
			t.Fatal("the rewritten conflist still chains nftguard")
		}
		if why := waitChained(conflist); why != "" {
			t.Fatalf("the agent did not put the entry back within 30s: %s", why)
		}
		var cond *metav1.Condition
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
			rs := &v1alpha1.NodeRuleSet{}
			if err := c.Client().Get(ctx, client.ObjectKey{Name: "node-1"}, rs); err != nil {
				t.Fatal(err)
			}
			if cond = meta.FindStatusCondition(rs.Status.Conditions, v1alpha1.ConditionCNIChained); cond != nil && cond.Status == metav1.ConditionTrue {
				return
			}
		}
		t.Errorf("CNIChained after the repair: %+v, want True", cond)
	})
}

// TestNodeReboot: node-2 loses power and boots again with its disks (its
// nftguard table, conntrack entries, pods and /run gone; its CNI
// configuration, with the nftguard entry, and the agent's registry kept).
// Throughout, a pod on node-1 opens TCP connections every 100 ms to every
// address of node-2's pod range, and a DefaultDeny isolates namespace y's
// ingress: not one connection to a pod of y, before or after the reboot,
// completes, while the pods no policy isolates are reached again once they
// run.
func TestNodeReboot(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		ctx := context.Background()
		s := policySuite(t, c)
		defer s.ResetPolicies(t)
		s.Create(t, &v1alpha1.DefaultDeny{
			ObjectMeta: metav1.ObjectMeta{Name: "reboot-y"},
			Spec: v1alpha1.DefaultDenySpec{
				NamespaceSelector: v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{corev1.LabelMetadataName: "y"}},
				PolicyTypes:       []v1alpha1.PolicyType{v1alpha1.PolicyTypeIngress},
				Mode:              v1alpha1.ModeEnforce,
			},
		})
		s.WaitConverged(t)
		n2, ok := c.Node("node-2")
		if !ok {
			t.Fatal("no node-2")
		}
		var prober localcluster.Pod
		for _, p := range c.Pods() {
			if p.Node != "node-2" && p.Namespace == "x" {
				prober = p
				break
			}
		}
		if prober.Name == "" {
			t.Fatal("no pod of x off node-2 to probe from")
		}
		isolated := map[netip.Addr]string{}
		record := func() {
			for _, p := range c.Pods() {
				if p.Node == "node-2" && p.Namespace == "y" {
					isolated[p.IPv4] = p.Namespace + "/" + p.Name
				}
			}
		}
		record()
		if len(isolated) == 0 {
			t.Fatal("no pod of y on node-2: nothing isolated to leak to")
		}
		var targets []localcluster.FloodTarget
		for a := n2.PodCIDRv4.Addr().Next(); n2.PodCIDRv4.Contains(a); a = a.Next() {
			targets = append(targets, localcluster.FloodTarget{Addr: netip.AddrPortFrom(a, 80), Protocol: corev1.ProtocolTCP})
		}
		flood := c.StartFlood(prober, targets, 100*time.Millisecond)
		stopped := false
		stop := func() {
			if !stopped {
				stopped = true
				if err := flood.Stop(); err != nil {
					t.Errorf("prober: %v", err)
				}
			}
		}
		defer stop()
		if err := c.RebootNode(ctx, "node-2"); err != nil {
			t.Fatal(err)
		}
		record()
		open := map[netip.Addr]string{}
		for _, p := range c.Pods() {
			if p.Node == "node-2" && p.Namespace != "y" {
				open[p.IPv4] = p.Namespace + "/" + p.Name
			}
		}
		// Keep probing a while with everything back.
		time.Sleep(3 * time.Second)
		stop()
		var leaked []string
		reached := 0
		for ap, n := range flood.Connected() {
			if pod, ok := isolated[ap.Addr()]; ok {
				leaked = append(leaked, fmt.Sprintf("%s (%s): %d", pod, ap.Addr(), n))
			}
			if _, ok := open[ap.Addr()]; ok {
				reached += int(n)
			}
		}
		t.Logf("%s opened connections to %d addresses of %s for the reboot; %d completed to pods no policy isolates", prober.Name, len(targets), n2.PodCIDRv4, reached)
		if len(leaked) > 0 {
			slices.Sort(leaked)
			t.Errorf("connections to ingress-isolated pods of y on node-2 completed: %s", strings.Join(leaked, "; "))
		}
		if reached == 0 {
			t.Fatalf("no connection to the pods of node-2 that no policy isolates (%v) completed: the prober sees nothing", open)
		}
		s.WaitConverged(t)
	})
}

// TestFirstPackets: a new pod on node-1 whose egress a policy limits to y/a
// sends TCP SYNs and UDP every millisecond, over IPv4 and IPv6, to y/a and
// z/b from the moment containerd has made its sandbox's network namespace:
// the sender enters that namespace from the node before the CNI ADD gives
// it an interface (its sends fail until ptp has set up the address and
// routes), so it talks before nftguard's plugin has told the agent of the
// pod. Counted at the peers' interfaces: z/b never sees a packet of it; y/a
// sees the first only after the ADD reached node-1's agent, and within 30 s.
func TestFirstPackets(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		ctx := context.Background()
		s := policySuite(t, c)
		defer s.ResetPolicies(t)
		const ns, label, node = "x", "first-packets", "node-1"
		const allowedPeer, deniedPeer = "y/a", "z/b"
		s.Create(t, conformance.AllowEgress(conformance.Policy(ns, label, conformance.Labels("pod", label), conformance.Egress), nil,
			networkingv1.NetworkPolicyPeer{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: conformance.Labels("ns", "y")},
				PodSelector:       &metav1.LabelSelector{MatchLabels: conformance.Labels("pod", "a")},
			}))
		s.WaitConverged(t)
		var targets []localcluster.FloodTarget
		for _, peer := range []string{allowedPeer, deniedPeer} {
			p, ok := c.Pod(peer)
			if !ok {
				t.Fatalf("no pod %s", peer)
			}
			for _, ip := range []netip.Addr{p.IPv4, p.IPv6} {
				if ip.IsValid() {
					targets = append(targets,
						localcluster.FloodTarget{Addr: netip.AddrPortFrom(ip, 80), Protocol: corev1.ProtocolTCP},
						localcluster.FloodTarget{Addr: netip.AddrPortFrom(ip, 81), Protocol: corev1.ProtocolUDP})
				}
			}
		}
		// One pod, and whether its sender went out before the node heard
		// of it: a loaded machine can delay the sender past the ADD, and
		// that pod then tests nothing; another one is started.
		attempt := func(name string) bool {
			key := ns + "/" + name
			// The sender's addresses are known only once it runs: the peers
			// count by source from the start, and the sender's are read later.
			allowed, err := c.CaptureFrom(allowedPeer)
			if err != nil {
				t.Fatal(err)
			}
			defer allowed.Close()
			denied, err := c.CaptureFrom(deniedPeer)
			if err != nil {
				t.Fatal(err)
			}
			defer denied.Close()
			watch, err := c.WatchNetNS(node)
			if err != nil {
				t.Fatal(err)
			}
			defer watch.Close()

			defer func() {
				if _, ok := c.Pod(key); ok {
					if err := c.DeletePod(ctx, key); err != nil {
						t.Errorf("removing %s: %v", key, err)
					}
					return
				}
				// Created but never recorded (not Ready): remove the objects.
				_ = c.Clientset().CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{})
				err := c.Clientset().CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{})
				for deadline := time.Now().Add(2 * time.Minute); err == nil && time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
					_, err = c.Clientset().CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
				}
				if !apierrors.IsNotFound(err) {
					t.Errorf("removing pod %s: %v", key, err)
				}
			}()
			type added struct {
				pod localcluster.Pod
				err error
			}
			addc := make(chan added, 1)
			go func() {
				p, err := c.AddPod(ctx, localcluster.PodSpec{Namespace: ns, Name: name, Node: node,
					Labels: conformance.Labels("pod", label), Ports: []localcluster.PortSpec{{Name: "http", Port: 80}}})
				addc <- added{p, err}
			}()
			wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			path, appeared, err := watch.Next(wctx)
			cancel()
			if err != nil {
				r := <-addc // recorded or failed, for the cleanup
				t.Fatalf("waiting for %s's sandbox on %s: %v (starting it: %v)", key, node, err, r.err)
			}
			// From the node, in the sandbox's namespace: the pod's own process
			// (its container) starts only after the CNI ADD, too late to send
			// before nftguard has heard of the pod.
			flood := c.StartFlood(localcluster.Pod{Namespace: ns, Name: name, Node: node, NetNS: path}, targets, time.Millisecond)
			floodStarted := time.Now()
			// Its count, sampled every millisecond: how many packets went out
			// before the agent heard of the pod.
			type sample struct {
				at   time.Time
				sent int64
			}
			var samples []sample
			quit, sampled := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(sampled)
				tick := time.NewTicker(time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-quit:
						return
					case <-tick.C:
						n := flood.Sent()
						samples = append(samples, sample{time.Now(), n})
					}
				}
			}()
			stopped := false
			stop := func() {
				if !stopped {
					stopped = true
					close(quit)
					<-sampled
					if err := flood.Stop(); err != nil {
						t.Errorf("the sender: %v", err)
					}
				}
			}
			defer stop()
			r := <-addc
			if r.err != nil {
				t.Fatalf("starting %s: %v", key, r.err)
			}
			if filepath.Base(r.pod.NetNS) != filepath.Base(path) {
				// The first namespace to appear on the node was not the
				// pod's: a sandbox the kubelet gave up and made again
				// (a slow ADD on a loaded machine), or another pod's. The
				// sender's packets are then not the pod's: it tests
				// nothing.
				t.Logf("the sender entered %s, but %s runs in %s: this pod tests nothing", path, key, r.pod.NetNS)
				return false
			}
			ready := time.Now()
			var from []netip.Addr
			for _, ip := range []netip.Addr{r.pod.IPv4, r.pod.IPv6} {
				if ip.IsValid() {
					from = append(from, ip)
				}
			}
			// The pod talks to y/a once programmed; keep going a second after
			// y/a's first packet to see that z/b still gets nothing.
			keepUntil := time.Time{}
			for deadline := floodStarted.Add(30 * time.Second); keepUntil.IsZero(); time.Sleep(10 * time.Millisecond) {
				if n, first := allowed.SeenFrom(from...); n > 0 {
					keepUntil = first.Add(time.Second)
				} else if time.Now().After(deadline) {
					keepUntil = time.Now().Add(time.Second)
				}
			}
			time.Sleep(time.Until(keepUntil))
			stop()
			allowed.Close()
			denied.Close()
			sent, failed := flood.Sent(), flood.Failed()
			firstSent, failedBefore := flood.FirstSent()
			nA, firstA := allowed.SeenFrom(from...)
			// Its addresses, from its CNI ADD (the other it has, IPv6
			// link-local, is never forwarded off its link).
			nD, _ := denied.SeenFrom(from...)
			otherD, _ := denied.Seen()
			otherD -= nD
			addAt, err := agentAdded(c, key)
			if err != nil {
				t.Fatal(err)
			}
			var sentEarly int64 // at least this many before the ADD reached the agent
			for _, sm := range samples {
				if sm.at.Before(addAt) {
					sentEarly = sm.sent
				}
			}
			since := func(at time.Time) string {
				if at.IsZero() {
					return "never"
				}
				return at.Sub(appeared).Round(time.Microsecond).String()
			}
			t.Logf("%s (%v) on %s, times from its network namespace's appearance: sender in it after %s, first packet taken after %s "+
				"(%d sends refused before), ADD reached the agent after %s, Ready after %s, %s saw the first packet after %s",
				key, from, node, since(floodStarted), since(firstSent), failedBefore, since(addAt), since(ready), allowedPeer, since(firstA))
			t.Logf("%s sent %d packets (%d sends refused), at least %d before the ADD reached the agent; packets from it (SYNs, "+
				"datagrams, the handshakes' ACKs and closes): %s saw %d, %s saw %d (and %d from other sources: its capture was counting); "+
				"TCP connections completed: %v", key, sent, failed, sentEarly, allowedPeer, nA, deniedPeer, nD, otherD, flood.Connected())
			if nD != 0 {
				t.Errorf("%s, which %s's policy denies, saw %d of its packets", deniedPeer, key, nD)
			}
			if firstSent.IsZero() {
				t.Fatalf("the sender sent nothing")
			}
			if nA == 0 {
				t.Fatalf("%s, which %s's policy allows, saw none of its packets within 30s", allowedPeer, key)
			}
			if firstA.Before(addAt) {
				t.Errorf("%s saw %s's first packet %s before its ADD reached the agent: it passed before the pod was programmed",
					allowedPeer, key, addAt.Sub(firstA))
			}
			switch {
			case failedBefore == 0:
				t.Logf("the sender's first send went out: it did not start before %s's interface had its addresses", key)
				return false
			case !firstSent.Before(addAt):
				t.Logf("the sender's first packet went out %s after the ADD reached the agent: the window before the node heard of the pod is not exercised",
					firstSent.Sub(addAt))
				return false
			}
			return true
		}
		for i := range 3 {
			if attempt(fmt.Sprintf("%s-%d", label, i)) || t.Failed() {
				return
			}
		}
		t.Fatal("in 3 pods, the sender never went out before the node heard of the pod")
	})
}

// agentAdded is when a real node's agent recorded the CNI ADD of a pod: the
// time in its attachment record on the node's /var/lib.
func agentAdded(c *localcluster.Cluster, key string) (time.Time, error) {
	ns, name, _ := strings.Cut(key, "/")
	p, ok := c.Pod(key)
	if !ok {
		return time.Time{}, fmt.Errorf("no pod %s", key)
	}
	pod, err := c.Clientset().CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return time.Time{}, err
	}
	root, err := c.NodeRoot(p.Node)
	if err != nil {
		return time.Time{}, err
	}
	records, _ := filepath.Glob(filepath.Join(root, "var", "lib", "nftguard", "cni", "*.json"))
	for _, path := range records {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		var rec struct {
			Added      time.Time `json:"added"`
			Attachment struct {
				PodUID string `json:"podUID"`
			} `json:"attachment"`
		}
		if json.Unmarshal(b, &rec) == nil && rec.Attachment.PodUID == string(pod.UID) {
			return rec.Added, nil
		}
	}
	return time.Time{}, fmt.Errorf("no attachment of pod %s (uid %s) among the %d records of %s's agent", key, pod.UID, len(records), p.Node)
}

// TestControllerDownNewPodsStayClosed: with the controller Deployment
// scaled to zero, a pod started on each node (no policy isolates it) runs
// and turns Ready (kubelet's probes come from the node), but no rule set
// lists it, so its node holds it: nothing reaches it and nothing of its
// gets out. Once the controller runs again, both directions connect.
func TestControllerDownNewPodsStayClosed(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *localcluster.Cluster) {
		ctx := context.Background()
		s := policySuite(t, c)
		s.WaitConverged(t)
		deployments := c.Clientset().AppsV1().Deployments(ownNamespace)
		d, err := deployments.Get(ctx, "nftguard-controller", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		replicas := ptr.Deref(d.Spec.Replicas, 1)
		scale := func(n int32) error {
			_, err := kubectl(ctx, c, "-n", ownNamespace, "scale", "deployment/nftguard-controller", fmt.Sprintf("--replicas=%d", n))
			return err
		}
		scaled := false
		t.Cleanup(func() {
			if scaled {
				return
			}
			if err := scale(replicas); err != nil {
				t.Errorf("scaling the controller back: %v", err)
			}
			if err := waitInstalled(ctx, c); err != nil {
				t.Errorf("after scaling the controller back: %v", err)
			}
		})
		if err := scale(0); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(time.Minute); ; {
			list, err := c.Clientset().CoreV1().Pods(ownNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=controller"})
			if err != nil {
				t.Fatal(err)
			}
			if len(list.Items) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d controller pods still there 1m after scaling to 0", len(list.Items))
			}
			time.Sleep(250 * time.Millisecond)
		}

		var held []string
		for _, node := range []string{"node-1", "node-2"} {
			name := "held-" + node
			key := "y/" + name
			t.Cleanup(func() {
				if _, ok := c.Pod(key); ok {
					if err := c.DeletePod(ctx, key); err != nil {
						t.Errorf("removing %s: %v", key, err)
					}
				}
			})
			if _, err := c.AddPod(ctx, localcluster.PodSpec{Namespace: "y", Name: name, Node: node,
				Labels: map[string]string{"pod": name}, Ports: []localcluster.PortSpec{{Name: "http", Port: 80}}}); err != nil {
				t.Fatalf("a pod started while no controller runs: %v", err)
			}
			held = append(held, key)
		}
		probes := func(key string) []localcluster.ProbeRequest {
			return []localcluster.ProbeRequest{
				{From: "x/a", To: key, Port: intstr.FromInt32(80)},
				{From: key, To: "x/a", Port: intstr.FromInt32(80)},
			}
		}
		for _, key := range held {
			for _, req := range probes(key) {
				if r := c.ProbeWith(ctx, req); !r.Blocked() {
					t.Errorf("%s while no controller runs: want blocked", r)
				}
			}
		}
		if t.Failed() {
			return
		}

		if err := scale(replicas); err != nil {
			t.Fatal(err)
		}
		scaled = true
		if err := waitInstalled(ctx, c); err != nil {
			t.Fatal(err)
		}
		for _, key := range held {
			for _, req := range probes(key) {
				var r localcluster.ProbeResult
				for deadline := time.Now().Add(2 * time.Minute); ; {
					if r = c.ProbeWith(ctx, req); r.Reachable() || time.Now().After(deadline) {
						break
					}
					time.Sleep(250 * time.Millisecond)
				}
				if !r.Reachable() {
					t.Errorf("%s 2m after the controller came back: want connected", r)
				}
			}
		}
	})
}

// restartCounts maps each container of nftguard's pods to its restart
// count.
func restartCounts(ctx context.Context, t *testing.T, c *localcluster.Cluster) map[string]int32 {
	t.Helper()
	pods, err := c.Clientset().CoreV1().Pods(ownNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int32{}
	for _, p := range pods.Items {
		for _, cs := range p.Status.ContainerStatuses {
			out[p.Name+"/"+cs.Name] = cs.RestartCount
		}
	}
	return out
}

// TestAPIServerOutages: the API server goes away for 30 s, killed (connections
// refused) and blackholed (packets dropped, no reset). Enforcement holds
// meanwhile; the controller (leader election on, as installed) and the
// agents ride it out without a restart; and a policy change made as soon as
// the server is back is enforced on its node within 5 s.
func TestAPIServerOutages(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the real-node cluster needs root (network, mount and PID namespaces)")
	}
	c := cluster(t, strings.Split(*proxyModes, ",")[0])
	ctx := context.Background()
	s := &conformance.Suite{Cluster: c, ConvergeTimeout: 2 * time.Minute, ExemptNamespaces: []string{ownNamespace}}
	xa, ok := c.Pod("x/a")
	if !ok {
		t.Fatal("no pod x/a")
	}
	chain := render.PodChainName("in", "x", "a")
	// seenFromNode is what a connect from a node to the API server gets.
	seenFromNode := func(t *testing.T) error {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		conn, err := c.DialNode(dctx, xa.Node, "tcp", c.APIServerAddress().String())
		if err == nil {
			conn.Close()
		}
		return err
	}
	for _, outage := range []struct {
		name  string
		start func(t *testing.T) (end func())
		// seen checks what a node's connect gets meanwhile.
		seen func(err error) bool
	}{
		{"killed", func(t *testing.T) func() {
			ref, err := c.Kill(localcluster.RoleAPIServer, "", syscall.SIGKILL)
			if err != nil {
				t.Fatal(err)
			}
			restarted := false
			end := func() {
				if !restarted {
					restarted = true
					if err := c.Restart(ctx, ref); err != nil {
						t.Fatal(err)
					}
				}
			}
			t.Cleanup(end)
			return end
		}, func(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }},
		{"blackholed", func(t *testing.T) func() {
			lift, err := blackholeAPIServer(c)
			if err != nil {
				t.Fatal(err)
			}
			lifted := false
			end := func() {
				if !lifted {
					lifted = true
					if err := lift(); err != nil {
						t.Fatal(err)
					}
				}
			}
			t.Cleanup(end)
			return end
		}, func(err error) bool { return errors.Is(err, context.DeadlineExceeded) || os.IsTimeout(err) }},
	} {
		t.Run(outage.name, func(t *testing.T) {
			s.ResetPolicies(t)
			before := restartCounts(ctx, t, c)
			end := outage.start(t)
			began := time.Now()
			if err := seenFromNode(t); !outage.seen(err) {
				t.Fatalf("the API server is not %s: a node's connect got %v", outage.name, err)
			}
			time.Sleep(time.Until(began.Add(30 * time.Second)))
			end()
			back := time.Now()
			s.Create(t, &networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a-closed"},
				Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}}},
			})
			enforced := s.WaitChain(t, xa, chain, true)
			t.Logf("API server %s for %s; a policy created when it was back was enforced %s later",
				outage.name, back.Sub(began).Round(time.Second), enforced.Sub(back).Round(time.Millisecond))
			if d := enforced.Sub(back); d > 5*time.Second {
				t.Errorf("the policy took %s to be enforced after the API server was back (want at most 5s)", d.Round(time.Millisecond))
				// What the controller and the agents said about it.
				for _, sel := range []string{"app.kubernetes.io/component=controller", "app.kubernetes.io/component=agent"} {
					out, err := kubectl(ctx, c, "-n", ownNamespace, "logs", "-l", sel, "--tail=40", "--prefix")
					t.Logf("%s logs (%v):\n%s", sel, err, out)
				}
			}
			if after := restartCounts(ctx, t, c); !maps.Equal(before, after) {
				t.Errorf("nftguard's containers restarted during the outage: before %v, after %v", before, after)
			}
			s.ResetPolicies(t)
		})
	}
}
