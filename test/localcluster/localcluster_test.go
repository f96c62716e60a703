package localcluster_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftguard/nftguard/test/localcluster"
)

// The pod servers and API forwarders of the clusters these tests start run
// as this test binary (Config.Helper defaults to the running executable).
func TestMain(m *testing.M) {
	localcluster.MaybeRunChild()
	os.Exit(m.Run())
}

// testTopology: namespaces x and y, pods x/a and x/b on node-1 and y/c on
// node-2, each serving TCP 80, UDP 53 and SCTP 9000.
const testTopology = `
nodes: [{name: node-1}, {name: node-2}]
namespaces:
- {name: x, labels: {team: x}}
- {name: "y", labels: {team: "y"}}
pods:
- {namespace: x, name: a, node: node-1, labels: {app: a}, ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}, {name: assoc, port: 9000, protocol: SCTP}]}
- {namespace: x, name: b, node: node-1, labels: {app: b}, ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}, {name: assoc, port: 9000, protocol: SCTP}]}
- {namespace: "y", name: c, node: node-2, labels: {app: c}, ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}, {name: assoc, port: 9000, protocol: SCTP}]}
`

// binaries builds the controller and the agent from this checkout into a
// temporary directory (cached builds take a few seconds), or takes them
// from $NFTGUARD_BIN_DIR.
func binaries(t *testing.T) (controller, agent string) {
	t.Helper()
	if dir := os.Getenv("NFTGUARD_BIN_DIR"); dir != "" {
		controller, agent = filepath.Join(dir, "controller"), filepath.Join(dir, "agent")
		for _, b := range []string{controller, agent} {
			if _, err := os.Stat(b); err != nil {
				t.Fatalf("NFTGUARD_BIN_DIR: %v", err)
			}
		}
		return controller, agent
	}
	root := localcluster.RepoRoot()
	out := t.TempDir()
	build := func(pkg string) string {
		bin := filepath.Join(out, filepath.Base(pkg))
		cmd := exec.Command("go", "build", "-o", bin, "./"+pkg)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build ./%s: %v\n%s", pkg, err, b)
		}
		return bin
	}
	return build("cmd/controller"), build("cmd/agent")
}

func TestLocalCluster(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the local cluster needs root (network namespaces)")
	}
	root := localcluster.RepoRoot()
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(root, "bin", b)); err != nil {
			t.Fatalf("bin/%s not found: run `make test-binaries` first", b)
		}
	}
	stateRoot := filepath.Join(os.TempDir(), "nftguard-localcluster")
	if err := localcluster.SweepStale(stateRoot); err != nil {
		t.Logf("Sweeping clusters of crashed test runs: %v", err)
	}
	controller, agent := binaries(t)
	topo, err := localcluster.ParseTopology([]byte(testTopology))
	if err != nil {
		t.Fatal(err)
	}
	suffix := make([]byte, 3)
	_, _ = rand.Read(suffix)
	name := "t" + hex.EncodeToString(suffix)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := localcluster.Up(ctx, localcluster.Config{
		Name: name, StateDir: filepath.Join(stateRoot, name), Topology: topo,
		Controller: controller, Agent: agent, Owned: true, Logf: t.Logf,
	})
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	downDone := false
	t.Cleanup(func() {
		if !downDone {
			if t.Failed() {
				dumpLogs(t, c)
			}
			if err := c.Down(); err != nil {
				t.Errorf("Down: %v", err)
			}
		}
	})
	t.Logf("Cluster up in %s", time.Since(start).Round(time.Millisecond))

	t.Run("objects", func(t *testing.T) { checkObjects(t, ctx, c) })
	t.Run("reachability", func(t *testing.T) { checkReachability(t, ctx, c) })
	t.Run("pod churn", func(t *testing.T) { checkChurn(t, ctx, c) })
	t.Run("dead listener", func(t *testing.T) { checkDeadListener(t, ctx, c) })
	t.Run("enforcement", func(t *testing.T) { checkEnforcement(t, ctx, c) })
	if t.Failed() {
		dumpLogs(t, c)
	}

	// Down removes every process and network namespace it recorded.
	st := c.State()
	downDone = true
	if err := c.Down(); err != nil {
		t.Fatalf("Down: %v", err)
	}
	for _, p := range st.Processes {
		if p.Alive() {
			t.Errorf("%s %s (pid %d) still runs after Down", p.Role, p.Name, p.PID)
		}
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "ngd-"+name+"-") {
			t.Errorf("network namespace %s left after Down", e.Name())
		}
	}
	if _, err := os.Stat(st.Dir); !os.IsNotExist(err) {
		t.Errorf("state directory %s left after Down (%v)", st.Dir, err)
	}
}

