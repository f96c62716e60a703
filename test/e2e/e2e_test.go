// Package e2e runs nftguard end to end on the local cluster: a real
// kube-apiserver and etcd, nodes and pods as network namespaces, the
// controller and one agent per node as processes, and real packets. It
// reproduces the upstream Kubernetes NetworkPolicy e2e scenarios and adds
// DefaultDeny, drop-log and chaos scenarios.
package e2e

import (
	"context"
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
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/compiler"
	"github.com/nftguard/nftguard/internal/explain"
	"github.com/nftguard/nftguard/test/localcluster"
)

var (
	cl *localcluster.Cluster
	// binDir holds the controller and agent built for this run.
	binDir string
	keep   = flag.Bool("e2e.keep", false, "leave the cluster running after the suite (remove it with nftguard-dev down)")

	clusterOnce sync.Once
	clusterErr  error
	stateDir    string
)

// conformanceTopology is the upstream layout (localcluster.ConformanceTopology).
func conformanceTopology() *localcluster.Topology {
	return localcluster.ConformanceTopology(namespaces, podNames)
}

func TestMain(m *testing.M) {
	localcluster.MaybeRunChild()
	os.Exit(run(m))
}

// run runs the tests, then removes the cluster if a test started one.
func run(m *testing.M) int {
	code := m.Run()
	if err := stopCluster(); err != nil {
		fmt.Fprintf(os.Stderr, "removing the local cluster: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// needCluster skips the test without root, and otherwise starts the local
// cluster for the first test that needs it; every test that uses the
// cluster calls it first (TestWithoutRootEveryTestSkips checks that they
// all skip without root).
func needCluster(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the local cluster needs root (network namespaces)")
	}
	clusterOnce.Do(func() { clusterErr = startCluster() })
	if clusterErr != nil {
		t.Fatalf("starting the local cluster: %v", clusterErr)
	}
}

// startCluster builds the controller and agent from this checkout and
// starts the conformance topology with them.
func startCluster() error {
	root := localcluster.RepoRoot()
	var err error
	if binDir, err = os.MkdirTemp("", "nftguard-e2e-bin-"); err != nil {
		return err
	}
	for _, cmd := range []string{"controller", "agent"} {
		b := exec.Command("go", "build", "-o", filepath.Join(binDir, cmd), "./cmd/"+cmd)
		b.Dir, b.Stdout, b.Stderr = root, os.Stderr, os.Stderr
		if err := b.Run(); err != nil {
			return fmt.Errorf("building %s: %w", cmd, err)
		}
	}
	if stateDir, err = os.MkdirTemp("", "nftguard-e2e-"); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cl, err = localcluster.Up(ctx, localcluster.Config{
		// Unique per run: two runs on one machine must not share namespaces.
		Name:       fmt.Sprintf("e2e%d", os.Getpid()%1000000),
		StateDir:   stateDir,
		Topology:   conformanceTopology(),
		Controller: filepath.Join(binDir, "controller"),
		Agent:      filepath.Join(binDir, "agent"),
		// A short resync so that drift and restarts converge quickly.
		AgentArgs: []string{"--resync-period=5s", "--audit-rate=1000", "--audit-burst=1000"},
		Owned:     !*keep,
		Logf:      func(f string, a ...any) { fmt.Fprintf(os.Stderr, "e2e: "+f+"\n", a...) },
	})
	if err != nil {
		return fmt.Errorf("starting the local cluster: %w", err)
	}
	return nil
}

// stopCluster removes the cluster and the run's directories, unless
// -e2e.keep asks to leave the cluster running.
func stopCluster() error {
	if binDir != "" {
		defer os.RemoveAll(binDir)
	}
	if cl == nil {
		return nil
	}
	if *keep {
		fmt.Fprintf(os.Stderr, "e2e: cluster left running; export KUBECONFIG=%s\n", cl.Kubeconfig())
		return nil
	}
	if err := cl.Down(); err != nil {
		return err
	}
	return os.RemoveAll(stateDir)
}

// waitConverged waits until what the agents enforce is exactly what the
// policies in the API compile to: every NodeRuleSet equals the pure
// compiler's output for the current objects and its agent has programmed
// that generation, and every AddressGroup holds the compiled members.
func waitConverged(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	why := ""
	for {
		var err error
		if why, err = notConverged(ctx); err == nil && why == "" {
			return
		}
		if err != nil {
			why = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the cluster did not converge: %s", why)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func notConverged(ctx context.Context) (string, error) {
	c := cl.Client()
	var (
		pods  corev1.PodList
		nss   corev1.NamespaceList
		nodes corev1.NodeList
		nps   networkingv1.NetworkPolicyList
		dds   v1alpha1.DefaultDenyList
		rss   v1alpha1.NodeRuleSetList
		ags   v1alpha1.AddressGroupList
	)
	for _, l := range []client.ObjectList{&pods, &nss, &nodes, &nps, &dds, &rss, &ags} {
		if err := c.List(ctx, l); err != nil {
			return "", err
		}
	}
	snap := &compiler.Snapshot{}
	for i := range pods.Items {
		snap.Pods = append(snap.Pods, &pods.Items[i])
	}
	for i := range nss.Items {
		snap.Namespaces = append(snap.Namespaces, &nss.Items[i])
	}
	for i := range nodes.Items {
		snap.Nodes = append(snap.Nodes, &nodes.Items[i])
	}
	for i := range nps.Items {
		snap.NetworkPolicies = append(snap.NetworkPolicies, &nps.Items[i])
	}
	for i := range dds.Items {
		snap.DefaultDenies = append(snap.DefaultDenies, &dds.Items[i])
	}
	want := compiler.Compile(snap)
	have := map[string]*v1alpha1.NodeRuleSet{}
	for i := range rss.Items {
		have[rss.Items[i].Name] = &rss.Items[i]
	}
	for node, spec := range want.NodeRuleSets {
		rs := have[node]
		if rs == nil {
			return "no NodeRuleSet for " + node, nil
		}
		if !equality.Semantic.DeepEqual(rs.Spec, spec) {
			return "NodeRuleSet " + node + " is not the compiled one yet", nil
		}
		cond := meta.FindStatusCondition(rs.Status.Conditions, v1alpha1.ConditionProgrammed)
		if cond == nil || cond.Status != metav1.ConditionTrue || rs.Status.ObservedGeneration != rs.Generation {
			return fmt.Sprintf("NodeRuleSet %s generation %d is not programmed yet", node, rs.Generation), nil
		}
	}
	groups := map[string]v1alpha1.AddressGroupSpec{}
	for _, ag := range ags.Items {
		groups[ag.Name] = ag.Spec
	}
	for name, spec := range want.AddressGroups {
		got, ok := groups[name]
		if !ok || !equality.Semantic.DeepEqual(got, spec) {
			return "AddressGroup " + name + " is not the compiled one yet", nil
		}
	}
	return "", nil
}

// create creates objects as a user would (kubectl apply).
func create(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := cl.Client().Create(context.Background(), o); err != nil {
			t.Fatalf("creating %T %s: %v", o, o.GetName(), err)
		}
	}
}

// resetPolicies deletes every NetworkPolicy and DefaultDeny and waits until
// the agents enforce nothing.
func resetPolicies(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	c := cl.Client()
	var nps networkingv1.NetworkPolicyList
	if err := c.List(ctx, &nps); err != nil {
		t.Fatal(err)
	}
	for i := range nps.Items {
		if err := c.Delete(ctx, &nps.Items[i]); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	var dds v1alpha1.DefaultDenyList
	if err := c.List(ctx, &dds); err != nil {
		t.Fatal(err)
	}
	for i := range dds.Items {
		if err := c.Delete(ctx, &dds.Items[i]); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	waitConverged(t)
}

// probe describes one matrix: a port and protocol over one IP family.
type probe struct {
	port   int32
	proto  corev1.Protocol
	family localcluster.Family
}

var (
	tcp80   = probe{80, corev1.ProtocolTCP, localcluster.IPv4}
	tcp81   = probe{81, corev1.ProtocolTCP, localcluster.IPv4}
	udp80   = probe{80, corev1.ProtocolUDP, localcluster.IPv4}
	udp81   = probe{81, corev1.ProtocolUDP, localcluster.IPv4}
	sctp80  = probe{80, corev1.ProtocolSCTP, localcluster.IPv4}
	sctp81  = probe{81, corev1.ProtocolSCTP, localcluster.IPv4}
	tcp80v6 = probe{80, corev1.ProtocolTCP, localcluster.IPv6}
)

// observe runs the full 9x9 matrix for one probe and returns each cell's
// outcome.
func observe(t *testing.T, p probe) (map[[2]string]localcluster.Outcome, *localcluster.Matrix) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m := cl.Matrix(ctx, localcluster.MatrixRequest{
		Port: intstr.FromInt32(p.port), Protocol: p.proto, Family: p.family,
		From: allPods(), To: allPods(), Parallel: 12,
	})
	got := map[[2]string]localcluster.Outcome{}
	for i, f := range m.From {
		for j, to := range m.To {
			r := m.Results[i][j]
			if r.Err != nil {
				t.Fatalf("probe %s: %v", r, r.Err)
			}
			got[[2]string{f, to}] = r.Outcome
		}
	}
	return got, m
}

// explainInput reads what `kubectl nftguard explain` reads: the live
// NodeRuleSets and AddressGroups the agents program, and the objects its
// hints look at.
func explainInput(t *testing.T) explain.Input {
	t.Helper()
	ctx := context.Background()
	c := cl.Client()
	var (
		rss  v1alpha1.NodeRuleSetList
		ags  v1alpha1.AddressGroupList
		pods corev1.PodList
		nss  corev1.NamespaceList
		nps  networkingv1.NetworkPolicyList
		dds  v1alpha1.DefaultDenyList
	)
	for _, l := range []client.ObjectList{&rss, &ags, &pods, &nss, &nps, &dds} {
		if err := c.List(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	in := explain.Input{RuleSets: rss.Items, Groups: map[string]v1alpha1.AddressGroupSpec{}, Pods: pods.Items,
		Namespaces: nss.Items, NetworkPolicies: nps.Items, DefaultDenies: dds.Items}
	for _, ag := range ags.Items {
		in.Groups[ag.Name] = ag.Spec
	}
	return in
}

// checkExplain asserts that explain's verdict, computed from the live rule
// sets, agrees with the probed reachability of every cell.
func checkExplain(t *testing.T, p probe, got map[[2]string]localcluster.Outcome) {
	t.Helper()
	in := explainInput(t)
	var wrong []string
	for cell, outcome := range got {
		if cell[0] == cell[1] {
			continue
		}
		// A refusal came from the target: the policies let the packet
		// through (the model check reports the cell on its own).
		reachable := outcome != localcluster.Blocked
		fns, fpod, _ := strings.Cut(cell[0], "/")
		tns, tpod, _ := strings.Cut(cell[1], "/")
		v, err := explain.Explain(in, explain.Query{FromNamespace: fns, FromPod: fpod, ToNamespace: tns, ToPod: tpod,
			Port: p.port, Protocol: v1alpha1.Protocol(p.proto)})
		if err != nil {
			t.Fatalf("explain %s -> %s: %v", cell[0], cell[1], err)
		}
		if v.Allowed != reachable {
			wrong = append(wrong, fmt.Sprintf("%s -> %s: explain says allowed=%v (egress: %s; ingress: %s), the probe says reachable=%v",
				cell[0], cell[1], v.Allowed, v.Egress.Reason, v.Ingress.Reason, reachable))
		}
	}
	if len(wrong) > 0 {
		t.Errorf("explain disagrees with the probes on %d cells of %d/%s:\n%s", len(wrong), p.port, p.proto, strings.Join(wrong, "\n"))
	}
}

// expect checks the full matrix for each probe against the model, and
// explain's verdict for every cell against the probes.
func expect(t *testing.T, r *Reachability, probes ...probe) {
	t.Helper()
	expectMatrix(t, r, true, probes...)
}

// expectMatrix is expect, with explain's check optional (it reads the API,
// which a chaos test may have stopped).
func expectMatrix(t *testing.T, r *Reachability, withExplain bool, probes ...probe) {
	t.Helper()
	for _, p := range probes {
		got, m := observe(t, p)
		if withExplain && p.family == localcluster.IPv4 {
			checkExplain(t, p, got)
		}
		table, wrong := r.Table(got)
		if wrong > 0 {
			var details []string
			for i, f := range m.From {
				for j, to := range m.To {
					if !agrees(r.Expected(f, to), got[[2]string{f, to}]) {
						details = append(details, m.Results[i][j].String())
					}
				}
			}
			t.Errorf("port %d/%s %s: %d cells differ from the expectation (* marks them; . connected, X blocked, R refused):\n%s%s",
				p.port, p.proto, p.family, wrong, table, strings.Join(details, "\n"))
		}
	}
}

// TestRefusalIsNotBlocked: nothing listens on port 82, so every probe of it
// is refused (a reset, ICMP port unreachable, an SCTP ABORT), and a matrix
// expected to be all denied must report every cell wrong: a dead listener
// cannot pass a denied cell.
func TestRefusalIsNotBlocked(t *testing.T) {
	needCluster(t)
	resetPolicies(t)
	for _, p := range []probe{
		{82, corev1.ProtocolTCP, localcluster.IPv4}, {82, corev1.ProtocolUDP, localcluster.IPv4},
		{82, corev1.ProtocolSCTP, localcluster.IPv4}, {82, corev1.ProtocolTCP, localcluster.IPv6},
	} {
		got, m := observe(t, p)
		for cell, o := range got {
			if o != localcluster.Refused {
				r, _ := m.Result(cell[0], cell[1])
				t.Errorf("%s: want refused, nothing listens on port 82", r)
			}
		}
		table, wrong := NewReachability(false).Table(got)
		if wrong != len(got) {
			t.Errorf("port %d/%s %s: %d of %d refused cells count as wrong against an all-denied expectation:\n%s",
				p.port, p.proto, p.family, wrong, len(got), table)
		}
	}
}
