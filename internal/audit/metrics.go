package audit

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	// policyOther replaces policy label values beyond the cap.
	policyOther = "other"
	// policyUnknown labels packets whose local pod has no known policies.
	policyUnknown = "unknown"
)

type metrics struct {
	packets  *prometheus.CounterVec
	lost     *prometheus.CounterVec
	overruns prometheus.Counter
	ready    prometheus.Gauge

	mu          sync.Mutex
	policies    map[string]struct{}
	maxPolicies int
}

func newMetrics(reg prometheus.Registerer, maxPolicies int) (*metrics, error) {
	m := &metrics{
		packets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "nftguard", Subsystem: "audit", Name: "packets_total",
			Help: "Packets logged by the dataplane (after its rate limit) and written to the audit log, " +
				"by action (drop, audit), direction and policy. A packet attributed to several policies " +
				"counts once for each. Policy values beyond a fixed number are labelled \"other\".",
		}, []string{"action", "direction", "policy"}),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "nftguard", Subsystem: "audit", Name: "records_lost_total",
			Help: "Logged packets missing from the audit log, by reason (buffer, queue, malformed, write, " +
				"and ratelimit when the agent can count it).",
		}, []string{"reason"}),
		overruns: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "nftguard", Subsystem: "audit", Name: "socket_overruns_total",
			Help: "Times the NFLOG socket reported a receive buffer overrun (ENOBUFS).",
		}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "nftguard", Subsystem: "audit", Name: "ready",
			Help: "1 while the audit log reads its NFLOG group and writes its output; 0 while either fails (it retries).",
		}),
		policies:    make(map[string]struct{}),
		maxPolicies: maxPolicies,
	}
	for _, r := range lostReasons {
		m.lost.WithLabelValues(string(r))
	}
	if reg != nil {
		cs := []prometheus.Collector{m.packets, m.lost, m.overruns, m.ready}
		for i, c := range cs {
			if err := reg.Register(c); err != nil {
				for _, done := range cs[:i] {
					reg.Unregister(done)
				}
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) setReady(ok bool) {
	if ok {
		m.ready.Set(1)
	} else {
		m.ready.Set(0)
	}
}

// policyLabel bounds the policy label's values: the first maxPolicies
// distinct policies keep their name, later ones are "other".
func (m *metrics) policyLabel(policy string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.policies[policy]; ok {
		return policy
	}
	if len(m.policies) >= m.maxPolicies {
		return policyOther
	}
	m.policies[policy] = struct{}{}
	return policy
}

// observe counts a drop or audit line.
func (m *metrics) observe(ev *Event) {
	n := float64(ev.Count)
	if len(ev.Policies) == 0 {
		m.packets.WithLabelValues(string(ev.Action), string(ev.Direction), policyUnknown).Add(n)
		return
	}
	for _, p := range ev.Policies {
		m.packets.WithLabelValues(string(ev.Action), string(ev.Direction), m.policyLabel(p)).Add(n)
	}
}
