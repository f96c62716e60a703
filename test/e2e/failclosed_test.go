package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/test/localcluster"
)

// preADDWindow is how long a new pod sends before the runtime's ADD of the
// nftguard plugin: the window in which its node has not heard of it.
const preADDWindow = 300 * time.Millisecond

// floodTargets are TCP 80 and UDP 81 of each pod, in both families.
func floodTargets(pods ...localcluster.Pod) []localcluster.FloodTarget {
	var out []localcluster.FloodTarget
	for _, p := range pods {
		for _, ip := range []netip.Addr{p.IPv4, p.IPv6} {
			out = append(out,
				localcluster.FloodTarget{Addr: netip.AddrPortFrom(ip, 80), Protocol: corev1.ProtocolTCP},
				localcluster.FloodTarget{Addr: netip.AddrPortFrom(ip, 81), Protocol: corev1.ProtocolUDP})
		}
	}
	return out
}

// sender is a new pod that talks from the moment its interface has its
// addresses, and what its peers see of it.
type sender struct {
	flood     *localcluster.Flood
	allowed   *localcluster.Capture
	denied    *localcluster.Capture
	addressed time.Time // when the ADD began: everything before is unprogrammed
	sentEarly int64     // packets the kernel took before the ADD
}

// startSender starts pod key (labels pod=<name>) on node, flooding
// allowedPeer and deniedPeer every millisecond from its first moment.
func startSender(t *testing.T, key, node, allowedPeer, deniedPeer string) *sender {
	t.Helper()
	s := &sender{}
	a, d := mustPod(t, allowedPeer), mustPod(t, deniedPeer)
	ns, name := key[:1], key[2:]
	_, err := cl.StartPod(context.Background(), localcluster.PodSpec{Namespace: ns, Name: name, Node: node, Labels: labels("pod", name)},
		localcluster.StartOptions{OnAddresses: func(p localcluster.Pod) error {
			var err error
			if s.allowed, err = cl.CaptureFrom(allowedPeer, p.IPv4, p.IPv6); err != nil {
				return err
			}
			if s.denied, err = cl.CaptureFrom(deniedPeer, p.IPv4, p.IPv6); err != nil {
				return err
			}
			s.flood = cl.StartFlood(p, floodTargets(a, d), time.Millisecond)
			time.Sleep(preADDWindow)
			s.sentEarly, s.addressed = s.flood.Sent(), time.Now()
			return nil
		}})
	t.Cleanup(func() { s.stop(t) })
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *sender) stop(t *testing.T) {
	if s.flood != nil {
		if err := s.flood.Stop(); err != nil {
			t.Errorf("flood: %v", err)
		}
		s.flood = nil
	}
	for _, c := range []*localcluster.Capture{s.allowed, s.denied} {
		if c != nil {
			c.Close()
		}
	}
	s.allowed, s.denied = nil, nil
}

// TestFirstPackets: a new pod whose egress a policy limits to y/a sends TCP
// SYNs and UDP every millisecond to y/a and z/b from the moment its
// interface has an address, before its node has heard of it. z/b never sees
// a packet of it; y/a sees the first only after the pod's ADD began (its
// node programs it then), and then keeps seeing them.
func TestFirstPackets(t *testing.T) {
	needCluster(t)
	ctx := context.Background()
	resetPolicies(t)
	create(t, allowEgress(policy("x", "new-to-ya", labels("pod", "new"), networkingv1.PolicyTypeEgress), nil,
		networkingv1.NetworkPolicyPeer{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: labels("ns", "y")},
			PodSelector:       &metav1.LabelSelector{MatchLabels: labels("pod", "a")},
		}))
	waitConverged(t)
	t.Cleanup(func() {
		if _, ok := cl.Pod("x/new"); ok {
			if err := cl.DeletePod(ctx, "x/new"); err != nil {
				t.Errorf("removing x/new: %v", err)
			}
		}
	})
	s := startSender(t, "x/new", "node-1", "y/a", "z/b")
	running := time.Now()
	// The pod talks to y/a once programmed; keep going a while to see that
	// z/b still gets nothing.
	deadline := running.Add(10 * time.Second)
	for {
		if n, _ := s.allowed.Seen(); n > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(time.Second)
	sent := s.flood.Sent()
	nA, firstA := s.allowed.Seen()
	nD, _ := s.denied.Seen()
	s.stop(t)
	t.Logf("x/new sent %d packets (%d in the %s before its ADD); y/a saw %d, the first %s after the ADD began; z/b saw %d",
		sent, s.sentEarly, preADDWindow, nA, firstA.Sub(s.addressed).Round(time.Microsecond), nD)
	if s.sentEarly == 0 {
		t.Fatalf("x/new sent nothing before its ADD: the window before programming is not exercised")
	}
	if nD != 0 {
		t.Errorf("z/b, which x/new's policy denies, saw %d of its packets", nD)
	}
	if nA == 0 {
		t.Fatalf("y/a, which x/new's policy allows, saw none of its packets")
	}
	if firstA.Before(s.addressed) {
		t.Errorf("y/a saw x/new's first packet %s before its ADD began: it passed before the pod was programmed",
			s.addressed.Sub(firstA))
	}
}

