// Package dropsapitest runs the drops API for tests: a real API server with
// a front proxy (envtest), the drops server registered with its aggregator
// as the controller registers it, agents' tokens and users.
package dropsapitest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
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
	"github.com/nftguard/nftguard/internal/dropsapi"
	"github.com/nftguard/nftguard/internal/dropsapi/wire"
	"github.com/nftguard/nftguard/internal/testenv"
)

const (
	Namespace = "nftguard-system"
	Service   = "nftguard-drops"
	AgentSA   = "nftguard-agent"
)

// Cluster is a real API server with a front proxy, and a drops server
// registered with it as an aggregated API.
type Cluster struct {
	T        testing.TB
	Env      *envtest.Environment
	Admin    kubernetes.Interface
	FrontCA  *certs.CA
	Certs    *dropsapi.CertManager
	CAPEM    []byte // the CA the agents trust
	Addr     string
	Store    *dropsapi.Store
	Metrics  *dropsapi.Metrics
	Index    *dropsapi.PodIndex
	Requests atomic.Int64 // requests the drops server made to the API server
	tokens   int
	// proxyCert is a front-proxy client certificate, for DirectGet.
	proxyCert *tls.Certificate
	Registry  *prometheus.Registry
}

// Start starts the API server and the drops server, registered and
// available, for the test.
func Start(t testing.TB) *Cluster { return StartWithStore(t, dropsapi.StoreConfig{}) }

// StartWithStore is Start with the store's bounds of sc.
func StartWithStore(t testing.TB, sc dropsapi.StoreConfig) *Cluster {
	t.Helper()
	var frontCA *certs.CA
	env, cfg := testenv.StartWith(t, func(env *envtest.Environment) error {
		var err error
		frontCA, err = testenv.FrontProxy(env, t.TempDir())
		return err
	})
	var err error
	c := &Cluster{T: t, Env: env, FrontCA: frontCA, Admin: kubernetes.NewForConfigOrDie(cfg)}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	// The drops server's own client counts its requests.
	scfg := rest.CopyConfig(cfg)
	scfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			c.Requests.Add(1)
			return rt.RoundTrip(r)
		})
	}
	client := kubernetes.NewForConfigOrDie(scfg)
	reg := prometheus.NewRegistry()
	c.Registry = reg
	c.Metrics, err = dropsapi.NewMetrics(reg, 0)
	if err != nil {
		t.Fatal(err)
	}
	c.Index = dropsapi.NewPodIndex()
	factory := informers.NewSharedInformerFactory(client, 0)
	if _, err := factory.Core().V1().Pods().Informer().AddEventHandler(c.Index); err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	sc.Namer, sc.Metrics = c.Index, c.Metrics
	c.Store = dropsapi.NewStore(sc)
	srv, err := dropsapi.NewServer(dropsapi.ServerConfig{
		Store: c.Store, Client: client, Metrics: c.Metrics, Log: testr.NewWithInterface(t, testr.Options{}),
		AgentUsername: "system:serviceaccount:" + Namespace + ":" + AgentSA,
		ReviewTTL:     200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}

	// The server's certificate, as the controller keeps it: a Secret
	// shared by the replicas, its CA published in the APIService and in a
	// ConfigMap for the agents.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.Addr = ln.Addr().String()
	c.register(cfg)
	dyn := dynamic.NewForConfigOrDie(cfg)
	newManager := func() *dropsapi.CertManager {
		return &dropsapi.CertManager{Client: c.Admin, Dynamic: dyn, Namespace: Namespace, Service: Service,
			Secret: "nftguard-drops-tls", ConfigMap: "nftguard-drops-ca", Interval: time.Second, Log: testr.NewWithInterface(t, testr.Options{})}
	}
	c.Certs = newManager()
	go func() { _ = c.Certs.Start(ctx) }()
	WaitFor(t, c.Certs.Ready, "certificate loaded")
	go func() { _ = srv.Serve(ctx, ln, c.Certs.GetCertificate) }()
	c.waitAvailable(dyn)
	cm, err := c.Admin.CoreV1().ConfigMaps(Namespace).Get(ctx, "nftguard-drops-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.CAPEM = []byte(cm.Data["ca.crt"])

	// A second replica serves the same certificate.
	second := newManager()
	go func() { _ = second.Start(ctx) }()
	WaitFor(t, second.Ready, "second replica's certificate loaded")
	a, _ := c.Certs.GetCertificate(nil)
	b, _ := second.GetCertificate(nil)
	if !bytes.Equal(a.Certificate[0], b.Certificate[0]) {
		t.Fatal("two replicas serve different certificates")
	}
	return c
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// register creates the namespace, an ExternalName Service for the server
// (the aggregator refuses loopback endpoints) and the APIService.
func (c *Cluster) register(cfg *rest.Config) {
	t, ctx := c.T, context.Background()
	c.Create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}})
	c.Create(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: Service, Namespace: Namespace},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "localhost"},
	})
	_, portS, _ := net.SplitHostPort(c.Addr)
	port, _ := strconv.Atoi(portS)
	apisvc := dropsapi.APIService(Namespace, Service, port)
	// Installed without a caBundle: the certificate manager publishes it.
	if _, err := dynamic.NewForConfigOrDie(cfg).Resource(apiServices).Create(ctx, apisvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitAvailable waits until the aggregator finds the APIService available.
func (c *Cluster) waitAvailable(dyn dynamic.Interface) {
	t, ctx := c.T, context.Background()
	gvr := apiServices
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := dyn.Resource(gvr).Get(ctx, wire.APIServiceName, metav1.GetOptions{})
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

func (c *Cluster) Create(obj any) {
	c.T.Helper()
	ctx := context.Background()
	var err error
	switch o := obj.(type) {
	case *corev1.Namespace:
		_, err = c.Admin.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
	case *corev1.Service:
		_, err = c.Admin.CoreV1().Services(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *corev1.ServiceAccount:
		_, err = c.Admin.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *corev1.Node:
		_, err = c.Admin.CoreV1().Nodes().Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.ClusterRole:
		_, err = c.Admin.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.RoleBinding:
		_, err = c.Admin.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.ClusterRoleBinding:
		_, err = c.Admin.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
	default:
		c.T.Fatalf("cannot create %T", obj)
	}
	if err != nil && !apierrors.IsAlreadyExists(err) {
		c.T.Fatal(err)
	}
}

// runPod creates a running pod with an address on node.
func (c *Cluster) RunPod(ns, name, node, ip, sa string) *corev1.Pod {
	c.T.Helper()
	ctx := context.Background()
	c.Create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	p, err := c.Admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "c", Image: "example.invalid/c"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		c.T.Fatal(err)
	}
	p.Status.Phase = corev1.PodRunning
	if ip != "" {
		p.Status.PodIP = ip
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	p, err = c.Admin.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil {
		c.T.Fatal(err)
	}
	return p
}

// agentToken returns a token for the agents' service account (or sa),
// bound to a pod on node and to audience.
func (c *Cluster) AgentToken(sa, node, audience string) string {
	c.T.Helper()
	ctx := context.Background()
	c.Create(&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: Namespace}})
	c.Create(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}})
	c.tokens++
	p := c.RunPod(Namespace, fmt.Sprintf("%s-%s-%d", sa, node, c.tokens), node, "", sa)
	tr, err := c.Admin.CoreV1().ServiceAccounts(Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences: []string{audience},
			BoundObjectRef: &authenticationv1.BoundObjectReference{
				Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		c.T.Fatal(err)
	}
	return tr.Status.Token
}

