package dropsapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/request/headerrequest"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/client-go/kubernetes"

	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/dropsapi/wire"
)

// The API server publishes its front-proxy (requestheader) configuration in
// this ConfigMap; the controller's ClusterRole may read it by name.
const (
	authConfigNamespace = "kube-system"
	authConfigName      = "extension-apiserver-authentication"
)

// ServerConfig configures a Server.
type ServerConfig struct {
	Store  *Store
	Client kubernetes.Interface
	// AgentUsername is the user agents authenticate as:
	// system:serviceaccount:<namespace>:<service account>.
	AgentUsername string
	Metrics       *Metrics
	Log           logr.Logger
	// ReviewTTL is how long a TokenReview or SubjectAccessReview answer is
	// reused (default 10 s; accepted agent tokens 60 s).
	ReviewTTL time.Duration
	// MaxPushBytes bounds a push body (default 4 MiB).
	MaxPushBytes int64
	// Now defaults to time.Now.
	Now func() time.Time
}

// Server is the drops API's HTTP server: reads from the API server's front
// proxy, and pushes from agents.
type Server struct {
	cfg     ServerConfig
	caCtl   *dynamiccertificates.ConfigMapCAController
	rhCtl   *headerrequest.RequestHeaderAuthRequestController
	users   authenticator.Request
	reviews *reviewCache
}

// NewServer returns a server; Start must run before it authenticates reads.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Store == nil || cfg.Client == nil {
		return nil, errors.New("drops server: a store and a client are required")
	}
	if cfg.AgentUsername == "" {
		return nil, errors.New("drops server: the agents' username is required")
	}
	if cfg.ReviewTTL <= 0 {
		cfg.ReviewTTL = 10 * time.Second
	}
	if cfg.MaxPushBytes <= 0 {
		cfg.MaxPushBytes = 4 << 20
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ca, err := dynamiccertificates.NewDynamicCAFromConfigMapController("front-proxy-client-ca",
		authConfigNamespace, authConfigName, "requestheader-client-ca-file", cfg.Client)
	if err != nil {
		return nil, fmt.Errorf("drops server: %w", err)
	}
	rh := headerrequest.NewRequestHeaderAuthRequestController(authConfigName, authConfigNamespace, cfg.Client,
		"requestheader-username-headers", "requestheader-uid-headers", "requestheader-group-headers",
		"requestheader-extra-headers-prefix", "requestheader-allowed-names")
	s := &Server{cfg: cfg, caCtl: ca, rhCtl: rh, reviews: newReviewCache(cfg.Now)}
	s.users = headerrequest.NewDynamicVerifyOptionsSecure(ca.VerifyOptions,
		headerrequest.StringSliceProviderFunc(rh.AllowedClientNames),
		headerrequest.StringSliceProviderFunc(rh.UsernameHeaders),
		headerrequest.StringSliceProviderFunc(rh.UIDHeaders),
		headerrequest.StringSliceProviderFunc(rh.GroupHeaders),
		headerrequest.StringSliceProviderFunc(rh.ExtraHeaderPrefixes))
	return s, nil
}

// Start loads the front-proxy configuration and follows its changes until
// ctx is done. It fails when the configuration cannot be read (the API
// server has no front proxy, or the Role to read it is missing).
func (s *Server) Start(ctx context.Context) error {
	if err := s.caCtl.RunOnce(ctx); err != nil {
		return fmt.Errorf("drops server: reading the front-proxy client CA from %s/%s: %w", authConfigNamespace, authConfigName, err)
	}
	if err := s.rhCtl.RunOnce(ctx); err != nil {
		return fmt.Errorf("drops server: reading the front-proxy headers from %s/%s: %w", authConfigNamespace, authConfigName, err)
	}
	go s.caCtl.Run(ctx, 1)
	go s.rhCtl.Run(ctx, 1)
	return nil
}

// Serve serves TLS on ln with the certificate that cert returns until ctx
// is done. Client certificates are requested, not required: the front
// proxy presents one, agents authenticate with a token.
func (s *Server) Serve(ctx context.Context, ln net.Listener, cert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10,
		IdleTimeout:       90 * time.Second,
		TLSConfig: &tls.Config{
			GetCertificate: cert,
			ClientAuth:     tls.RequestClientCert,
			MinVersion:     tls.VersionTLS12,
		},
		BaseContext: func(net.Listener) context.Context { return ctx },
		// Handshake errors (clients that go away, probes) are noise at V(1).
		ErrorLog: log.New(logWriter{s.cfg.Log.V(1)}, "", 0),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-errc:
		return fmt.Errorf("drops server: %w", err)
	case <-ctx.Done():
	}
	shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shut)
	return nil
}

// Handler serves the API, the push endpoint and the health checks.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	ok := func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }
	mux.HandleFunc("GET /healthz", ok)
	mux.HandleFunc("GET /readyz", ok)
	mux.HandleFunc("POST "+wire.PushPath, s.push)
	mux.Handle("/", s.authenticated(http.HandlerFunc(s.api)))
	return mux
}

type userKey struct{}

