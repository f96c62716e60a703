package conformance

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftguard/nftguard/internal/dataplane/nftnl"
	"github.com/nftguard/nftguard/internal/dataplane/render"
	"github.com/nftguard/nftguard/test/localcluster"
)

// echoStream is a long-lived TCP connection that sends a line every 20 ms
// and reads it back; last is when the last echo arrived.
type echoStream struct {
	conn net.Conn
	last atomic.Int64
	stop chan struct{}
	done chan struct{}
}

func (s *Suite) startEcho(t *testing.T, from string, to netip.AddrPort) *echoStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := s.Cluster.Dial(ctx, from, "tcp", to.String())
	if err != nil {
		t.Fatalf("%s -> %s: %v", from, to, err)
	}
	e := &echoStream{conn: conn, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(e.done)
		r := bufio.NewReader(conn)
		for {
			select {
			case <-e.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			_ = conn.SetDeadline(time.Now().Add(200 * time.Millisecond))
			if _, err := conn.Write([]byte("ping\n")); err != nil {
				continue
			}
			if _, err := r.ReadString('\n'); err == nil {
				e.last.Store(time.Now().UnixNano())
			}
		}
	}()
	t.Cleanup(func() { close(e.stop); <-e.done; conn.Close() })
	return e
}

func (e *echoStream) lastEcho() time.Time { return time.Unix(0, e.last.Load()) }

// revocationPort is the port of the test's own TCP echo listener in x/a.
const revocationPort = 7000

// RunRevocation: x/a serves long-lived TCP echo connections and a UDP flow
// to y/a and y/b, which no policy isolates yet, directly or (viaService)
// through ClusterIP Services. A NetworkPolicy then lets only y/b reach
// x/a: within a second of x/a's node programming it, y/a's TCP connection
// and UDP flow deliver nothing more (conntrack held them established; the
// agent revoked them), while y/b's keep going, not one broken.
func (s *Suite) RunRevocation(t *testing.T, viaService bool) {
	s.ResetPolicies(t)
	cl := s.Cluster
	xa := s.pod(t, "x/a")
	ya, yb := s.pod(t, "y/a"), s.pod(t, "y/b")
	ln, err := cl.Listen("x/a", "tcp", ":"+strconv.Itoa(revocationPort))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	tcpTo := netip.AddrPortFrom(xa.IPv4, revocationPort)
	udpTo := netip.AddrPortFrom(xa.IPv4, 81)
	if viaService {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a-echo"},
			Spec: corev1.ServiceSpec{
				Selector: map[string]string{localcluster.LabelPod: "a"},
				Ports:    []corev1.ServicePort{{Name: "echo", Protocol: corev1.ProtocolTCP, Port: revocationPort, TargetPort: intstr.FromInt32(revocationPort)}},
			},
		}
		s.Create(t, svc)
		defer func() { _ = cl.Client().Delete(context.Background(), svc) }()
		ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
		if err != nil || !xa.ServiceIP.IsValid() {
			t.Fatalf("Service ClusterIPs: %q, x/a's own %s", svc.Spec.ClusterIP, xa.ServiceIP)
		}
		tcpTo, udpTo = netip.AddrPortFrom(ip, revocationPort), netip.AddrPortFrom(xa.ServiceIP, 81)
		// kube-proxy programs the new Service within a few seconds.
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			c, err := cl.Dial(ctx, "y/a", "tcp", tcpTo.String())
			cancel()
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("Service %s does not answer: %v", tcpTo, err)
			}
		}
	}
	denied, allowed := s.startEcho(t, "y/a", tcpTo), s.startEcho(t, "y/b", tcpTo)
	var udp [2]*localcluster.Capture
	for i, p := range []localcluster.Pod{ya, yb} {
		if udp[i], err = cl.CaptureFrom("x/a", p.IPv4); err != nil {
			t.Fatal(err)
		}
		defer udp[i].Close()
		f := cl.StartFlood(p, []localcluster.FloodTarget{{Addr: udpTo, Protocol: corev1.ProtocolUDP, SourcePort: 41000}}, 10*time.Millisecond)
		defer f.Stop()
	}
	time.Sleep(time.Second)
	since := time.Now().Add(-200 * time.Millisecond)
	if denied.lastEcho().Before(since) || allowed.lastEcho().Before(since) {
		t.Fatalf("the TCP connections do not echo before any policy: last %s, %s", denied.lastEcho(), allowed.lastEcho())
	}

	s.Create(t, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a-from-yb"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"ns": "y"}},
				PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"pod": "b"}},
			}}}},
		},
	})
	changed := s.WaitChain(t, xa, render.PodChainName("in", "x", "a"), true)
	// Revocation follows the Apply that made the chain: a second later the
	// denied flows have stopped; the next second shows whether they stay
	// stopped.
	time.Sleep(time.Second)
	var udpAt, udpAfter [2]int64
	for i := range udp {
		udpAt[i], _ = udp[i].Seen()
	}
	cut := changed.Add(time.Second)
	time.Sleep(time.Second)
	for i := range udp {
		udpAfter[i], _ = udp[i].Seen()
	}
	t.Logf("y/a's TCP echoed last %s after x/a's chain was programmed; its UDP flow delivered %d packets in the second after the first",
		denied.lastEcho().Sub(changed).Round(time.Millisecond), udpAfter[0]-udpAt[0])
	if denied.lastEcho().After(cut) {
		t.Errorf("y/a's established TCP connection still echoes %s after the policy denied it", denied.lastEcho().Sub(changed))
	}
	if udpAfter[0] != udpAt[0] {
		t.Errorf("y/a's established UDP flow delivered %d packets more than a second after the policy denied it", udpAfter[0]-udpAt[0])
	}
	if recent := time.Now().Add(-200 * time.Millisecond); allowed.lastEcho().Before(recent) {
		t.Errorf("y/b's TCP connection, which the policy allows, stopped echoing at %s", allowed.lastEcho())
	}
	if udpAfter[1] <= udpAt[1] {
		t.Errorf("y/b's UDP flow, which the policy allows, stopped: %d then %d packets", udpAt[1], udpAfter[1])
	}
	s.ResetPolicies(t)
}

// pod is a conformance pod.
func (s *Suite) pod(t *testing.T, key string) localcluster.Pod {
	t.Helper()
	p, ok := s.Cluster.Pod(key)
	if !ok {
		t.Fatalf("no pod %s", key)
	}
	return p
}

// WaitChain waits until the table of p's node has chain (present) or has
// not, and returns when it saw that: when the node enforces a change that
// adds or removes p's isolation.
func (s *Suite) WaitChain(t *testing.T, p localcluster.Pod, chain string, present bool) time.Time {
	t.Helper()
	node, ok := s.Cluster.Node(p.Node)
	if !ok {
		t.Fatalf("no node %s", p.Node)
	}
	h, err := netns.GetFromPath(localcluster.NetNSPath(node.NetNS))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		// A read that races the agent's own change (a set deleted between
		// the listing of sets and of its elements) is read again.
		tab, err := nftnl.ReadTable(int(h))
		if err == nil && (tab != nil && tab.Chain(chain) != nil) == present {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's node: chain %s present=%v 30s after the policy change (last read: %v)", p.Key(), chain, !present, err)
		}
	}
}
