// Package conformance holds the shapes of upstream Kubernetes'
// NetworkPolicy e2e suite: its layout (namespaces x, y, z with pods a, b,
// c), its reachability model, its policy cases, and the checks that probe
// the full matrix. The namespace-only e2e suite and the real-node suite run
// the same cases; the real-node one probes through each pod's Service
// ClusterIP, as upstream does.
package conformance

import (
	"fmt"
	"slices"
	"strings"

	"github.com/nftguard/nftguard/test/localcluster"
)

// The upstream NetworkPolicy e2e layout: namespaces x, y, z with pods a, b, c.
var (
	Namespaces = []string{"x", "y", "z"}
	PodNames   = []string{"a", "b", "c"}
)

// Topology is the layout on two nodes (localcluster.ConformanceTopology).
func Topology() *localcluster.Topology {
	return localcluster.ConformanceTopology(Namespaces, PodNames)
}

// AllPods lists "ns/pod" for the nine conformance pods.
func AllPods() []string {
	var out []string
	for _, ns := range Namespaces {
		for _, p := range PodNames {
			out = append(out, ns+"/"+p)
		}
	}
	return out
}

// Reachability is the expected outcome of every probe of a matrix, as in
// the upstream suite's model: start from "all allowed" and carve out.
type Reachability struct {
	pods     []string
	expected map[[2]string]bool
}

// NewReachability expects every pair to be allowed (or denied).
func NewReachability(allowed bool) *Reachability {
	r := &Reachability{pods: AllPods(), expected: map[[2]string]bool{}}
	for _, f := range r.pods {
		for _, t := range r.pods {
			r.expected[[2]string{f, t}] = allowed
		}
	}
	return r
}

// match reports whether a pod key matches a pattern: "x/a", "x/*", "*/a", "*/*".
func match(pattern, pod string) bool {
	pns, pname, _ := strings.Cut(pattern, "/")
	ns, name, _ := strings.Cut(pod, "/")
	return (pns == "*" || pns == ns) && (pname == "*" || pname == name)
}

// Set sets every pair from a pod matching from to a pod matching to.
func (r *Reachability) Set(from, to string, allowed bool) *Reachability {
	for _, f := range r.pods {
		for _, t := range r.pods {
			if match(from, f) && match(to, t) {
				r.expected[[2]string{f, t}] = allowed
			}
		}
	}
	return r
}

// Expected reports the expectation of one pair. A pod always reaches itself:
// traffic to one's own address never leaves the pod's namespace.
func (r *Reachability) Expected(from, to string) bool {
	if from == to {
		return true
	}
	return r.expected[[2]string{from, to}]
}

// Agrees reports whether a probe's outcome meets the expectation of its
// cell: an allowed cell must connect; a denied cell must get no answer at
// all. A refusal meets neither: it comes from the target (nothing serves the
// port), so it says nothing about the policy.
func Agrees(allowed bool, o localcluster.Outcome) bool {
	if allowed {
		return o == localcluster.Connected
	}
	return o == localcluster.Blocked
}

// Table prints a matrix of "." (connected), "X" (blocked) and "R"
// (refused), marking cells that differ from the expectation with "*".
func (r *Reachability) Table(got map[[2]string]localcluster.Outcome) (string, int) {
	var b strings.Builder
	b.WriteString("from\\to")
	for _, t := range r.pods {
		fmt.Fprintf(&b, " %4s", t)
	}
	b.WriteString("\n")
	wrong := 0
	for _, f := range r.pods {
		fmt.Fprintf(&b, "%7s", f)
		for _, t := range r.pods {
			o, ok := got[[2]string{f, t}]
			cell := map[localcluster.Outcome]string{localcluster.Connected: ".", localcluster.Blocked: "X", localcluster.Refused: "R"}[o]
			if !ok {
				cell = "?"
			}
			if ok && !Agrees(r.Expected(f, t), o) {
				cell += "*"
				wrong++
			}
			fmt.Fprintf(&b, " %4s", cell)
		}
		b.WriteString("\n")
	}
	return b.String(), wrong
}

// Denied lists the pairs expected to be blocked, sorted.
func (r *Reachability) Denied() [][2]string {
	var out [][2]string
	for k, v := range r.expected {
		if !v && k[0] != k[1] {
			out = append(out, k)
		}
	}
	slices.SortFunc(out, func(a, b [2]string) int { return strings.Compare(a[0]+a[1], b[0]+b[1]) })
	return out
}