// authenticated admits only requests that the API server's front proxy
// sent, with the user it authenticated in its headers.
func (s *Server) authenticated(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		resp, ok, err := s.users.AuthenticateRequest(r)
		if err != nil || !ok {
			msg := "this API is served through the Kubernetes API server: call it there (kubectl get --raw /apis/" + wire.GroupVersion + "/...)"
			if err != nil {
				msg += ": " + err.Error()
			}
			writeStatus(w, http.StatusUnauthorized, metav1.StatusReasonUnauthorized, msg)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), userKey{}, resp.User)))
	})
}

func requestUser(r *http.Request) user.Info {
	u, _ := r.Context().Value(userKey{}).(user.Info)
	return u
}

// api routes the aggregated API's paths.
func (s *Server) api(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		writeStatus(w, http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed, "the drops API is read-only: only get, list and watch")
		return
	}
	p := strings.TrimSuffix(r.URL.Path, "/")
	switch p {
	case "/apis":
		writeJSON(w, http.StatusOK, groupList())
		return
	case "/apis/" + wire.Group:
		writeJSON(w, http.StatusOK, group())
		return
	case "/apis/" + wire.GroupVersion:
		writeJSON(w, http.StatusOK, resourceList())
		return
	}
	rest, ok := strings.CutPrefix(p, "/apis/"+wire.GroupVersion+"/")
	if !ok {
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, "not found: "+r.URL.Path)
		return
	}
	namespace := ""
	parts := strings.Split(rest, "/")
	if len(parts) == 3 && parts[0] == "namespaces" && parts[1] != "" {
		namespace, parts = parts[1], parts[2:]
	}
	if len(parts) != 1 {
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound,
			"not found: "+r.URL.Path+" (drops and dropcounts are lists: there is no object to get by name)")
		return
	}
	switch parts[0] {
	case wire.ResourceDrops:
		s.drops(w, r, namespace)
	case wire.ResourceDropCounts:
		s.dropCounts(w, r, namespace)
	default:
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, "no resource "+parts[0]+" in "+wire.GroupVersion)
	}
}

func groupList() *metav1.APIGroupList {
	return &metav1.APIGroupList{TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"}, Groups: []metav1.APIGroup{*group()}}
}

func group() *metav1.APIGroup {
	v := metav1.GroupVersionForDiscovery{GroupVersion: wire.GroupVersion, Version: wire.Version}
	return &metav1.APIGroup{TypeMeta: metav1.TypeMeta{Kind: "APIGroup", APIVersion: "v1"}, Name: wire.Group,
		Versions: []metav1.GroupVersionForDiscovery{v}, PreferredVersion: v}
}

func resourceList() *metav1.APIResourceList {
	return &metav1.APIResourceList{
		TypeMeta:     metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
		GroupVersion: wire.GroupVersion,
		APIResources: []metav1.APIResource{
			{Name: wire.ResourceDrops, Namespaced: true, Kind: "Drop", Verbs: metav1.Verbs{"list", "watch"}, Categories: []string{"nftguard"}},
			{Name: wire.ResourceDropCounts, Namespaced: true, Kind: "DropCount", Verbs: metav1.Verbs{"list"}, Categories: []string{"nftguard"}},
		},
	}
}

// queryOf reads the filters of a read: pod, policy, action, since and node.
func (s *Server) queryOf(r *http.Request) (audit.Query, string, error) {
	v := r.URL.Query()
	q, err := ParseQuery(v, s.cfg.Now())
	return q, v.Get("node"), err
}

// ParseQuery reads the query parameters namespace, pod, policy, since (a
// duration such as 1h, or an RFC 3339 time) and action (drop or audit).
func ParseQuery(v map[string][]string, now time.Time) (audit.Query, error) {
	get := func(k string) string {
		if len(v[k]) == 0 {
			return ""
		}
		return v[k][0]
	}
	q := audit.Query{Namespace: get("namespace"), Pod: get("pod"), Policy: get("policy")}
	if s := get("since"); s != "" {
		if d, err := time.ParseDuration(s); err == nil {
			if d < 0 {
				return q, errors.New("since must not be negative")
			}
			q.Since = now.Add(-d)
		} else if t, err := time.Parse(time.RFC3339, s); err == nil {
			q.Since = t
		} else {
			return q, fmt.Errorf("since %q is neither a duration (1h) nor an RFC 3339 time", s)
		}
	}
	switch a := audit.Action(get("action")); a {
	case "", audit.ActionDrop, audit.ActionAudit:
		q.Action = a
	default:
		return q, fmt.Errorf("action %q is neither drop nor audit", a)
	}
	return q, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeStatus(w http.ResponseWriter, code int, reason metav1.StatusReason, msg string) {
	writeJSON(w, code, status(code, reason, msg))
}

func status(code int, reason metav1.StatusReason, msg string) *metav1.Status {
	return &metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Code: int32(code), Reason: reason, Message: msg,
	}
}

type logWriter struct{ log logr.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Info("HTTP server", "message", strings.TrimSpace(string(p)))
	return len(p), nil
}
