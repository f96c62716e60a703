package bench

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	netv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/test/localcluster"
)

var readyTrials = flag.Int("bench.ready.trials", 40, "new pods of each kind in the ADD-to-ready measurement")

// readyTopology is the peer x/a on node-1; new pods start on node-2 in
// namespace iso (a policy isolates their egress and allows x/a) or open
// (no policy).
const readyTopology = `
nodes: [{name: node-1}, {name: node-2}]
namespaces: [{name: x, labels: {ns: x}}, {name: iso, labels: {ns: iso}}, {name: open, labels: {ns: open}}]
pods:
- {namespace: x, name: a, node: node-1, labels: {pod: a}, ports: [{name: http, port: 80}]}
`

// BenchmarkAddToReady measures, on the local cluster with every pod started
// through the nftguard CNI plugin (real API server, controller, agents and
// plugin binary; real packets across two nodes), the time from the start
// of a new pod's ADD until its first packet reaches its allowed peer: the
// pod is not ready (its traffic is dropped) until then. The pod sends a
// TCP SYN to x/a every millisecond from the moment its interface has its
// address, which bounds the resolution; the Pod object exists before the
// ADD, as with kubelet, so the controller may list it in the meantime.
// Isolated pods (a policy selects them) and pods no policy selects are
// measured in alternation.
func BenchmarkAddToReady(b *testing.B) {
	needRoot(b)
	ctx := context.Background()
	bin := b.TempDir()
	buildCommands(b, bin, "controller", "agent", "nftguard")
	topo, err := localcluster.ParseTopology([]byte(readyTopology))
	if err != nil {
		b.Fatal(err)
	}
	cl, err := localcluster.Up(ctx, localcluster.Config{
		Name: fmt.Sprintf("benchrd%d", os.Getpid()%100000), StateDir: filepath.Join(b.TempDir(), "cluster"), Topology: topo,
		Controller: filepath.Join(bin, "controller"), Agent: filepath.Join(bin, "agent"), CNIPlugin: filepath.Join(bin, "nftguard"),
		Owned: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Down()
	np := &netv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "iso", Name: "egress-to-xa"},
		Spec: netv1.NetworkPolicySpec{
			PolicyTypes: []netv1.PolicyType{netv1.PolicyTypeEgress},
			Egress: []netv1.NetworkPolicyEgressRule{{To: []netv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"ns": "x"}},
				PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}},
			}}}},
		},
	}
	if err := cl.Client().Create(ctx, np); err != nil {
		b.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := cl.WaitEnforced(wctx); err != nil {
		b.Fatal(err)
	}
	peer, ok := cl.Pod("x/a")
	if !ok {
		b.Fatal("no pod x/a")
	}
	target := []localcluster.FloodTarget{{Addr: netip.AddrPortFrom(peer.IPv4, 80), Protocol: corev1.ProtocolTCP}}

	// toReady starts one pod and returns the time from its ADD to its first
	// packet at x/a.
	toReady := func(ns string, i int) time.Duration {
		var (
			flood   *localcluster.Flood
			capture *localcluster.Capture
			added   time.Time
		)
		key := fmt.Sprintf("%s/new-%d", ns, i)
		_, err := cl.StartPod(ctx, localcluster.PodSpec{Namespace: ns, Name: fmt.Sprintf("new-%d", i), Node: "node-2",
			Labels: map[string]string{"pod": "new"}},
			localcluster.StartOptions{OnAddresses: func(p localcluster.Pod) error {
				var err error
				if capture, err = cl.CaptureFrom("x/a", p.IPv4); err != nil {
					return err
				}
				flood = cl.StartFlood(p, target, time.Millisecond)
				added = time.Now()
				return nil
			}})
		defer func() {
			if flood != nil {
				if err := flood.Stop(); err != nil {
					b.Errorf("flood from %s: %v", key, err)
				}
			}
			if capture != nil {
				capture.Close()
			}
			if err := cl.DeletePod(ctx, key); err != nil {
				b.Fatal(err)
			}
		}()
		if err != nil {
			b.Fatal(err)
		}
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if n, first := capture.Seen(); n > 0 {
				return first.Sub(added)
			}
		}
		b.Fatalf("%s never reached x/a", key)
		return 0
	}

	for b.Loop() {
		var isolated, open []time.Duration
		for i := 0; i < *readyTrials; i++ {
			isolated = append(isolated, toReady("iso", i))
			open = append(open, toReady("open", i))
		}
		b.ReportMetric(float64(percentile(isolated, 50))/1e6, "isolated-p50-ms")
		b.ReportMetric(float64(percentile(isolated, 99))/1e6, "isolated-p99-ms")
		b.ReportMetric(float64(percentile(open, 50))/1e6, "open-p50-ms")
		b.ReportMetric(float64(percentile(open, 99))/1e6, "open-p99-ms")
	}
}
