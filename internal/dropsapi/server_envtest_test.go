package dropsapi_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/certs"
	"github.com/nftguard/nftguard/internal/dropsapi/dropsapitest"
	"github.com/nftguard/nftguard/internal/dropsapi/wire"
	"github.com/nftguard/nftguard/internal/testenv"
)

func TestDropsAPIThroughTheAggregator(t *testing.T) {
	c := dropsapitest.Start(t)
	c.Create(&rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "drops-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{wire.Group}, Resources: []string{wire.ResourceDrops, wire.ResourceDropCounts}, Verbs: []string{"list", "watch"}}},
	})
	c.Create(&rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}}},
	})
	// bank/client (remote, named by the server from its pod index) tries
	// shop/web on n1; shop/web tries bank/db on n2 (egress).
	c.RunPod("bank", "client", "n9", "198.18.1.10", "")
	c.RunPod("bank", "db", "n9", "198.18.1.11", "")
	dropsapitest.WaitFor(t, func() bool { return c.Index.Len() >= 2 }, "pod index filled")

	token1 := c.AgentToken(dropsapitest.AgentSA, "n1", wire.Audience)
	token2 := c.AgentToken(dropsapitest.AgentSA, "n2", wire.Audience)
	now := time.Now()
	web := ep("198.18.0.2", "shop", "web", 80)
	in := ev(now, audit.Ingress, ep("198.18.1.10", "", "", 40000), web, "NetworkPolicy/shop/web")
	bankIn := ev(now, audit.Ingress, ep("198.18.0.2", "", "", 41000), ep("198.18.1.11", "bank", "db", 5432), "DefaultDeny/base")
	lost := audit.Event{Time: now, Action: audit.ActionLost, Count: 3, Reason: "overrun"}
	if code, pr := c.Push(token1, "n1", "s1", 0, []audit.Event{in, lost}); code != http.StatusOK || pr.Next != 2 {
		t.Fatalf("push n1: %d %+v", code, pr)
	}
	out := ev(now, audit.Egress, ep("198.18.0.3", "shop", "cart", 0), ep("198.18.1.11", "", "", 5432), "DefaultDeny/base")
	if code, _ := c.Push(token2, "n2", "s1", 0, []audit.Event{out, bankIn}); code != http.StatusOK {
		t.Fatalf("push n2: %d", code)
	}

	t.Run("a namespace's reader sees its namespace only, peers redacted", func(t *testing.T) {
		alice := c.User("alice", map[string][]string{"shop": {"drops-reader"}})
		l := listDrops(t, alice, "shop")
		if len(l.Items) != 2 {
			t.Fatalf("alice sees %d flows, want shop's 2: %+v", len(l.Items), l.Items)
		}
		for _, f := range l.Items {
			if f.Src.Namespace != "shop" && f.Dst.Namespace != "shop" || f.Action == audit.ActionLost {
				t.Fatalf("alice sees a flow of another namespace: %+v", f)
			}
			peer := f.Src
			if f.Direction == audit.Egress {
				peer = f.Dst
			}
			if peer.Namespace != "bank" || peer.Pod != "" {
				t.Fatalf("peer not named by namespace only: %+v", peer)
			}
		}
		if l.Redacted != 2 || len(l.Lost) != 0 {
			t.Fatalf("redacted %d lost %v, want 2 and none", l.Redacted, l.Lost)
		}
		// Filters: by pod of the owner, by node, by policy, by action.
		if l := listDrops(t, alice, "shop", "pod", "web"); len(l.Items) != 1 || l.Items[0].Dst.Pod != "web" {
			t.Fatalf("pod=web: %+v", l.Items)
		}
		if l := listDrops(t, alice, "shop", "pod", "client"); len(l.Items) != 0 {
			t.Fatalf("pod=client matched a withheld name: %+v", l.Items)
		}
		if l := listDrops(t, alice, "shop", "node", "n2"); len(l.Items) != 1 || l.Items[0].Node != "n2" {
			t.Fatalf("node=n2: %+v", l.Items)
		}
		if l := listDrops(t, alice, "shop", "policy", "web"); len(l.Items) != 1 {
			t.Fatalf("policy=web: %+v", l.Items)
		}
		if l := listDrops(t, alice, "shop", "action", "audit"); len(l.Items) != 0 {
			t.Fatalf("action=audit: %+v", l.Items)
		}
		if _, err := get(alice, "/apis/"+wire.GroupVersion+"/namespaces/shop/drops", "since", "yesterday"); !apierrors.IsBadRequest(err) {
			t.Fatalf("since=yesterday: %v, want 400", err)
		}
		// Bank's lines and cluster-wide reads are refused.
		if _, err := get(alice, "/apis/"+wire.GroupVersion+"/namespaces/bank/drops"); !apierrors.IsForbidden(err) {
			t.Fatalf("alice reading bank: %v, want 403", err)
		}
		if b, err := get(alice, "/apis/"+wire.GroupVersion+"/drops"); !apierrors.IsForbidden(err) || !strings.Contains(string(b), "at the cluster scope") {
			t.Fatalf("alice reading cluster-wide: %v %s, want 403 at the cluster scope", err, b)
		}

		// Once alice may list bank's pods, its names are shown.
		c.User("alice", map[string][]string{"bank": {"pod-reader"}})
		dropsapitest.WaitFor(t, func() bool { return listDrops(t, alice, "shop").Redacted == 0 }, "names shown")
		l = listDrops(t, alice, "shop", "pod", "client")
		if len(l.Items) != 1 || l.Items[0].Src.Pod != "client" || l.Items[0].Src.Namespace != "bank" {
			t.Fatalf("named by the server from its pod index: %+v", l.Items)
		}
	})

	t.Run("no grant is 403", func(t *testing.T) {
		bob := c.User("bob", nil)
		b, err := get(bob, "/apis/"+wire.GroupVersion+"/namespaces/shop/drops")
		if !apierrors.IsForbidden(err) || !strings.Contains(string(b), `cannot list resource \"drops\"`) {
			t.Fatalf("bob: %v %s, want 403 saying what is missing", err, b)
		}
		if _, err := get(bob, "/apis/"+wire.GroupVersion+"/namespaces/shop/dropcounts"); !apierrors.IsForbidden(err) {
			t.Fatalf("bob dropcounts: %v, want 403", err)
		}
	})

	t.Run("cluster-wide readers see every namespace and the losses", func(t *testing.T) {
		carol := c.User("carol", map[string][]string{"": {"drops-reader", "pod-reader"}})
		l := listDrops(t, carol, "")
		if len(l.Items) != 3 || l.Lost["overrun"] != 3 || l.Redacted != 0 {
			t.Fatalf("carol: %d flows lost %v redacted %d, want 3, overrun 3, 0", len(l.Items), l.Lost, l.Redacted)
		}
		if strings.Join(l.Nodes, ",") != "n1,n2" {
			t.Fatalf("nodes %v", l.Nodes)
		}
		b, err := get(carol, "/apis/"+wire.GroupVersion+"/namespaces/shop/dropcounts")
		if err != nil {
			t.Fatal(err)
		}
		var counts wire.DropCountList
		if err := json.Unmarshal(b, &counts); err != nil {
			t.Fatal(err)
		}
		if len(counts.Items) != 2 {
			t.Fatalf("shop counts %+v, want web's ingress and base's egress", counts.Items)
		}
	})

	t.Run("forged front-proxy headers are refused", func(t *testing.T) {
		other, err := certs.NewCA("front-proxy-ca", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		crt, key, err := other.Issue(&x509.Certificate{Subject: pkixName(testenv.FrontProxyClientName),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		forged, _ := tls.X509KeyPair(crt, key)
		realCrt, realKey, err := c.FrontCA.Issue(&x509.Certificate{Subject: pkixName("someone-else"),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		wrongName, _ := tls.X509KeyPair(realCrt, realKey)
		// The real front proxy's certificate, for a user without a grant:
		// the server authorizes each user itself.
		proxyCrt, proxyKey, err := c.FrontCA.Issue(&x509.Certificate{Subject: pkixName(testenv.FrontProxyClientName),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		proxy, _ := tls.X509KeyPair(proxyCrt, proxyKey)
		req, _ := http.NewRequest(http.MethodGet, "https://"+c.Addr+"/apis/"+wire.GroupVersion+"/namespaces/shop/drops", nil)
		req.Header.Set("X-Remote-User", "mallory")
		resp, err := c.HTTPClient(&proxy).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "nftguard-drops-reader") {
			t.Fatalf("front proxy for mallory: %d %s, want 403 saying what to grant", resp.StatusCode, body)
		}
		for name, cert := range map[string]*tls.Certificate{"no certificate": nil, "another CA": &forged, "a name not allowed": &wrongName} {
			req, _ := http.NewRequest(http.MethodGet, "https://"+c.Addr+"/apis/"+wire.GroupVersion+"/drops", nil)
			req.Header.Set("X-Remote-User", "system:admin")
			req.Header.Set("X-Remote-Group", "system:masters")
			resp, err := c.HTTPClient(cert).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("%s: %d, want 401", name, resp.StatusCode)
			}
		}
	})

	t.Run("the server refuses agents that are not who they claim", func(t *testing.T) {
		other := c.AgentToken("someone", "n1", wire.Audience)
		wrongAudience := c.AgentToken(dropsapitest.AgentSA, "n1", "https://kubernetes.default.svc")
		for name, tc := range map[string]struct {
			token, node string
			want        int
		}{
			"another node":           {token1, "n2", http.StatusForbidden},
			"another account":        {other, "n1", http.StatusForbidden},
			"another audience":       {wrongAudience, "n1", http.StatusUnauthorized},
			"no token":               {"", "n1", http.StatusUnauthorized},
			"a token that is forged": {"eyJhbGciOiJSUzI1NiJ9.e30.x", "n1", http.StatusUnauthorized},
		} {
			if code, _ := c.Push(tc.token, tc.node, "x", 0, []audit.Event{in}); code != tc.want {
				t.Errorf("%s: %d, want %d", name, code, tc.want)
			}
		}
		carol := c.User("carol", nil)
		if l := listDrops(t, carol, "", "node", "n2"); len(l.Items) != 2 {
			t.Fatalf("n2 holds %d flows after refused pushes, want 2", len(l.Items))
		}
	})

	t.Run("a watch delivers new lines", func(t *testing.T) {
		alice := c.User("alice", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		rc, err := alice.Discovery().RESTClient().Get().AbsPath("/apis/"+wire.GroupVersion+"/namespaces/shop/drops").
			Param("watch", "true").Stream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		// The watch has begun once the server holds a subscription; push
		// until a line arrives.
		lines := make(chan wire.WatchEvent, 16)
		go func() {
			sc := bufio.NewScanner(rc)
			for sc.Scan() {
				var e struct {
					Type   string    `json:"type"`
					Object wire.Drop `json:"object"`
				}
				if json.Unmarshal(sc.Bytes(), &e) == nil {
					lines <- wire.WatchEvent{Type: e.Type, Object: e.Object}
				}
			}
			close(lines)
		}()
		next := uint64(2)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case e, ok := <-lines:
				if !ok {
					t.Fatal("watch ended")
				}
				d := e.Object.(wire.Drop)
				if e.Type != "ADDED" || d.Line.Dst.Pod != "web" || d.Line.Node != "n1" {
					t.Fatalf("watch event %+v", e)
				}
				return
			case <-tick.C:
				bank := bankIn
				bank.Time = time.Now()
				fresh := in
				fresh.Time = time.Now()
				code, pr := c.Push(token1, "n1", "s1", next, []audit.Event{bank, fresh})
				if code != http.StatusOK {
					t.Fatalf("push: %d", code)
				}
				next = pr.Next
			case <-ctx.Done():
				t.Fatal("no watch event")
			}
		}
	})

	t.Run("spoofed sources cost a counter and no API call", func(t *testing.T) {
		// One push first, so that the agent's token review is cached.
		code, pr := c.Push(token1, "n1", "spoof", 0, nil)
		if code != http.StatusOK {
			t.Fatalf("push: %d", code)
		}
		before, unnamed := c.Requests.Load(), c.Counter("nftguard_drops_unnamed_addresses_total")
		next := pr.Next
		for batch := range 10 {
			lines := make([]audit.Event, 1000)
			for i := range lines {
				n := batch*1000 + i
				src := netip.AddrFrom4([4]byte{198, 19, byte(n >> 8), byte(n)})
				lines[i] = ev(time.Now(), audit.Ingress, audit.Endpoint{IP: src, Port: 1234}, web, "NetworkPolicy/shop/web")
			}
			code, pr := c.Push(token1, "n1", "spoof", next, lines)
			if code != http.StatusOK {
				t.Fatalf("push: %d", code)
			}
			next = pr.Next
		}
		if d := c.Requests.Load() - before; d != 0 {
			t.Errorf("10,000 spoofed sources caused %d API requests, want 0", d)
		}
		if d := c.Counter("nftguard_drops_unnamed_addresses_total") - unnamed; d != 10000 {
			t.Errorf("unnamed counter rose by %v, want 10000", d)
		}
	})
}

func TestCertificateRenewedWithItsCA(t *testing.T) {
	c := dropsapitest.Start(t)
	ctx := context.Background()
	secrets := c.Admin.CoreV1().Secrets(dropsapitest.Namespace)
	sec, err := secrets.Get(ctx, "nftguard-drops-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.ParseCA(sec.Data["ca.crt"], sec.Data["ca.key"])
	if err != nil {
		t.Fatal(err)
	}
	// A certificate for another name (the Service renamed, say) is replaced.
	crt, key, err := ca.Issue(&x509.Certificate{DNSNames: []string{"other.svc"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sec.Data["tls.crt"], sec.Data["tls.key"] = crt, key
	if _, err := secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var renewed []byte
	dropsapitest.WaitFor(t, func() bool {
		got, err := secrets.Get(ctx, "nftguard-drops-tls", metav1.GetOptions{})
		renewed = got.Data["tls.crt"]
		return err == nil && !bytes.Equal(renewed, crt) && bytes.Equal(got.Data["ca.crt"], ca.CertPEM)
	}, "the certificate renewed by the same CA")
	// Served, and trusted by what the agents and the aggregator hold.
	block, _ := pem.Decode(renewed)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(c.CAPEM)
	dropsapitest.WaitFor(t, func() bool {
		conn, err := tls.Dial("tcp", c.Addr, &tls.Config{RootCAs: roots, ServerName: dropsapitest.Service + "." + dropsapitest.Namespace + ".svc"})
		if err != nil {
			return false
		}
		defer conn.Close()
		return bytes.Equal(conn.ConnectionState().PeerCertificates[0].Raw, block.Bytes)
	}, "the renewed certificate served")
}

func pkixName(cn string) pkix.Name { return pkix.Name{CommonName: cn} }

func get(cs kubernetes.Interface, path string, params ...string) ([]byte, error) {
	req := cs.Discovery().RESTClient().Get().AbsPath(path)
	for i := 0; i+1 < len(params); i += 2 {
		req = req.Param(params[i], params[i+1])
	}
	return req.DoRaw(context.Background())
}

func listDrops(t *testing.T, cs kubernetes.Interface, ns string, params ...string) wire.DropList {
	t.Helper()
	path := "/apis/" + wire.GroupVersion + "/drops"
	if ns != "" {
		path = "/apis/" + wire.GroupVersion + "/namespaces/" + ns + "/drops"
	}
	b, err := get(cs, path, params...)
	if err != nil {
		t.Fatalf("list %s: %v", path, err)
	}
	var l wire.DropList
	if err := json.Unmarshal(b, &l); err != nil {
		t.Fatalf("list %s: %v: %s", path, err, b)
	}
	return l
}

func ev(at time.Time, dir audit.Direction, src, dst audit.Endpoint, policies ...string) audit.Event {
	return audit.Event{Time: at, Action: audit.ActionDrop, Direction: dir, Protocol: 6, Src: src, Dst: dst, Policies: policies, Count: 1}
}

func ep(ip, ns, pod string, port uint16) audit.Endpoint {
	return audit.Endpoint{IP: netip.MustParseAddr(ip), Namespace: ns, Pod: pod, Port: port}
}
