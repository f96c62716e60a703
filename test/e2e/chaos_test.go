package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/render"
	"github.com/nftguard/nftguard/test/localcluster"
)

// echoServer accepts connections in a pod and echoes lines back.
func echoServer(t *testing.T, pod string, port int) {
	t.Helper()
	l, err := cl.Listen(pod, "tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				r := bufio.NewReader(conn)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := conn.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// traffic keeps an established connection echoing and a blocked flow
// probed until stopped, counting failures of the one and leaks of the other.
type traffic struct {
	echoFailures, echoes atomic.Int64
	leaks, blockedProbes atomic.Int64
	stop                 chan struct{}
	stopOnce             sync.Once
	wg                   sync.WaitGroup
}

// halt stops the traffic and waits for it. A test that ends early halts it
// in its cleanup, so that no probe reports after the test has finished.
func (tr *traffic) halt() {
	tr.stopOnce.Do(func() { close(tr.stop) })
	tr.wg.Wait()
}

func startTraffic(t *testing.T, conn net.Conn, blockedFrom, blockedTo string) *traffic {
	tr := &traffic{stop: make(chan struct{})}
	t.Cleanup(tr.halt)
	tr.wg.Add(2)
	go func() {
		defer tr.wg.Done()
		r := bufio.NewReader(conn)
		for i := 0; ; i++ {
			select {
			case <-tr.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
			msg := fmt.Sprintf("ping %d\n", i)
			if _, err := conn.Write([]byte(msg)); err != nil {
				tr.echoFailures.Add(1)
				continue
			}
			if got, err := r.ReadString('\n'); err != nil || got != msg {
				tr.echoFailures.Add(1)
				continue
			}
			tr.echoes.Add(1)
		}
	}()
	go func() {
		defer tr.wg.Done()
		for {
			select {
			case <-tr.stop:
				return
			default:
			}
			tr.blockedProbes.Add(1)
			// Not probeOne: its t.Fatalf must not run off the test's goroutine.
			r := cl.ProbeWith(context.Background(), localcluster.ProbeRequest{
				From: blockedFrom, To: blockedTo, Port: intstr.FromInt32(tcp80.Port), Protocol: tcp80.Proto,
			})
			switch {
			case r.Err != nil || r.Outcome == localcluster.Refused:
				t.Errorf("probe %s: want blocked", r)
			case r.Reachable():
				tr.leaks.Add(1)
			}
		}
	}()
	return tr
}

func (tr *traffic) finish(t *testing.T) {
	t.Helper()
	tr.halt()
	t.Logf("established connection: %d echoes, %d failures; blocked flow: %d probes, %d leaks",
		tr.echoes.Load(), tr.echoFailures.Load(), tr.blockedProbes.Load(), tr.leaks.Load())
	if tr.echoFailures.Load() > 0 {
		t.Errorf("the established allowed connection failed %d times", tr.echoFailures.Load())
	}
	if tr.leaks.Load() > 0 {
		t.Errorf("a blocked flow got through %d times", tr.leaks.Load())
	}
	if tr.echoes.Load() == 0 || tr.blockedProbes.Load() == 0 {
		t.Error("no traffic was exchanged")
	}
}

// isolateXA isolates x/a's ingress, allowing only x/b (on any port).
func isolateXA(t *testing.T) {
	resetPolicies(t)
	create(t, allowIngress(policy("x", "a-from-b", labels("pod", "a")), nil, podPeer(labels("pod", "b"))))
	waitConverged(t)
}

func dialEcho(t *testing.T, from, to string, port int) net.Conn {
	t.Helper()
	dst, _ := cl.Pod(to)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := cl.Dial(ctx, from, "tcp", netip.AddrPortFrom(dst.IPv4, uint16(port)).String())
	if err != nil {
		t.Fatalf("dialling %s from %s: %v", to, from, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestChaosAgentKilled(t *testing.T) {
	needCluster(t)
	isolateXA(t)
	echoServer(t, "x/a", 9000)
	conn := dialEcho(t, "x/b", "x/a", 9000)
	node := mustPod(t, "x/a").Node
	tr := startTraffic(t, conn, "y/a", "x/a")
	time.Sleep(500 * time.Millisecond)

	ref, err := cl.Kill(localcluster.RoleAgent, node, syscall.SIGKILL)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // no agent: the table stays in force
	if err := cl.Restart(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	waitConverged(t)
	time.Sleep(time.Second)
	tr.finish(t)
	if !probeOne(t, "x/b", "x/a", tcp80) {
		t.Error("x/b cannot open new connections to x/a after the restart")
	}
}

func TestChaosControllerRestart(t *testing.T) {
	needCluster(t)
	isolateXA(t)
	ref, err := cl.Kill(localcluster.RoleController, "", syscall.SIGKILL)
	if err != nil {
		t.Fatal(err)
	}
	// Enforcement does not depend on the controller.
	expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("x/b", "x/a", true), tcp80)
	// A change made while it is down is enforced once it is back.
	create(t, allowIngress(policy("x", "a-from-c", labels("pod", "a")), nil, podPeer(labels("pod", "c"))))
	if err := cl.Restart(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	waitConverged(t)
	expect(t, NewReachability(true).Set("*/*", "x/a", false).Set("x/b", "x/a", true).Set("x/c", "x/a", true), tcp80)
}

func TestChaosAPIServerOutage(t *testing.T) {
	needCluster(t)
	isolateXA(t)
	echoServer(t, "x/a", 9001)
	conn := dialEcho(t, "x/b", "x/a", 9001)
	tr := startTraffic(t, conn, "z/b", "x/a")
	ref, err := cl.Kill(localcluster.RoleAPIServer, "", syscall.SIGKILL)
	if err != nil {
		t.Fatal(err)
	}
	outage := time.Now()
	restarted := false
	restart := func() {
		if !restarted {
			restarted = true
			if err := cl.Restart(context.Background(), ref); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The rest of the suite needs the API server, whatever happens here.
	t.Cleanup(restart)
	// Enforcement is unchanged while the API server is away.
	expectMatrix(t, NewReachability(true).Set("*/*", "x/a", false).Set("x/b", "x/a", true), false, tcp80)
	if d := 30*time.Second - time.Since(outage); d > 0 {
		time.Sleep(d)
	}
	restart()
	back := time.Now()
	t.Logf("API server was down for %s", back.Sub(outage).Round(time.Second))
	tr.finish(t)
	// A change made as soon as the server is ready again (and the traffic
	// checked) is enforced within 5 s of it: the controller and the
	// agents watch again at once, without client-go's backoff
	// (internal/apiretry).
	changed := time.Now()
	if err := cl.Client().Delete(context.Background(), &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a-from-b"}}); err != nil {
		t.Fatal(err)
	}
	enforced := suite.WaitChain(t, mustPod(t, "x/a"), render.PodChainName("in", "x", "a"), false)
	t.Logf("a policy change made %s after the API server was back was enforced %s later", changed.Sub(back).Round(time.Millisecond), enforced.Sub(changed).Round(time.Millisecond))
	if d := enforced.Sub(changed); d > 5*time.Second {
		t.Errorf("a policy change made when the API server was back took %s to be enforced (want at most 5s)", d.Round(time.Millisecond))
	}
	waitConverged(t)
	expect(t, NewReachability(true), tcp80)
}

// nodeNetNS opens a node's network namespace.
func nodeNetNS(t *testing.T, name string) netns.NsHandle {
	t.Helper()
	node, ok := cl.Node(name)
	if !ok {
		t.Fatalf("no node %s", name)
	}
	h, err := netns.GetFromPath(localcluster.NetNSPath(node.NetNS))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func mustPod(t *testing.T, key string) localcluster.Pod {
	t.Helper()
	p, ok := cl.Pod(key)
	if !ok {
		t.Fatalf("no pod %s", key)
	}
	return p
}

// TestPodLifecycle: a new pod becomes reachable from its allowed peers on
// the other node (and the time it takes is reported), and a deleted pod's
// address stops being allowed everywhere, even when a new pod reuses it.
func TestPodLifecycle(t *testing.T) {
	needCluster(t)
	ctx := context.Background()
	resetPolicies(t)
	create(t,
		allowIngress(policy("x", "a-from-clients", labels("pod", "a")), nil, networkingv1.NetworkPolicyPeer{
			NamespaceSelector: &metav1.LabelSelector{}, PodSelector: &metav1.LabelSelector{MatchLabels: labels("role", "client")},
		}),
		&v1alpha1.DefaultDeny{
			ObjectMeta: metav1.ObjectMeta{Name: "y-egress"},
			Spec: v1alpha1.DefaultDenySpec{
				NamespaceSelector: v1alpha1.LabelSelector{MatchLabels: v1alpha1.MatchLabels(labels("ns", "y"))},
				PolicyTypes:       []v1alpha1.PolicyType{v1alpha1.PolicyTypeEgress},
				AllowedEgress: []v1alpha1.EgressRule{{To: []v1alpha1.NetworkPolicyPeer{{
					NamespaceSelector: &v1alpha1.LabelSelector{MatchLabels: v1alpha1.MatchLabels(labels("ns", "x"))},
				}}}},
			},
		},
	)
	waitConverged(t)
	xa := mustPod(t, "x/a")
	other := "node-1"
	if xa.Node == "node-1" {
		other = "node-2"
	}
	ports := mustPod(t, "y/a").Ports

	// Pod-ready to reachable, from the pod's own side: the rule sets of both
	// nodes (the client's egress, x/a's ingress) must include it.
	// Remove the pods this test adds even when it fails, so later tests see
	// the topology they expect.
	t.Cleanup(func() {
		for _, k := range []string{"y/client-0", "y/client-1", "y/client-2", "y/stranger"} {
			if _, ok := cl.Pod(k); ok {
				if err := cl.DeletePod(ctx, k); err != nil {
					t.Errorf("removing %s: %v", k, err)
				}
			}
		}
	})
	var durations []time.Duration
	for i := 0; i < 3; i++ {
		key := fmt.Sprintf("y/client-%d", i)
		start := time.Now()
		if _, err := cl.AddPod(ctx, localcluster.PodSpec{Namespace: "y", Name: key[2:], Node: other, Labels: labels("role", "client"), Ports: ports}); err != nil {
			t.Fatal(err)
		}
		ready := time.Now()
		deadline := ready.Add(30 * time.Second)
		// Short probes: the figure's resolution is the probe timeout.
		for {
			r := cl.ProbeWith(ctx, localcluster.ProbeRequest{From: key, To: "x/a", Port: intstr.FromInt32(80),
				Protocol: tcp80.Proto, Timeout: 50 * time.Millisecond})
			if r.Err != nil {
				t.Fatalf("probe %s", r)
			}
			if r.Reachable() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never reached x/a; the last probe: %s", key, r)
			}
		}
		durations = append(durations, time.Since(ready))
		t.Logf("%s on %s reached x/a on %s %s after it was Running (%s after creation began)",
			key, other, xa.Node, time.Since(ready).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	}
	t.Logf("new pod to reachable across nodes: %v", durations)

	// Deleting a client frees its address; a pod that reuses it is no client.
	gone := mustPod(t, "y/client-0")
	if err := cl.DeletePod(ctx, "y/client-0"); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.AddPod(ctx, localcluster.PodSpec{Namespace: "y", Name: "stranger", Node: other, Ports: ports}); err != nil {
		t.Fatal(err)
	}
	stranger := mustPod(t, "y/stranger")
	if stranger.IPv4 != gone.IPv4 {
		t.Fatalf("the new pod got %s, not the deleted pod's %s: the reuse case is not exercised", stranger.IPv4, gone.IPv4)
	}
	waitConverged(t)
	if probeOne(t, "y/stranger", "x/a", tcp80) {
		t.Errorf("y/stranger reached x/a through the deleted client's address %s", gone.IPv4)
	}
	if !probeOne(t, "y/client-1", "x/a", tcp80) {
		t.Error("y/client-1 lost access")
	}
}

// TestRevocation: established connections a policy change denies stop
// within a second; the allowed ones go on (conformance.RunRevocation).
func TestRevocation(t *testing.T) {
	needCluster(t)
	suite.RunRevocation(t, false)
}
