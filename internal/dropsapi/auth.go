package dropsapi

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nftguard/nftguard/internal/dropsapi/wire"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// reviewCache remembers answers of the API server for a while, so that a
// busy reader or a pushing agent costs one review per TTL. It holds at most
// maxReviews answers; when full, it forgets the expired ones, or all.
type reviewCache struct {
	now func() time.Time
	mu  sync.Mutex
	m   map[[32]byte]review
}

type review struct {
	ok      bool
	code    int
	detail  string
	expires time.Time
}

const maxReviews = 10000

func newReviewCache(now func() time.Time) *reviewCache {
	return &reviewCache{now: now, m: map[[32]byte]review{}}
}

func (c *reviewCache) get(k [32]byte) (review, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.m[k]
	if !ok || !c.now().Before(r.expires) {
		return review{}, false
	}
	return r, true
}

func (c *reviewCache) put(k [32]byte, r review, ttl time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= maxReviews {
		now := c.now()
		for k, r := range c.m {
			if !now.Before(r.expires) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= maxReviews {
			clear(c.m)
		}
	}
	r.expires = c.now().Add(ttl)
	c.m[k] = r
}

func key(parts ...string) [32]byte {
	return sha256.Sum256([]byte(strings.Join(parts, "\x00")))
}

// allowed asks the API server (through a SubjectAccessReview, cached)
// whether the request's user may verb resource in namespace ("" for the
// cluster scope).
func (s *Server) allowed(r *http.Request, verb, group, resource, namespace string) (bool, error) {
	u := requestUser(r)
	if u == nil {
		return false, errors.New("no user")
	}
	groups := slices.Clone(u.GetGroups())
	sort.Strings(groups)
	extraKeys := make([]string, 0, len(u.GetExtra()))
	for k := range u.GetExtra() {
		extraKeys = append(extraKeys, k)
	}
	sort.Strings(extraKeys)
	parts := []string{"sar", u.GetName(), u.GetUID(), strings.Join(groups, ","), verb, group, resource, namespace}
	extra := map[string]authorizationv1.ExtraValue{}
	for _, k := range extraKeys {
		extra[k] = authorizationv1.ExtraValue(u.GetExtra()[k])
		parts = append(parts, k+"="+strings.Join(u.GetExtra()[k], ","))
	}
	k := key(parts...)
	if rv, ok := s.reviews.get(k); ok {
		return rv.ok, nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	sar, err := s.cfg.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User: u.GetName(), UID: u.GetUID(), Groups: u.GetGroups(), Extra: extra,
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: verb, Group: group, Resource: resource, Namespace: namespace,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("subject access review: %w", err)
	}
	s.reviews.put(k, review{ok: sar.Status.Allowed}, s.cfg.ReviewTTL)
	return sar.Status.Allowed, nil
}

// agentTTL is how long an accepted agent token is trusted without another
// TokenReview. A deleted agent pod's token is refused after it at the latest.
const agentTTL = time.Minute

// agentNode authenticates an agent's push: its bearer token must be a
// service-account token for the Audience, of the agents' service account,
// bound to a pod on a node. It returns that node, or an HTTP status and why.
func (s *Server) agentNode(r *http.Request) (string, int, string) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	token = strings.TrimSpace(token)
	if !ok || token == "" {
		return "", http.StatusUnauthorized, "a bearer token for the audience " + wire.Audience + " is required"
	}
	k := key("token", token)
	if rv, ok := s.reviews.get(k); ok {
		if !rv.ok {
			return "", rv.code, rv.detail
		}
		return rv.detail, 0, ""
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	tr, err := s.cfg.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{wire.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		s.cfg.Log.Error(err, "Reviewing an agent's token")
		return "", http.StatusServiceUnavailable, "cannot review the token with the API server"
	}
	node, why := s.checkAgent(&tr.Status)
	if why != "" {
		code := http.StatusForbidden
		if !tr.Status.Authenticated {
			code = http.StatusUnauthorized
		}
		s.reviews.put(k, review{code: code, detail: why}, s.cfg.ReviewTTL)
		return "", code, why
	}
	s.reviews.put(k, review{ok: true, detail: node}, agentTTL)
	return node, 0, ""
}

// checkAgent returns the node of an agent's reviewed token, or why it is
// refused.
func (s *Server) checkAgent(st *authenticationv1.TokenReviewStatus) (node, why string) {
	switch {
	case !st.Authenticated:
		return "", "the token is not valid for the audience " + wire.Audience
	case !slices.Contains(st.Audiences, wire.Audience):
		return "", "the token is not bound to the audience " + wire.Audience
	case st.User.Username != s.cfg.AgentUsername:
		return "", fmt.Sprintf("%q is not the agents' service account %q", st.User.Username, s.cfg.AgentUsername)
	}
	nodes := st.User.Extra[wire.NodeNameExtra]
	if len(nodes) != 1 || nodes[0] == "" {
		return "", "the token is not bound to a pod on a node (it has no " + wire.NodeNameExtra + ")"
	}
	return nodes[0], ""
}

// push takes in an agent's lines. The node is the one its token is bound
// to; a request that names another node is refused.
func (s *Server) push(w http.ResponseWriter, r *http.Request) {
	code := http.StatusOK
	defer func() {
		if s.cfg.Metrics != nil {
			s.cfg.Metrics.pushed(code)
		}
	}()
	node, c, why := s.agentNode(r)
	if c != 0 {
		code = c
		writeStatus(w, code, reasonOf(code), why)
		return
	}
	var req wire.PushRequest
	body := http.MaxBytesReader(w, r.Body, s.cfg.MaxPushBytes)
	if err := json.NewDecoder(body).Decode(&req); err != nil {
		code = http.StatusBadRequest
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			code = http.StatusRequestEntityTooLarge
		}
		writeStatus(w, code, reasonOf(code), "push body: "+err.Error())
		return
	}
	if req.Node != node {
		code = http.StatusForbidden
		s.cfg.Log.Info("Refused a push for another node", "tokenNode", node, "claimedNode", req.Node)
		writeStatus(w, code, reasonOf(code), fmt.Sprintf("the token is bound to node %q, not %q", node, req.Node))
		return
	}
	if req.Stream == "" {
		code = http.StatusBadRequest
		writeStatus(w, code, reasonOf(code), "push body: stream is required")
		return
	}
	next := s.cfg.Store.Push(node, &req)
	writeJSON(w, http.StatusOK, wire.PushResponse{Next: next})
}

func reasonOf(code int) metav1.StatusReason {
	switch code {
	case http.StatusUnauthorized:
		return metav1.StatusReasonUnauthorized
	case http.StatusForbidden:
		return metav1.StatusReasonForbidden
	case http.StatusRequestEntityTooLarge:
		return metav1.StatusReasonRequestEntityTooLarge
	case http.StatusServiceUnavailable:
		return metav1.StatusReasonServiceUnavailable
	}
	return metav1.StatusReasonBadRequest
}
