package agent_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/nftguard/nftguard/internal/agent"
	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/testenv"
)

// lines is a fixed drop log.
type lines []audit.Event

func (l lines) Recent() []audit.Event { return l }
func (l lines) RecentCapacity() int   { return 100 }

// TestDropsEndpoint runs the drops endpoint against a real API server:
// callers are authenticated with ServiceAccount tokens from TokenRequest and
// authorized by RBAC on noderulesets/drops of the node.
func TestDropsEndpoint(t *testing.T) {
	cfg := testenv.Start(t)
	cs := kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	const ns = "drops-test"
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))
	for _, sa := range []string{"reader", "stranger"} {
		must(cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}))
	}
	must(cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "drops-reader-node-a"},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{"nftguard.io"}, Resources: []string{"noderulesets/drops"},
			Verbs: []string{"get"}, ResourceNames: []string{"node-a"},
		}},
	}, metav1.CreateOptions{}))
	must(cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "drops-reader-node-a"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "drops-reader-node-a"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: "reader"}},
	}, metav1.CreateOptions{}))
	token := func(sa string) string {
		tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](600)},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	reader, stranger := token("reader"), token("stranger")

	now := time.Now().UTC()
	web := audit.Endpoint{IP: netip.MustParseAddr("198.18.0.5"), Port: 40000, Namespace: "shop", Pod: "web"}
	api := audit.Endpoint{IP: netip.MustParseAddr("198.18.1.7"), Port: 8080, Namespace: "backend", Pod: "api"}
	log := lines{
		{Time: now.Add(-2 * time.Hour), Node: "node-a", Action: audit.ActionDrop, Direction: audit.Ingress,
			Protocol: audit.ProtocolTCP, Src: web, Dst: api, Policies: []string{"NetworkPolicy/backend/api"}, Count: 9},
		{Time: now.Add(-time.Minute), Node: "node-a", Action: audit.ActionDrop, Direction: audit.Ingress,
			Protocol: audit.ProtocolTCP, Src: web, Dst: api, Policies: []string{"NetworkPolicy/backend/api"}, Count: 2},
		{Time: now.Add(-30 * time.Second), Node: "node-a", Action: audit.ActionDrop, Direction: audit.Ingress,
			Protocol: audit.ProtocolTCP, Src: web, Dst: api, Policies: []string{"NetworkPolicy/backend/api"}, Count: 1},
		{Time: now.Add(-10 * time.Second), Node: "node-a", Action: audit.ActionDrop, Direction: audit.Egress,
			Protocol: audit.ProtocolUDP, Src: api, Dst: audit.Endpoint{IP: netip.MustParseAddr("198.18.9.9"), Port: 53},
			Policies: []string{"DefaultDeny/baseline"}, Count: 4},
	}

	serve := func(node string) string {
		ready := make(chan string, 1)
		srv := &agent.DropsServer{
			BindAddress: "127.0.0.1:0", NodeName: node, Lines: log,
			TokenReviews:         cs.AuthenticationV1().TokenReviews(),
			SubjectAccessReviews: cs.AuthorizationV1().SubjectAccessReviews(),
			Log:                  zap.New(zap.WriteTo(io.Discard)),
			Ready:                ready,
		}
		go func() {
			if err := srv.Start(ctx); err != nil {
				t.Error(err)
			}
		}()
		return "https://" + <-ready + agent.DropsPath
	}
	nodeA, nodeB := serve("node-a"), serve("node-b")
	httpc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		// The endpoint's certificate is self-signed in this test.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec
	}}
	get := func(endpoint, token string, q url.Values) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+"?"+q.Encode(), nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := httpc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}

	for _, tc := range []struct {
		name, endpoint, token string
		want                  int
		msg                   string
	}{
		{"no credentials", nodeA, "", http.StatusUnauthorized, "bearer token is required"},
		{"a forged token", nodeA, "not-a-token", http.StatusUnauthorized, "not valid"},
		{"a valid token without permission", nodeA, stranger, http.StatusForbidden,
			"system:serviceaccount:drops-test:stranger may not get noderulesets/drops node-a"},
		{"permission for another node only", nodeB, reader, http.StatusForbidden, "may not get noderulesets/drops node-b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := get(tc.endpoint, tc.token, nil)
			if code != tc.want || !strings.Contains(string(body), tc.msg) {
				t.Errorf("got %d %s, want %d containing %q", code, body, tc.want, tc.msg)
			}
			if strings.Contains(string(body), "198.18.") {
				t.Errorf("refused request leaked drops: %s", body)
			}
		})
	}

	t.Run("allowed, grouped by flow and filtered", func(t *testing.T) {
		code, body := get(nodeA, reader, url.Values{"since": {"1h"}, "namespace": {"shop"}})
		if code != http.StatusOK {
			t.Fatalf("got %d %s", code, body)
		}
		var s audit.Summary
		if err := json.Unmarshal(body, &s); err != nil {
			t.Fatal(err)
		}
		if len(s.Flows) != 1 {
			t.Fatalf("flows = %+v, want the one web -> api flow of the last hour", s.Flows)
		}
		f := s.Flows[0]
		if f.Count != 3 || f.Lines != 2 || f.Src.Pod != "web" || f.Dst.Port != 8080 || f.Node != "node-a" {
			t.Errorf("flow = %+v", f)
		}
		code, body = get(nodeA, reader, url.Values{"policy": {"baseline"}})
		if err := json.Unmarshal(body, &s); err != nil || code != http.StatusOK || len(s.Flows) != 1 || s.Flows[0].Count != 4 {
			t.Errorf("policy filter: %d %s", code, body)
		}
	})

	t.Run("a bad query is refused", func(t *testing.T) {
		code, body := get(nodeA, reader, url.Values{"since": {"yesterday"}})
		if code != http.StatusBadRequest || !strings.Contains(string(body), "neither a duration") {
			t.Errorf("got %d %s", code, body)
		}
	})
}
