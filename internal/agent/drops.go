package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-logr/logr"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authenticationclient "k8s.io/client-go/kubernetes/typed/authentication/v1"
	authorizationclient "k8s.io/client-go/kubernetes/typed/authorization/v1"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/audit"
)

// DropsPath is the path of the drops endpoint.
const DropsPath = "/drops"

// The permission a caller needs to read a node's drops: get on the
// subresource "drops" of that node's NodeRuleSet. The subresource is not
// served by the API server; it exists only in RBAC rules, so that reading
// drops can be granted per node without granting anything else:
//
//	rules:
//	- apiGroups: [nftguard.io]
//	  resources: [noderulesets/drops]
//	  verbs: [get]
const (
	DropsResource    = "noderulesets"
	DropsSubresource = "drops"
	DropsVerb        = "get"
)

// RecentLines is what the drops endpoint reads: the drop log's recent lines.
// audit.Logger implements it.
type RecentLines interface {
	// Recent returns the recent lines, oldest first.
	Recent() []audit.Event
	// RecentCapacity is the most lines Recent returns.
	RecentCapacity() int
}

// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// DropsServer serves a read-only summary of the node's recent drops over
// HTTPS. Every request must carry a bearer token that the API server
// authenticates (TokenReview) and authorizes (SubjectAccessReview for get on
// noderulesets/drops of this node); anything else is refused before the log
// is read. It answers GET /drops?namespace=&pod=&policy=&since=&action=
// with an audit.Summary in JSON.
type DropsServer struct {
	// BindAddress is host:port to listen on.
	BindAddress          string
	NodeName             string
	Lines                RecentLines
	TokenReviews         authenticationclient.TokenReviewInterface
	SubjectAccessReviews authorizationclient.SubjectAccessReviewInterface
	// CertDir holds tls.crt and tls.key. Empty: a self-signed certificate is
	// generated at start (clients must then skip verification or pin it).
	CertDir string
	// MaxConcurrent bounds the requests being authenticated or answered at
	// once (default 4); others get 429.
	MaxConcurrent int
	Log           logr.Logger
	Now           func() time.Time

	// Ready, when not nil, receives the listening address once serving.
	Ready chan<- string
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: every agent serves.
func (s *DropsServer) NeedLeaderElection() bool { return false }

// Start listens on BindAddress and serves until ctx is done.
func (s *DropsServer) Start(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.BindAddress)
	if err != nil {
		return fmt.Errorf("drops endpoint: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves on ln until ctx is done.
func (s *DropsServer) Serve(ctx context.Context, ln net.Listener) error {
	cert, err := s.certificate()
	if err != nil {
		ln.Close()
		return err
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		MaxHeaderBytes:    64 << 10,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	sum := sha256.Sum256(leaf.Raw)
	s.Log.Info("Serving drops", "address", ln.Addr().String(), "path", DropsPath, "certSHA256", hex.EncodeToString(sum[:]))
	if s.Ready != nil {
		s.Ready <- ln.Addr().String()
	}
	if err := serveUntilDone(ctx, srv, func() error { return srv.ServeTLS(ln, "", "") }); err != nil {
		return fmt.Errorf("drops endpoint: %w", err)
	}
	return nil
}

// Handler is the endpoint's HTTP handler, authentication included.
func (s *DropsServer) Handler() http.Handler {
	n := s.MaxConcurrent
	if n <= 0 {
		n = 4
	}
	slots := make(chan struct{}, n)
	mux := http.NewServeMux()
	mux.HandleFunc(DropsPath, func(w http.ResponseWriter, r *http.Request) {
		select {
		case slots <- struct{}{}:
			defer func() { <-slots }()
		default:
			httpError(w, http.StatusTooManyRequests, "too many requests")
			return
		}
		if r.Method != http.MethodGet {
			httpError(w, http.StatusMethodNotAllowed, "only GET")
			return
		}
		if code, msg := s.authorize(r); code != 0 {
			httpError(w, code, msg)
			return
		}
		q, err := ParseDropsQuery(r.URL.Query(), s.now())
		if err != nil {
			httpError(w, http.StatusBadRequest, err.Error())
			return
		}
		lines := s.Lines.Recent()
		sum := audit.Summarize(s.NodeName, lines, q, len(lines) >= s.Lines.RecentCapacity())
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(sum)
	})
	return mux
}

// authorize returns 0 when the request's bearer token belongs to a user the
// API server allows to read this node's drops, else an HTTP status and why.
func (s *DropsServer) authorize(r *http.Request) (int, string) {
	h := r.Header.Get("Authorization")
	token, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || strings.TrimSpace(token) == "" {
		return http.StatusUnauthorized, "a bearer token is required (the drops endpoint authenticates callers with the API server's TokenReview)"
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	tr, err := s.TokenReviews.Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: strings.TrimSpace(token)},
	}, metav1.CreateOptions{})
	if err != nil {
		s.Log.Error(err, "Reviewing a drops caller's token")
		return http.StatusServiceUnavailable, "cannot review the token with the API server"
	}
	if !tr.Status.Authenticated {
		return http.StatusUnauthorized, "the token is not valid"
	}
	u := tr.Status.User
	extra := map[string]authorizationv1.ExtraValue{}
	for k, v := range u.Extra {
		extra[k] = authorizationv1.ExtraValue(v)
	}
	sar, err := s.SubjectAccessReviews.Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User: u.Username, UID: u.UID, Groups: u.Groups, Extra: extra,
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Group: v1alpha1.GroupVersion.Group, Resource: DropsResource, Subresource: DropsSubresource,
				Verb: DropsVerb, Name: s.NodeName,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		s.Log.Error(err, "Authorizing a drops caller", "user", u.Username)
		return http.StatusServiceUnavailable, "cannot authorize the caller with the API server"
	}
	if !sar.Status.Allowed {
		return http.StatusForbidden, fmt.Sprintf("%s may not %s %s/%s %s in API group %s",
			u.Username, DropsVerb, DropsResource, DropsSubresource, s.NodeName, v1alpha1.GroupVersion.Group)
	}
	s.Log.V(1).Info("Serving drops", "user", u.Username)
	return 0, ""
}

// ParseDropsQuery reads the query parameters namespace, pod, policy, since
// (a duration such as 1h, or an RFC 3339 time) and action (drop or audit).
func ParseDropsQuery(v map[string][]string, now time.Time) (audit.Query, error) {
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

func httpError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

func (s *DropsServer) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// certificate loads tls.crt and tls.key from CertDir, or generates a
// self-signed certificate for the node.
func (s *DropsServer) certificate() (tls.Certificate, error) {
	if s.CertDir != "" {
		c, err := tls.LoadX509KeyPair(filepath.Join(s.CertDir, "tls.crt"), filepath.Join(s.CertDir, "tls.key"))
		if err != nil {
			return c, fmt.Errorf("drops endpoint certificate: %w", err)
		}
		return c, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, err
	}
	host, _, _ := net.SplitHostPort(s.BindAddress)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "nftguard-agent " + s.NodeName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(1, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{s.NodeName},
	}
	if hn, err := os.Hostname(); err == nil && hn != s.NodeName {
		tmpl.DNSNames = append(tmpl.DNSNames, hn)
	}
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		tmpl.IPAddresses = []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