func checkObjects(t *testing.T, ctx context.Context, c *localcluster.Cluster) {
	cs := c.Clientset()
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) != 2 {
		t.Fatalf("%d nodes, want 2", len(nodes.Items))
	}
	for _, n := range nodes.Items {
		ready := false
		for _, cond := range n.Status.Conditions {
			ready = ready || (cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue)
		}
		internal := 0
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				internal++
			}
		}
		if !ready || internal != 2 || len(n.Spec.PodCIDRs) != 2 {
			t.Errorf("node %s: ready %v, %d internal IPs, pod CIDRs %v; want ready, 2, dual-stack", n.Name, ready, internal, n.Spec.PodCIDRs)
		}
	}
	for _, want := range c.Pods() {
		pod, err := cs.CoreV1().Pods(want.Namespace).Get(ctx, want.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ready := false
		for _, cond := range pod.Status.Conditions {
			ready = ready || (cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue)
		}
		var ips []string
		for _, ip := range pod.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		wantIPs := []string{want.IPv4.String(), want.IPv6.String()}
		if pod.Status.Phase != corev1.PodRunning || !ready || pod.Spec.NodeName != want.Node || fmt.Sprint(ips) != fmt.Sprint(wantIPs) {
			t.Errorf("pod %s: phase %s, ready %v, node %s, IPs %v; want Running, ready, %s, %v",
				want.Key(), pod.Status.Phase, ready, pod.Spec.NodeName, ips, want.Node, wantIPs)
		}
		if len(pod.Spec.Containers) != 1 || len(pod.Spec.Containers[0].Ports) != 3 {
			t.Errorf("pod %s: containers %+v, want one with 3 named ports", want.Key(), pod.Spec.Containers)
		}
	}
	ns, err := cs.CoreV1().Namespaces().Get(ctx, "x", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ns.Labels["team"] != "x" {
		t.Errorf("namespace x labels %v, want team=x", ns.Labels)
	}
}

// checkReachability: with no policy every pod reaches every pod, on the
// same node and across the underlay, over TCP, UDP and SCTP, IPv4 and IPv6;
// a port nothing serves is refused.
func checkReachability(t *testing.T, ctx context.Context, c *localcluster.Cluster) {
	for _, fam := range []localcluster.Family{localcluster.IPv4, localcluster.IPv6} {
		for _, port := range []string{"http", "dns", "assoc"} {
			m := c.Matrix(ctx, localcluster.MatrixRequest{Port: intstr.FromString(port), Family: fam})
			if conn, _, _, _ := m.Counts(); conn != 9 {
				t.Errorf("%s port %s: %d of 9 probes connected:\n%s", fam, port, conn, m)
			}
		}
	}
	for _, tc := range []struct {
		to    string
		port  int32
		proto corev1.Protocol
	}{{"x/b", 81, corev1.ProtocolTCP}, {"y/c", 54, corev1.ProtocolUDP}, {"y/c", 9001, corev1.ProtocolSCTP}} {
		r := c.ProbeWith(ctx, localcluster.ProbeRequest{From: "x/a", To: tc.to, Port: intstr.FromInt32(tc.port), Protocol: tc.proto})
		if r.Err != nil || r.Outcome != localcluster.Refused {
			t.Errorf("%s: want refused", r)
		}
	}
}

// checkChurn: a pod added to the running cluster is served and reachable;
// once deleted, its object, namespace and server are gone, and a new pod on
// the node reuses its address.
func checkChurn(t *testing.T, ctx context.Context, c *localcluster.Cluster) {
	spec := localcluster.PodSpec{Namespace: "x", Name: "d", Node: "node-2", Labels: map[string]string{"app": "d"},
		Ports: []localcluster.PortSpec{{Name: "http", Port: 80}}}
	d, err := c.AddPod(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := c.Probe(ctx, "x/a", "x/d", intstr.FromString("http"), ""); !ok || err != nil {
		t.Errorf("x/a -> x/d (added): reachable %v, %v", ok, err)
	}
	if err := c.DeletePod(ctx, "x/d"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Clientset().CoreV1().Pods("x").Get(ctx, "d", metav1.GetOptions{}); err == nil {
		t.Error("pod x/d still exists after DeletePod")
	}
	if _, err := os.Stat("/run/netns/" + d.NetNS); !os.IsNotExist(err) {
		t.Errorf("network namespace %s left after DeletePod (%v)", d.NetNS, err)
	}
	spec.Name = "e"
	e, err := c.AddPod(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if e.IPv4 != d.IPv4 || e.IPv6 != d.IPv6 {
		t.Errorf("x/e got %s %s, want x/d's freed %s %s", e.IPv4, e.IPv6, d.IPv4, d.IPv6)
	}
	if ok, err := c.Probe(ctx, "x/a", "x/e", intstr.FromInt32(80), corev1.ProtocolTCP); !ok || err != nil {
		t.Errorf("x/a -> x/e (address reused): reachable %v, %v", ok, err)
	}
	if err := c.DeletePod(ctx, "x/e"); err != nil {
		t.Fatal(err)
	}
}

// checkDeadListener: a pod whose server is gone answers every probe with a
// refusal (a TCP reset, ICMP port unreachable for UDP, and for SCTP, which
// the kernel lacks, ICMP protocol unreachable or ICMPv6 unrecognized next
// header), never with silence: a dead listener cannot pass for a denied
// connection.
func checkDeadListener(t *testing.T, ctx context.Context, c *localcluster.Cluster) {
	spec := localcluster.PodSpec{Namespace: "x", Name: "dead", Node: "node-2", Labels: map[string]string{"app": "dead"},
		Ports: []localcluster.PortSpec{{Name: "http", Port: 80}, {Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}, {Name: "assoc", Port: 9000, Protocol: corev1.ProtocolSCTP}}}
	if _, err := c.AddPod(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.DeletePod(ctx, "x/dead"); err != nil {
			t.Errorf("removing x/dead: %v", err)
		}
	})
	probeAll := func() []localcluster.ProbeResult {
		var out []localcluster.ProbeResult
		for _, fam := range []localcluster.Family{localcluster.IPv4, localcluster.IPv6} {
			for _, port := range []string{"http", "dns", "assoc"} {
				out = append(out, c.ProbeWith(ctx, localcluster.ProbeRequest{From: "x/a", To: "x/dead", Port: intstr.FromString(port), Family: fam}))
			}
		}
		return out
	}
	for _, r := range probeAll() {
		if !r.Reachable() {
			t.Fatalf("%s: want connected while the server runs", r)
		}
	}
	if _, err := c.Kill(localcluster.RolePodServer, "x/dead", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for _, r := range probeAll() {
		if r.Err != nil || r.Outcome != localcluster.Refused || r.Blocked() {
			t.Errorf("%s: want refused, not blocked, with nothing listening", r)
		}
	}
}

// checkEnforcement: a deny-all ingress NetworkPolicy in y blocks what
// reached y/c, keeps x/a -> x/b open, and the agent logs the drop.
func checkEnforcement(t *testing.T, ctx context.Context, c *localcluster.Cluster) {
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "deny-all"},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
	if err := c.Client().Create(ctx, np); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := c.WaitEnforced(wctx); err != nil {
		t.Fatal(err)
	}
	mark := c.MarkAuditLogs()
	var reqs []localcluster.ProbeRequest
	for _, fam := range []localcluster.Family{localcluster.IPv4, localcluster.IPv6} {
		for _, port := range []string{"http", "dns", "assoc"} {
			for _, to := range []string{"y/c", "x/b"} {
				reqs = append(reqs, localcluster.ProbeRequest{From: "x/a", To: to, Port: intstr.FromString(port), Family: fam})
			}
		}
	}
	results := make([]localcluster.ProbeResult, len(reqs))
	var wg sync.WaitGroup
	for i, req := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.ProbeWith(ctx, req)
		}()
	}
	wg.Wait()
	for _, r := range results {
		switch r.To {
		case "y/c":
			if r.Err != nil || r.Outcome != localcluster.Blocked {
				t.Errorf("%s: want blocked by y/deny-all", r)
			}
		default:
			if !r.Reachable() {
				t.Errorf("%s: want connected (x is not isolated)", r)
			}
		}
	}
	a, _ := c.Pod("x/a")
	cc, _ := c.Pod("y/c")
	lctx, lcancel := context.WithTimeout(ctx, 10*time.Second)
	defer lcancel()
	lines := c.WaitAuditLines(lctx, mark, localcluster.MatchFlow(a.IPv4, cc.IPv4, 80, corev1.ProtocolTCP))
	if len(lines) == 0 {
		t.Errorf("no drop-log line for x/a -> y/c:80/TCP; logs since the probes:\n%v", c.AuditLinesSince(mark, nil))
	} else if !strings.Contains(lines[0].Line, "NetworkPolicy/y/deny-all") || lines[0].Node != cc.Node {
		t.Errorf("drop-log line on %s: %s; want node %s naming NetworkPolicy/y/deny-all", lines[0].Node, lines[0].Line, cc.Node)
	}
}

func dumpLogs(t *testing.T, c *localcluster.Cluster) {
	t.Helper()
	for _, p := range c.Processes() {
		if p.Role == "podserver" {
			continue
		}
		b, err := os.ReadFile(p.Log)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		t.Logf("--- %s %s (%s):\n%s", p.Role, p.Name, p.Log, strings.Join(lines, "\n"))
	}
}
