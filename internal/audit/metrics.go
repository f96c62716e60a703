package audit

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	packets  *prometheus.CounterVec
	lost     *prometheus.CounterVec
	overruns prometheus.Counter
	ready    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		packets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "nftguard", Subsystem: "audit", Name: "packets_total",
			Help: "Packets logged by the dataplane (after its rate limit) and written to the audit log, " +
				"by action (drop, audit) and direction. Counts per policy are the drops API's " +
				"nftguard_drops_total: per-policy series on every node would be unbounded.",
		}, []string{"action", "direction"}),
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

// observe counts a drop or audit line.
func (m *metrics) observe(ev *Event) {
	m.packets.WithLabelValues(string(ev.Action), string(ev.Direction)).Add(float64(ev.Count))
}
