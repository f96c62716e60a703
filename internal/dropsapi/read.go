package dropsapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/dropsapi/wire"
)

// The rules of visibility:
//
//  1. A line belongs to the namespace whose policy dropped it: that of the
//     local pod whose isolation logged it (OwnerNamespace). A user who may
//     list drops in a namespace sees that namespace's lines.
//  2. The other side's pod name is withheld ("redacted") unless the user may
//     also list pods in the other side's namespace. Its namespace and
//     address stay: the user's own pod sent or received the packet.
//  3. A cluster-wide read (no namespace in the path) needs list (or watch)
//     on drops cluster-wide. Only it shows lost-record lines, which belong
//     to no namespace, and lines whose local pod the agent could not name.

// view is what one request may see.
type view struct {
	s         *Server
	r         *http.Request
	namespace string // "" for cluster-wide
	pods      map[string]bool
	err       error
}

func (s *Server) newView(r *http.Request, namespace string) *view {
	return &view{s: s, r: r, namespace: namespace, pods: map[string]bool{}}
}

// owns reports whether the line belongs to the view (rule 1 and 3).
func (v *view) owns(ev *audit.Event) bool {
	return v.namespace == "" || OwnerNamespace(ev) == v.namespace
}

// redact withholds the peer's pod name unless the user may list pods in
// its namespace (rule 2), and reports whether it did.
func (v *view) redact(ev *audit.Event) bool {
	peer := &ev.Src
	if ev.Direction == audit.Egress {
		peer = &ev.Dst
	}
	if peer.Pod == "" {
		return false
	}
	allowed, ok := v.pods[peer.Namespace]
	if !ok {
		var err error
		allowed, err = v.s.allowed(v.r, "list", "", "pods", peer.Namespace)
		if err != nil {
			v.err = err
			allowed = false
		}
		v.pods[peer.Namespace] = allowed
	}
	if allowed {
		return false
	}
	peer.Pod = ""
	return true
}

// authorize checks verb on resource in the namespace of the read, and
// writes the refusal when it is not allowed.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, verb, resource, namespace string) bool {
	ok, err := s.allowed(r, verb, wire.Group, resource, namespace)
	if err != nil {
		s.cfg.Log.Error(err, "Authorizing a drops read", "user", requestUser(r).GetName())
		writeStatus(w, http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable,
			"cannot authorize the request with the API server; try again")
		return false
	}
	if ok {
		return true
	}
	where := "bound cluster-wide (a ClusterRoleBinding)"
	if namespace != "" {
		where = fmt.Sprintf("bound in the namespace %q (a RoleBinding there)", namespace)
	}
	writeStatus(w, http.StatusForbidden, metav1.StatusReasonForbidden, fmt.Sprintf(
		"user %q cannot %s resource %q in API group %q %s: it needs %s on %s.%s %s, for example to the ClusterRole nftguard-drops-reader",
		requestUser(r).GetName(), verb, resource, wire.Group, scope(namespace), verb, resource, wire.Group, where))
	return false
}

func scope(namespace string) string {
	if namespace == "" {
		return "at the cluster scope"
	}
	return fmt.Sprintf("in the namespace %q", namespace)
}