// TestControllerDownNewPodsStayClosed: while no controller runs, five new
// pods (no policy isolates them) start and send from their first moment;
// no rule set lists them, so nothing of theirs reaches anyone. Once a
// controller runs again, they become reachable.
func TestControllerDownNewPodsStayClosed(t *testing.T) {
	needCluster(t)
	ctx := context.Background()
	resetPolicies(t)
	waitConverged(t)
	ref, err := cl.Kill(localcluster.RoleController, "", syscall.SIGKILL)
	if err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			if err := cl.Restart(ctx, ref); err != nil {
				t.Errorf("restarting the controller: %v", err)
			}
		}
	})
	var senders []*sender
	for i := range 5 {
		key := fmt.Sprintf("y/held-%d", i)
		t.Cleanup(func() {
			if _, ok := cl.Pod(key); ok {
				if err := cl.DeletePod(ctx, key); err != nil {
					t.Errorf("removing %s: %v", key, err)
				}
			}
		})
		node := []string{"node-1", "node-2"}[i%2]
		senders = append(senders, startSender(t, key, node, "x/a", "z/b"))
	}
	time.Sleep(time.Second)
	for i, s := range senders {
		nA, _ := s.allowed.Seen()
		nD, _ := s.denied.Seen()
		if s.flood.Sent() == 0 || nA+nD != 0 {
			t.Errorf("y/held-%d, started while no controller runs: sent %d, x/a saw %d, z/b saw %d (want 0 leaked)", i, s.flood.Sent(), nA, nD)
		}
	}
	if t.Failed() {
		return
	}
	if err := cl.Restart(ctx, ref); err != nil {
		t.Fatal(err)
	}
	restarted = true
	deadline := time.Now().Add(30 * time.Second)
	for i, s := range senders {
		for {
			if n, _ := s.allowed.Seen(); n > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("y/held-%d never reached x/a after the controller came back", i)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Logf("5 pods held while the controller was down, 0 packets leaked; all reached x/a once it ran")
}

// TestAddressReuse: y/old, whose policy lets it reach x/a, has a live UDP
// flow to x/a (replies and all, so conntrack holds it established) when it
// is deleted. y/new, whose policy denies all its egress, gets the same
// address and sends on the same 5-tuple from its first moment: none of its
// packets pass, neither under y/old's rules nor as y/old's established flow.
func TestAddressReuse(t *testing.T) {
	needCluster(t)
	ctx := context.Background()
	resetPolicies(t)
	create(t,
		allowEgress(policy("y", "old-to-xa", labels("role", "old"), networkingv1.PolicyTypeEgress), nil,
			networkingv1.NetworkPolicyPeer{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: labels("ns", "x")},
				PodSelector:       &metav1.LabelSelector{MatchLabels: labels("pod", "a")},
			}),
		policy("y", "new-deny-egress", labels("role", "new"), networkingv1.PolicyTypeEgress),
	)
	waitConverged(t)
	for _, k := range []string{"y/old", "y/new"} {
		t.Cleanup(func() {
			if _, ok := cl.Pod(k); ok {
				if err := cl.DeletePod(ctx, k); err != nil {
					t.Errorf("removing %s: %v", k, err)
				}
			}
		})
	}
	xa := mustPod(t, "x/a")
	node := "node-1"
	if xa.Node == node {
		node = "node-2"
	}
	flow := func() []localcluster.FloodTarget {
		return []localcluster.FloodTarget{{Addr: netip.AddrPortFrom(xa.IPv4, 81), Protocol: corev1.ProtocolUDP, SourcePort: 40000}}
	}
	old, err := cl.AddPod(ctx, localcluster.PodSpec{Namespace: "y", Name: "old", Node: node, Labels: labels("role", "old")})
	if err != nil {
		t.Fatal(err)
	}
	replies, err := cl.CaptureFrom("y/old", xa.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	oldFlow := cl.StartFlood(old, flow(), 10*time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if n, _ := replies.Seen(); n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("x/a never answered y/old's flow: there is no established flow to inherit")
		}
		time.Sleep(10 * time.Millisecond)
	}
	replies.Close()
	// Deleted while its flow is live (it sends until its network goes).
	if err := cl.DeletePod(ctx, "y/old"); err != nil {
		t.Fatal(err)
	}
	if err := oldFlow.Stop(); err != nil {
		t.Fatal(err)
	}
	var seen *localcluster.Capture
	var flood *localcluster.Flood
	newPod, err := cl.StartPod(ctx, localcluster.PodSpec{Namespace: "y", Name: "new", Node: node, Labels: labels("role", "new")},
		localcluster.StartOptions{OnAddresses: func(p localcluster.Pod) error {
			var err error
			if seen, err = cl.CaptureFrom("x/a", p.IPv4); err != nil {
				return err
			}
			flood = cl.StartFlood(p, flow(), time.Millisecond)
			time.Sleep(preADDWindow)
			return nil
		}})
	if flood != nil {
		defer flood.Stop()
	}
	if seen != nil {
		defer seen.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	if newPod.IPv4 != old.IPv4 {
		t.Fatalf("y/new got %s, not y/old's %s: the reuse case is not exercised", newPod.IPv4, old.IPv4)
	}
	time.Sleep(2 * time.Second)
	n, _ := seen.Seen()
	t.Logf("y/new (%s, y/old's address) sent %d datagrams on y/old's 5-tuple; x/a saw %d", newPod.IPv4, flood.Sent(), n)
	if flood.Sent() == 0 {
		t.Fatal("y/new sent nothing")
	}
	if n != 0 {
		t.Errorf("x/a saw %d packets of y/new, whose egress is denied: they passed under y/old's rules or flow", n)
	}
}