func (c *Cluster) HTTPClient(cert *tls.Certificate) *http.Client {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(c.CAPEM)
	tc := &tls.Config{RootCAs: roots, ServerName: Service + "." + Namespace + ".svc"}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 30 * time.Second}
}

// push sends lines as node with token and returns the HTTP status.
func (c *Cluster) Push(token, node, stream string, first uint64, lines []audit.Event) (int, wire.PushResponse) {
	c.T.Helper()
	body, err := json.Marshal(wire.PushRequest{Node: node, Stream: stream, First: first, Lines: lines})
	if err != nil {
		c.T.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, "https://"+c.Addr+wire.PushPath, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.HTTPClient(nil).Do(req)
	if err != nil {
		c.T.Fatal(err)
	}
	defer resp.Body.Close()
	var pr wire.PushResponse
	_ = json.NewDecoder(resp.Body).Decode(&pr)
	return resp.StatusCode, pr
}

// user returns a client authenticated as a new user, with the given
// ClusterRole bound in each namespace ("" binds it cluster-wide).
func (c *Cluster) User(name string, grants map[string][]string) kubernetes.Interface {
	c.T.Helper()
	u, err := c.Env.AddUser(envtest.User{Name: name}, nil)
	if err != nil {
		c.T.Fatal(err)
	}
	for ns, roles := range grants {
		for _, role := range roles {
			ref := rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role}
			subj := []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: name}}
			meta := metav1.ObjectMeta{Name: name + "-" + role, Namespace: ns}
			if ns == "" {
				c.Create(&rbacv1.ClusterRoleBinding{ObjectMeta: meta, RoleRef: ref, Subjects: subj})
			} else {
				c.Create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
				c.Create(&rbacv1.RoleBinding{ObjectMeta: meta, RoleRef: ref, Subjects: subj})
			}
		}
	}
	return kubernetes.NewForConfigOrDie(u.Config())
}

var apiServices = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}

// Counter is the value of a counter the drops server exports, summed over
// its labels.
func (c *Cluster) Counter(name string) float64 {
	c.T.Helper()
	mfs, err := c.Registry.Gather()
	if err != nil {
		c.T.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// WaitFor polls cond until it holds; the deadline only catches a hang.
func WaitFor(t testing.TB, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// DirectGet sends a read straight to the drops server as the API server's
// front proxy would, for user (no aggregator in between).
func (c *Cluster) DirectGet(path, user string) ([]byte, error) {
	c.T.Helper()
	if c.proxyCert == nil {
		crt, key, err := c.FrontCA.Issue(&x509.Certificate{Subject: pkix.Name{CommonName: testenv.FrontProxyClientName},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, time.Hour)
		if err != nil {
			return nil, err
		}
		pair, err := tls.X509KeyPair(crt, key)
		if err != nil {
			return nil, err
		}
		c.proxyCert = &pair
	}
	req, err := http.NewRequest(http.MethodGet, "https://"+c.Addr+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Remote-User", user)
	req.Header.Set("X-Remote-Group", "system:authenticated")
	resp, err := c.HTTPClient(c.proxyCert).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %s", resp.Status, b)
	}
	return b, err
}
