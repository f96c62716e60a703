package dropsapi

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nftguard/nftguard/internal/audit"
)

// DefaultMaxPolicyLabels caps the distinct policy label values of
// nftguard_drops_total.
const DefaultMaxPolicyLabels = 1000

// Metrics are the drops server's Prometheus metrics. Every replica receives
// every agent's lines, so every replica exports the same counts (from when
// it started): scrape one, or take the maximum across replicas, never the
// sum.
type Metrics struct {
	drops    *prometheus.CounterVec
	unnamedC prometheus.Counter
	gapC     prometheus.Counter
	pushes   *prometheus.CounterVec

	mu          sync.Mutex
	policies    map[string]struct{}
	maxPolicies int
}

// NewMetrics registers the metrics with reg (nil: not registered).
// maxPolicies caps the policy label values; later ones are "other".
func NewMetrics(reg prometheus.Registerer, maxPolicies int) (*Metrics, error) {
	if maxPolicies <= 0 {
		maxPolicies = DefaultMaxPolicyLabels
	}
	m := &Metrics{
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "nftguard", Name: "drops_total",
			Help: "Packets the dataplane logged as dropped (action drop) or as dropped-in-Audit-mode (action audit), " +
				"by policy and direction, from every node's drop log. A packet whose pod several policies isolate " +
				"counts once for each of them; one no known policy isolates has policy \"unknown\". Policies beyond " +
				"a fixed number are labelled \"other\". Every replica counts every node: do not sum replicas.",
		}, []string{"policy", "direction", "action"}),
		unnamedC: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "nftguard", Subsystem: "drops", Name: "unnamed_addresses_total",
			Help: "Endpoints of pushed lines whose address no known pod owns (spoofed, host or external sources). " +
				"They cost this counter and no API call.",
		}),
		gapC: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "nftguard", Subsystem: "drops", Name: "push_gap_lines_total",
			Help: "Lines an agent no longer held when it could push them to this replica.",
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "nftguard", Subsystem: "drops", Name: "push_requests_total",
			Help: "Push requests from agents, by HTTP status code.",
		}, []string{"code"}),
		policies:    map[string]struct{}{},
		maxPolicies: maxPolicies,
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.drops, m.unnamedC, m.gapC, m.pushes} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *Metrics) policyLabel(p string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.policies[p]; ok {
		return p
	}
	if len(m.policies) >= m.maxPolicies {
		return "other"
	}
	m.policies[p] = struct{}{}
	return p
}

func (m *Metrics) observe(ev *audit.Event) {
	if len(ev.Policies) == 0 {
		m.drops.WithLabelValues("unknown", string(ev.Direction), string(ev.Action)).Add(float64(ev.Count))
		return
	}
	for _, p := range ev.Policies {
		m.drops.WithLabelValues(m.policyLabel(p), string(ev.Direction), string(ev.Action)).Add(float64(ev.Count))
	}
}

func (m *Metrics) unnamed()        { m.unnamedC.Inc() }
func (m *Metrics) gap(n uint64)    { m.gapC.Add(float64(n)) }
func (m *Metrics) pushed(code int) { m.pushes.WithLabelValues(statusLabel(code)).Inc() }

func statusLabel(code int) string {
	switch code {
	case 200:
		return "200"
	case 400:
		return "400"
	case 401:
		return "401"
	case 403:
		return "403"
	case 413:
		return "413"
	case 429:
		return "429"
	case 503:
		return "503"
	}
	return "other"
}
