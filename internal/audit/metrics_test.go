package audit

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// counterValues returns a metric family's counters by the value of label.
func counterValues(t *testing.T, reg *prometheus.Registry, name, label string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]float64)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[labelValue(m, label)] += m.GetCounter().GetValue()
		}
	}
	return out
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func TestMetricsCountPacketsOncePerLine(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 250 {
		m.observe(&Event{Action: ActionDrop, Direction: Ingress, Count: 2,
			Policies: []string{fmt.Sprintf("NetworkPolicy/ns/p%03d", i), "DefaultDeny/base"}})
	}
	m.observe(&Event{Action: ActionAudit, Direction: Egress, Count: 5})
	// No policy label: a node's series do not grow with the policies.
	if got := counterValues(t, reg, "nftguard_audit_packets_total", "policy"); len(got) != 1 || got[""] != 505 {
		t.Errorf("by policy %v, want no policy label and 505 packets", got)
	}
	if got := counterValues(t, reg, "nftguard_audit_packets_total", "action"); got["drop"] != 500 || got["audit"] != 5 {
		t.Errorf("by action %v, want drop 500 (each packet once, whatever its policies) and audit 5", got)
	}
}

func TestMetricsLostReasonsStartAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	got := counterValues(t, reg, "nftguard_audit_records_lost_total", "reason")
	if len(got) != len(lostReasons) {
		t.Errorf("lost reasons %v, want all of %v", got, lostReasons)
	}
	l := &losses{metrics: m}
	l.add(LostQueue, 4)
	l.add(LostQueue, 0)
	l.add(LostBuffer, 1)
	if got := counterValues(t, reg, "nftguard_audit_records_lost_total", "reason"); got["queue"] != 4 || got["buffer"] != 1 {
		t.Errorf("lost = %v", got)
	}
	// A second registration on the same registry fails cleanly.
	if _, err := newMetrics(reg); err == nil {
		t.Error("registered the metrics twice")
	}
}