func (s *Server) drops(w http.ResponseWriter, r *http.Request, namespace string) {
	q, node, err := s.queryOf(r)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
		return
	}
	watch := isTrue(r.URL.Query().Get("watch"))
	verb := "list"
	if watch {
		verb = "watch"
	}
	if !s.authorize(w, r, verb, wire.ResourceDrops, namespace) {
		return
	}
	if namespace != "" {
		q.Namespace = "" // the path's namespace selects by owner, not by either side
	}
	pod := q.Pod
	q.Pod = "" // matched after redaction, so that a withheld name cannot be probed
	v := s.newView(r, namespace)
	if watch {
		s.watch(w, r, v, q, pod, node)
		return
	}
	keep := func(ev *audit.Event) bool {
		if node != "" && ev.Node != node {
			return false
		}
		if ev.Action == audit.ActionLost {
			return namespace == ""
		}
		return v.owns(ev) && q.Matches(ev)
	}
	out := wire.DropList{TypeMeta: metav1.TypeMeta{Kind: "DropList", APIVersion: wire.GroupVersion}, Nodes: []string{}}
	parts := []audit.Summary{}
	for _, nl := range s.cfg.Store.Lines(keep) {
		out.Nodes = append(out.Nodes, nl.Node)
		lines := nl.Lines[:0]
		for i := range nl.Lines {
			ev := &nl.Lines[i]
			if ev.Action != audit.ActionLost {
				if v.redact(ev) {
					out.Redacted++
				}
				if pod != "" && ev.Src.Pod != pod && ev.Dst.Pod != pod {
					continue
				}
			}
			lines = append(lines, *ev)
		}
		sum := audit.Summarize(nl.Node, lines, q, false)
		sum.Oldest = nl.Oldest
		sum.Truncated = !nl.Forgotten.IsZero() && (q.Since.IsZero() || !nl.Forgotten.Before(q.Since))
		parts = append(parts, sum)
	}
	if v.err != nil {
		s.cfg.Log.Error(v.err, "Authorizing pod names for a drops read; names withheld", "user", requestUser(r).GetName())
	}
	m := audit.Merge(parts...)
	out.Items, out.Lost, out.Oldest, out.Truncated = m.Flows, m.Lost, m.Oldest, m.Truncated
	if out.Items == nil {
		out.Items = []audit.Flow{}
	}
	writeJSON(w, http.StatusOK, &out)
}

// watch streams new lines as watch events until the client goes away or
// falls too far behind (then an ERROR event with code 410 ends it, and the
// client lists again).
func (s *Server) watch(w http.ResponseWriter, r *http.Request, v *view, q audit.Query, pod, node string) {
	fl, ok := w.(http.Flusher)
	if !ok {
		writeStatus(w, http.StatusInternalServerError, metav1.StatusReasonInternalError, "streaming is not supported")
		return
	}
	sub := s.cfg.Store.Subscribe()
	defer sub.Close()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Transfer-Encoding", "chunked")
	w.WriteHeader(http.StatusOK)
	fl.Flush()
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case ev, open := <-sub.C:
			if !open {
				if sub.Overflowed() {
					_ = enc.Encode(wire.WatchEvent{Type: "ERROR", Object: status(http.StatusGone, metav1.StatusReasonExpired,
						"the watch fell too far behind the drops; list and watch again")})
					fl.Flush()
				}
				return
			}
			if (node != "" && ev.Node != node) || ev.Action == audit.ActionLost && v.namespace != "" {
				continue
			}
			if ev.Action != audit.ActionLost {
				if !v.owns(&ev) || !q.Matches(&ev) {
					continue
				}
				v.redact(&ev)
				if pod != "" && ev.Src.Pod != pod && ev.Dst.Pod != pod {
					continue
				}
			}
			if err := enc.Encode(wire.WatchEvent{Type: "ADDED", Object: wire.Drop{
				TypeMeta: metav1.TypeMeta{Kind: "Drop", APIVersion: wire.GroupVersion}, Line: ev}}); err != nil {
				return
			}
			fl.Flush()
		}
	}
}

func (s *Server) dropCounts(w http.ResponseWriter, r *http.Request, namespace string) {
	q, _, err := s.queryOf(r)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
		return
	}
	if isTrue(r.URL.Query().Get("watch")) {
		writeStatus(w, http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed, "dropcounts cannot be watched: list them")
		return
	}
	if !s.authorize(w, r, "list", wire.ResourceDropCounts, namespace) {
		return
	}
	policy := audit.Query{Policy: q.Policy}
	items := s.cfg.Store.Counts(func(c *wire.DropCount) bool {
		if namespace != "" && c.Namespace != namespace {
			return false
		}
		if q.Action != "" && c.Action != q.Action {
			return false
		}
		return q.Policy == "" || policy.Matches(&audit.Event{Action: c.Action, Policies: []string{c.Policy}})
	})
	writeJSON(w, http.StatusOK, &wire.DropCountList{
		TypeMeta: metav1.TypeMeta{Kind: "DropCountList", APIVersion: wire.GroupVersion},
		Since:    metav1.NewTime(s.cfg.Store.Started()),
		Items:    items,
	})
}

func isTrue(s string) bool {
	b, err := strconv.ParseBool(s)
	return err == nil && b
}
