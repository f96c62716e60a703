package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	netv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/test/localcluster"
)

var e2eTrials = flag.Int("bench.e2e.trials", 50, "trials of each end-to-end latency measurement")

// e2eTopology is two nodes: the server x/a on node-1, its allowed client
// x/b on node-2, and new pods on node-2.
const e2eTopology = `
nodes: [{name: node-1}, {name: node-2}]
namespaces: [{name: x, labels: {ns: x}}, {name: y, labels: {ns: y}}]
pods:
- {namespace: x, name: a, node: node-1, labels: {pod: a}, ports: [{name: http, port: 80}]}
- {namespace: x, name: b, node: node-2, labels: {pod: b}, ports: [{name: http, port: 80}]}
`

// BenchmarkEndToEnd measures, on the local cluster (real API server,
// controller and one agent per node as processes, real packets across two
// nodes): how long a policy change takes to be enforced on the node that
// needs it (a NetworkPolicy that opens x/b -> x/a across nodes, until the
// first connection passes), and how long a new pod on the other node takes
// to reach its allowed peer once it is Running. Probes time out after 20 ms,
// which bounds the resolution.
func BenchmarkEndToEnd(b *testing.B) {
	needRoot(b)
	ctx := context.Background()
	bin := b.TempDir()
	buildCommands(b, bin, "controller", "agent")
	topo, err := localcluster.ParseTopology([]byte(e2eTopology))
	if err != nil {
		b.Fatal(err)
	}
	cl, err := localcluster.Up(ctx, localcluster.Config{
		Name: fmt.Sprintf("bench%d", os.Getpid()%100000), StateDir: filepath.Join(b.TempDir(), "cluster"), Topology: topo,
		Controller: filepath.Join(bin, "controller"), Agent: filepath.Join(bin, "agent"), Owned: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Down()
	endToEnd(ctx, b, cl, false)
}

// buildCommands builds ./cmd/<name> of the checkout into dir for each name.
func buildCommands(b *testing.B, dir string, names ...string) {
	b.Helper()
	for _, cmd := range names {
		c := exec.Command("go", "build", "-o", filepath.Join(dir, cmd), "./cmd/"+cmd)
		c.Dir, c.Stderr = localcluster.RepoRoot(), os.Stderr
		if err := c.Run(); err != nil {
			b.Fatalf("building %s: %v", cmd, err)
		}
	}
}

// BenchmarkEndToEndRealNodes is BenchmarkEndToEnd on real nodes (kubelet,
// containerd, kube-proxy; nftguard installed from its images), probing
// through the Services' ClusterIPs. A new pod's clock starts when its Pod
// object is created: the time includes kubelet starting its sandbox and
// container and reporting its address.
func BenchmarkEndToEndRealNodes(b *testing.B) {
	needRoot(b)
	ctx := context.Background()
	root := localcluster.RepoRoot()
	bin := filepath.Join(root, "bin")
	topo, err := localcluster.ParseTopology([]byte(e2eTopology))
	if err != nil {
		b.Fatal(err)
	}
	cl, err := localcluster.Up(ctx, localcluster.Config{
		Name: fmt.Sprintf("benchrn%d", os.Getpid()%100000), StateDir: filepath.Join(b.TempDir(), "cluster"), Topology: topo,
		BinDir: bin, Owned: true,
		RealNodes: &localcluster.RealNodes{Images: localcluster.DefaultImages(bin), Install: filepath.Join(root, "config", "default")},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Down()
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := cl.WaitEnforced(wctx); err != nil {
		b.Fatal(err)
	}
	endToEnd(ctx, b, cl, true)
}

// endToEnd measures the two latencies on a running cluster.
func endToEnd(ctx context.Context, b *testing.B, cl *localcluster.Cluster, service bool) {
	c := cl.Client()

	// reachable polls short probes until the connection passes (want) or
	// keeps failing (!want, three in a row), and returns how long it took.
	reachable := func(from, to string, want bool) time.Duration {
		start := time.Now()
		fails := 0
		for time.Since(start) < 30*time.Second {
			r := cl.ProbeWith(ctx, localcluster.ProbeRequest{From: from, To: to, Port: intstr.FromInt32(80),
				Protocol: corev1.ProtocolTCP, Timeout: 20 * time.Millisecond, Service: service})
			cut := false
			if r.Err != nil {
				// Accepted, then silent: while waiting for a block, the
				// policy arrived between the handshake and the server's
				// answer, and the agent revoked the connection.
				if want || !errors.Is(r.Err, os.ErrDeadlineExceeded) {
					b.Fatalf("probe %s", r)
				}
				cut = true
			}
			if r.Outcome == localcluster.Refused {
				// A dead listener: neither reachable nor blocked.
				b.Fatalf("probe %s: refused", r)
			}
			reached := r.Reachable() && !cut
			if reached == want && (want || fails >= 2) {
				return time.Since(start)
			}
			if !reached {
				fails++
			} else {
				fails = 0
			}
		}
		b.Fatalf("%s -> %s never became reachable=%v", from, to, want)
		return 0
	}
	dd := &v1alpha1.DefaultDeny{
		ObjectMeta: metav1.ObjectMeta{Name: "bench"},
		Spec: v1alpha1.DefaultDenySpec{
			NamespaceSelector: v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"ns": "x"}},
			PolicyTypes:       []v1alpha1.PolicyType{v1alpha1.PolicyTypeIngress},
		},
	}
	if err := c.Create(ctx, dd); err != nil {
		b.Fatal(err)
	}
	reachable("x/b", "x/a", false)

	for b.Loop() {
		var policy, pod, afterReady []time.Duration
		for i := 0; i < *e2eTrials; i++ {
			np := &netv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "allow-b"},
				Spec: netv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}},
					Ingress: []netv1.NetworkPolicyIngressRule{{From: []netv1.NetworkPolicyPeer{{
						PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pod": "b"}},
					}}}},
				},
			}
			start := time.Now()
			if err := c.Create(ctx, np); err != nil {
				b.Fatal(err)
			}
			reachable("x/b", "x/a", true)
			policy = append(policy, time.Since(start))
			if err := c.Delete(ctx, np); err != nil {
				b.Fatal(err)
			}
			reachable("x/b", "x/a", false)
		}

		clients := &netv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "allow-clients"},
			Spec: netv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}},
				Ingress: []netv1.NetworkPolicyIngressRule{{From: []netv1.NetworkPolicyPeer{{
					NamespaceSelector: &metav1.LabelSelector{},
					PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}},
				}}}},
			},
		}
		if err := c.Create(ctx, clients); err != nil {
			b.Fatal(err)
		}
		for i := 0; i < *e2eTrials; i++ {
			name := fmt.Sprintf("client-%d", i)
			start := time.Now()
			if _, err := cl.AddPod(ctx, localcluster.PodSpec{Namespace: "y", Name: name, Node: "node-2",
				Labels: map[string]string{"role": "client"}, Ports: []localcluster.PortSpec{{Name: "http", Port: 80}}}); err != nil {
				b.Fatal(err)
			}
			ready := time.Since(start)
			after := reachable("y/"+name, "x/a", true)
			afterReady = append(afterReady, after)
			if service {
				pod = append(pod, ready+after) // from the Pod's creation
			} else {
				pod = append(pod, after) // from Running, which AddPod writes
			}
			if err := cl.DeletePod(ctx, "y/"+name); err != nil {
				b.Fatal(err)
			}
		}
		if err := c.Delete(ctx, clients); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(percentile(policy, 50))/1e6, "policy-p50-ms")
		b.ReportMetric(float64(percentile(policy, 99))/1e6, "policy-p99-ms")
		b.ReportMetric(float64(percentile(pod, 50))/1e6, "pod-p50-ms")
		b.ReportMetric(float64(percentile(pod, 99))/1e6, "pod-p99-ms")
		if service {
			// Real nodes: also from Ready (kubelet's status) to reachable.
			b.ReportMetric(float64(percentile(afterReady, 50))/1e6, "pod-ready-p50-ms")
			b.ReportMetric(float64(percentile(afterReady, 99))/1e6, "pod-ready-p99-ms")
		}
	}
}
