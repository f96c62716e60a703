package dropsapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/certs"
	"github.com/nftguard/nftguard/internal/testenv"
)

const (
	testNamespace = "nftguard-system"
	testService   = "nftguard-drops"
	agentSA       = "nftguard-agent"
)

// cluster is a real API server with a front proxy, and a drops server
// registered with it as an aggregated API.
type cluster struct {
	t        *testing.T
	env      *envtest.Environment
	admin    kubernetes.Interface
	frontCA  *certs.CA
	serveCA  *certs.CA
	addr     string
	store    *Store
	metrics  *Metrics
	index    *PodIndex
	requests atomic.Int64 // requests the drops server made to the API server
	tokens   int
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	env, err := testenv.New()
	if err != nil {
		t.Fatal(err)
	}
	frontCA, err := testenv.FrontProxy(env, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	c := &cluster{t: t, env: env, frontCA: frontCA, admin: kubernetes.NewForConfigOrDie(cfg)}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	// The drops server's own client counts its requests.
	scfg := rest.CopyConfig(cfg)
	scfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			c.requests.Add(1)
			return rt.RoundTrip(r)
		})
	}
	client := kubernetes.NewForConfigOrDie(scfg)
	reg := prometheus.NewRegistry()
	c.metrics, err = NewMetrics(reg, 0)
	if err != nil {
		t.Fatal(err)
	}
	c.index = NewPodIndex()
	factory := informers.NewSharedInformerFactory(client, 0)
	if _, err := factory.Core().V1().Pods().Informer().AddEventHandler(c.index); err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	c.store = NewStore(StoreConfig{Namer: c.index, Metrics: c.metrics})
	srv, err := NewServer(ServerConfig{
		Store: c.store, Client: client, Metrics: c.metrics, Log: testr.New(t),
		AgentUsername: "system:serviceaccount:" + testNamespace + ":" + agentSA,
		ReviewTTL:     200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}

	c.serveCA, err = certs.NewCA("drops CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	crt, key, err := c.serveCA.Issue(&x509.Certificate{
		DNSNames:    []string{testService + "." + testNamespace + ".svc"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.addr = ln.Addr().String()
	go func() {
		_ = srv.Serve(ctx, ln, func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &pair, nil })
	}()
	c.register(cfg)
	return c
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// register creates the namespace, an ExternalName Service for the server
// (the aggregator refuses loopback endpoints) and the APIService, and
// waits until the aggregator finds it available.
func (c *cluster) register(cfg *rest.Config) {
	t, ctx := c.t, context.Background()
	c.create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNamespace}})
	c.create(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: testService, Namespace: testNamespace},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "localhost"},
	})
	_, portS, _ := net.SplitHostPort(c.addr)
	port, _ := strconv.Atoi(portS)
	apisvc := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
		"metadata": map[string]any{"name": APIServiceName},
		"spec": map[string]any{
			"group": Group, "version": Version, "groupPriorityMinimum": int64(1000), "versionPriority": int64(100),
			"caBundle": base64.StdEncoding.EncodeToString(c.serveCA.CertPEM),
			"service":  map[string]any{"namespace": testNamespace, "name": testService, "port": int64(port)},
		},
	}}
	gvr := schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}
	dyn := dynamic.NewForConfigOrDie(cfg)
	if _, err := dyn.Resource(gvr).Create(ctx, apisvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := dyn.Resource(gvr).Get(ctx, APIServiceName, metav1.GetOptions{})
		if err == nil {
			conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
			for _, x := range conds {
				m, _ := x.(map[string]any)
				if m["type"] == "Available" && m["status"] == "True" {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("APIService not available: %v", m)
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("APIService not available: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *cluster) create(obj any) {
	c.t.Helper()
	ctx := context.Background()
	var err error
	switch o := obj.(type) {
	case *corev1.Namespace:
		_, err = c.admin.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
	case *corev1.Service:
		_, err = c.admin.CoreV1().Services(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *corev1.ServiceAccount:
		_, err = c.admin.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *corev1.Node:
		_, err = c.admin.CoreV1().Nodes().Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.ClusterRole:
		_, err = c.admin.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.RoleBinding:
		_, err = c.admin.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.ClusterRoleBinding:
		_, err = c.admin.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
	default:
		c.t.Fatalf("cannot create %T", obj)
	}
	if err != nil && !apierrors.IsAlreadyExists(err) {
		c.t.Fatal(err)
	}
}

// runPod creates a running pod with an address on node.
func (c *cluster) runPod(ns, name, node, ip, sa string) *corev1.Pod {
	c.t.Helper()
	ctx := context.Background()
	c.create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	p, err := c.admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "c", Image: "example.invalid/c"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	p.Status.Phase = corev1.PodRunning
	if ip != "" {
		p.Status.PodIP = ip
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	p, err = c.admin.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return p
}

// agentToken returns a token for the agents' service account (or sa),
// bound to a pod on node and to audience.
func (c *cluster) agentToken(sa, node, audience string) string {
	c.t.Helper()
	ctx := context.Background()
	c.create(&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: testNamespace}})
	c.create(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}})
	c.tokens++
	p := c.runPod(testNamespace, fmt.Sprintf("%s-%s-%d", sa, node, c.tokens), node, "", sa)
	tr, err := c.admin.CoreV1().ServiceAccounts(testNamespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences: []string{audience},
			BoundObjectRef: &authenticationv1.BoundObjectReference{
				Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return tr.Status.Token
}

func (c *cluster) httpClient(cert *tls.Certificate) *http.Client {
	roots := x509.NewCertPool()
	roots.AddCert(c.serveCA.Cert)
	tc := &tls.Config{RootCAs: roots, ServerName: testService + "." + testNamespace + ".svc"}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 30 * time.Second}
}

// push sends lines as node with token and returns the HTTP status.
func (c *cluster) push(token, node, stream string, first uint64, lines []audit.Event) (int, PushResponse) {
	c.t.Helper()
	body, err := json.Marshal(PushRequest{Node: node, Stream: stream, First: first, Lines: lines})
	if err != nil {
		c.t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, "https://"+c.addr+PushPath, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.httpClient(nil).Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	var pr PushResponse
	_ = json.NewDecoder(resp.Body).Decode(&pr)
	return resp.StatusCode, pr
}

// user returns a client authenticated as a new user, with the given
// ClusterRole bound in each namespace ("" binds it cluster-wide).
func (c *cluster) user(name string, grants map[string][]string) kubernetes.Interface {
	c.t.Helper()
	u, err := c.env.AddUser(envtest.User{Name: name}, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	for ns, roles := range grants {
		for _, role := range roles {
			ref := rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role}
			subj := []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: name}}
			meta := metav1.ObjectMeta{Name: name + "-" + role, Namespace: ns}
			if ns == "" {
				c.create(&rbacv1.ClusterRoleBinding{ObjectMeta: meta, RoleRef: ref, Subjects: subj})
			} else {
				c.create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
				c.create(&rbacv1.RoleBinding{ObjectMeta: meta, RoleRef: ref, Subjects: subj})
			}
		}
	}
	return kubernetes.NewForConfigOrDie(u.Config())
}

func get(cs kubernetes.Interface, path string, params ...string) ([]byte, error) {
	req := cs.Discovery().RESTClient().Get().AbsPath(path)
	for i := 0; i+1 < len(params); i += 2 {
		req = req.Param(params[i], params[i+1])
	}
	return req.DoRaw(context.Background())
}

func listDrops(t *testing.T, cs kubernetes.Interface, ns string, params ...string) DropList {
	t.Helper()
	path := "/apis/" + GroupVersion + "/drops"
	if ns != "" {
		path = "/apis/" + GroupVersion + "/namespaces/" + ns + "/drops"
	}
	b, err := get(cs, path, params...)
	if err != nil {
		t.Fatalf("list %s: %v", path, err)
	}
	var l DropList
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

func TestDropsAPIThroughTheAggregator(t *testing.T) {
	c := startCluster(t)
	c.create(&rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "drops-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{Group}, Resources: []string{ResourceDrops, ResourceDropCounts}, Verbs: []string{"list", "watch"}}},
	})
	c.create(&rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}}},
	})
	// bank/client (remote, named by the server from its pod index) tries
	// shop/web on n1; shop/web tries bank/db on n2 (egress).
	c.runPod("bank", "client", "n9", "198.18.1.10", "")
	c.runPod("bank", "db", "n9", "198.18.1.11", "")
	waitFor(t, func() bool { return c.index.Len() >= 2 }, "pod index filled")

	token1 := c.agentToken(agentSA, "n1", Audience)
	token2 := c.agentToken(agentSA, "n2", Audience)
	now := time.Now()
	web := ep("198.18.0.2", "shop", "web", 80)
	in := ev(now, audit.Ingress, ep("198.18.1.10", "", "", 40000), web, "NetworkPolicy/shop/web")
	bankIn := ev(now, audit.Ingress, ep("198.18.0.2", "", "", 41000), ep("198.18.1.11", "bank", "db", 5432), "DefaultDeny/base")
	lost := audit.Event{Time: now, Action: audit.ActionLost, Count: 3, Reason: "overrun"}
	if code, pr := c.push(token1, "n1", "s1", 0, []audit.Event{in, lost}); code != http.StatusOK || pr.Next != 2 {
		t.Fatalf("push n1: %d %+v", code, pr)
	}
	out := ev(now, audit.Egress, ep("198.18.0.3", "shop", "cart", 0), ep("198.18.1.11", "", "", 5432), "DefaultDeny/base")
	if code, _ := c.push(token2, "n2", "s1", 0, []audit.Event{out, bankIn}); code != http.StatusOK {
		t.Fatalf("push n2: %d", code)
	}

	t.Run("a namespace's reader sees its namespace only, peers redacted", func(t *testing.T) {
		alice := c.user("alice", map[string][]string{"shop": {"drops-reader"}})
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
		if _, err := get(alice, "/apis/"+GroupVersion+"/namespaces/shop/drops", "since", "yesterday"); !apierrors.IsBadRequest(err) {
			t.Fatalf("since=yesterday: %v, want 400", err)
		}
		// Bank's lines and cluster-wide reads are refused.
		if _, err := get(alice, "/apis/"+GroupVersion+"/namespaces/bank/drops"); !apierrors.IsForbidden(err) {
			t.Fatalf("alice reading bank: %v, want 403", err)
		}
		if b, err := get(alice, "/apis/"+GroupVersion+"/drops"); !apierrors.IsForbidden(err) || !strings.Contains(string(b), "at the cluster scope") {
			t.Fatalf("alice reading cluster-wide: %v %s, want 403 at the cluster scope", err, b)
		}

		// Once alice may list bank's pods, its names are shown.
		c.user("alice", map[string][]string{"bank": {"pod-reader"}})
		waitFor(t, func() bool { return listDrops(t, alice, "shop").Redacted == 0 }, "names shown")
		l = listDrops(t, alice, "shop", "pod", "client")
		if len(l.Items) != 1 || l.Items[0].Src.Pod != "client" || l.Items[0].Src.Namespace != "bank" {
			t.Fatalf("named by the server from its pod index: %+v", l.Items)
		}
	})

	t.Run("no grant is 403", func(t *testing.T) {
		bob := c.user("bob", nil)
		b, err := get(bob, "/apis/"+GroupVersion+"/namespaces/shop/drops")
		if !apierrors.IsForbidden(err) || !strings.Contains(string(b), `cannot list resource \"drops\"`) {
			t.Fatalf("bob: %v %s, want 403 saying what is missing", err, b)
		}
		if _, err := get(bob, "/apis/"+GroupVersion+"/namespaces/shop/dropcounts"); !apierrors.IsForbidden(err) {
			t.Fatalf("bob dropcounts: %v, want 403", err)
		}
	})

	t.Run("cluster-wide readers see every namespace and the losses", func(t *testing.T) {
		carol := c.user("carol", map[string][]string{"": {"drops-reader", "pod-reader"}})
		l := listDrops(t, carol, "")
		if len(l.Items) != 3 || l.Lost["overrun"] != 3 || l.Redacted != 0 {
			t.Fatalf("carol: %d flows lost %v redacted %d, want 3, overrun 3, 0", len(l.Items), l.Lost, l.Redacted)
		}
		if strings.Join(l.Nodes, ",") != "n1,n2" {
			t.Fatalf("nodes %v", l.Nodes)
		}
		b, err := get(carol, "/apis/"+GroupVersion+"/namespaces/shop/dropcounts")
		if err != nil {
			t.Fatal(err)
		}
		var counts DropCountList
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
		realCrt, realKey, err := c.frontCA.Issue(&x509.Certificate{Subject: pkixName("someone-else"),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		wrongName, _ := tls.X509KeyPair(realCrt, realKey)
		// The real front proxy's certificate, for a user without a grant:
		// the server authorizes each user itself.
		proxyCrt, proxyKey, err := c.frontCA.Issue(&x509.Certificate{Subject: pkixName(testenv.FrontProxyClientName),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		proxy, _ := tls.X509KeyPair(proxyCrt, proxyKey)
		req, _ := http.NewRequest(http.MethodGet, "https://"+c.addr+"/apis/"+GroupVersion+"/namespaces/shop/drops", nil)
		req.Header.Set("X-Remote-User", "mallory")
		resp, err := c.httpClient(&proxy).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "nftguard-drops-reader") {
			t.Fatalf("front proxy for mallory: %d %s, want 403 saying what to grant", resp.StatusCode, body)
		}
		for name, cert := range map[string]*tls.Certificate{"no certificate": nil, "another CA": &forged, "a name not allowed": &wrongName} {
			req, _ := http.NewRequest(http.MethodGet, "https://"+c.addr+"/apis/"+GroupVersion+"/drops", nil)
			req.Header.Set("X-Remote-User", "system:admin")
			req.Header.Set("X-Remote-Group", "system:masters")
			resp, err := c.httpClient(cert).Do(req)
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
		other := c.agentToken("someone", "n1", Audience)
		wrongAudience := c.agentToken(agentSA, "n1", "https://kubernetes.default.svc")
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
			if code, _ := c.push(tc.token, tc.node, "x", 0, []audit.Event{in}); code != tc.want {
				t.Errorf("%s: %d, want %d", name, code, tc.want)
			}
		}
		carol := c.user("carol", nil)
		if l := listDrops(t, carol, "", "node", "n2"); len(l.Items) != 2 {
			t.Fatalf("n2 holds %d flows after refused pushes, want 2", len(l.Items))
		}
	})

	t.Run("a watch delivers new lines", func(t *testing.T) {
		alice := c.user("alice", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		rc, err := alice.Discovery().RESTClient().Get().AbsPath("/apis/"+GroupVersion+"/namespaces/shop/drops").
			Param("watch", "true").Stream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		// The watch has begun once the server holds a subscription; push
		// until a line arrives.
		lines := make(chan WatchEvent, 16)
		go func() {
			sc := bufio.NewScanner(rc)
			for sc.Scan() {
				var e struct {
					Type   string `json:"type"`
					Object Drop   `json:"object"`
				}
				if json.Unmarshal(sc.Bytes(), &e) == nil {
					lines <- WatchEvent{Type: e.Type, Object: e.Object}
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
				d := e.Object.(Drop)
				if e.Type != "ADDED" || d.Line.Dst.Pod != "web" || d.Line.Node != "n1" {
					t.Fatalf("watch event %+v", e)
				}
				return
			case <-tick.C:
				bank := bankIn
				bank.Time = time.Now()
				fresh := in
				fresh.Time = time.Now()
				code, pr := c.push(token1, "n1", "s1", next, []audit.Event{bank, fresh})
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
		code, pr := c.push(token1, "n1", "spoof", 0, nil)
		if code != http.StatusOK {
			t.Fatalf("push: %d", code)
		}
		before, unnamed := c.requests.Load(), testutil.ToFloat64(c.metrics.unnamedC)
		next := pr.Next
		for batch := range 10 {
			lines := make([]audit.Event, 1000)
			for i := range lines {
				n := batch*1000 + i
				src := netip.AddrFrom4([4]byte{198, 19, byte(n >> 8), byte(n)})
				lines[i] = ev(time.Now(), audit.Ingress, audit.Endpoint{IP: src, Port: 1234}, web, "NetworkPolicy/shop/web")
			}
			code, pr := c.push(token1, "n1", "spoof", next, lines)
			if code != http.StatusOK {
				t.Fatalf("push: %d", code)
			}
			next = pr.Next
		}
		if d := c.requests.Load() - before; d != 0 {
			t.Errorf("10,000 spoofed sources caused %d API requests, want 0", d)
		}
		if d := testutil.ToFloat64(c.metrics.unnamedC) - unnamed; d != 10000 {
			t.Errorf("unnamed counter rose by %v, want 10000", d)
		}
	})
}

func pkixName(cn string) pkix.Name { return pkix.Name{CommonName: cn} }

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
