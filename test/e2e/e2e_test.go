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
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/nftguard/nftguard/test/conformance"
	"github.com/nftguard/nftguard/test/localcluster"
)

var (
	cl *localcluster.Cluster
	// binDir holds the controller and agent built for this run.
	binDir string
	keep   = flag.Bool("e2e.keep", false, "leave the cluster running after the suite (remove it with nftguard-dev down)")
	// identityLayout runs the suite with the agents in the identity layout.
	identityLayout = flag.Bool("e2e.identity-layout", false, "run the agents with --identity-layout")

	clusterOnce sync.Once
	clusterErr  error
	stateDir    string
)

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

// agentArgs are the agents' flags: a short resync so that drift and
// restarts converge quickly, a log rate the drop tests do not reach, and
// the layout asked for.
func agentArgs() []string {
	args := []string{"--resync-period=5s", "--audit-rate=1000", "--audit-burst=1000"}
	if *identityLayout {
		args = append(args, "--identity-layout")
	}
	return args
}

// startCluster builds the controller, agent and CNI plugin from this checkout and
// starts the conformance topology with them.
func startCluster() error {
	root := localcluster.RepoRoot()
	var err error
	if binDir, err = os.MkdirTemp("", "nftguard-e2e-bin-"); err != nil {
		return err
	}
	for _, cmd := range []string{"controller", "agent", "nftguard"} {
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
		Topology:   conformance.Topology(),
		Controller: filepath.Join(binDir, "controller"),
		Agent:      filepath.Join(binDir, "agent"),
		// Pods start as a runtime starts them: the nftguard CNI plugin's
		// ADD tells their node's agent, which holds them until programmed.
		CNIPlugin:      filepath.Join(binDir, "nftguard"),
		AgentArgs:      agentArgs(),
		ControllerArgs: []string{fmt.Sprintf("--max-object-bytes=%d", maxObjectBytes)},
		Owned:          !*keep,
		Logf:           func(f string, a ...any) { fmt.Fprintf(os.Stderr, "e2e: "+f+"\n", a...) },
	})
	if err != nil {
		return fmt.Errorf("starting the local cluster: %w", err)
	}
	suite.Cluster = cl
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

// TestRefusalIsNotBlocked: nothing listens on port 82, so every probe of it
// is refused (a reset, ICMP port unreachable, an SCTP ABORT), and a matrix
// expected to be all denied must report every cell wrong: a dead listener
// cannot pass a denied cell.
func TestRefusalIsNotBlocked(t *testing.T) {
	needCluster(t)
	resetPolicies(t)
	for _, p := range []probe{
		{Port: 82, Proto: corev1.ProtocolTCP, Family: localcluster.IPv4}, {Port: 82, Proto: corev1.ProtocolUDP, Family: localcluster.IPv4},
		{Port: 82, Proto: corev1.ProtocolSCTP, Family: localcluster.IPv4}, {Port: 82, Proto: corev1.ProtocolTCP, Family: localcluster.IPv6},
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
				p.Port, p.Proto, p.Family, wrong, len(got), table)
		}
	}
}
