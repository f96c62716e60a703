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

func TestMetricsPolicyCardinalityCap(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg, 200)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 250 {
		m.observe(&Event{Action: ActionDrop, Direction: Ingress, Count: 2,
			Policies: []string{fmt.Sprintf("NetworkPolicy/ns/p%03d", i)}})
	}
	// Policies seen before the cap keep their label.
	m.observe(&Event{Action: ActionDrop, Direction: Ingress, Count: 1, Policies: []string{"NetworkPolicy/ns/p000"}})
	m.observe(&Event{Action: ActionAudit, Direction: Egress, Count: 5})

	got := counterValues(t, reg, "nftguard_audit_packets_total", "policy")
	if len(got) != 200+2 {
		t.Errorf("%d policy label values, want 200 policies, other and unknown", len(got))
	}
	if got[policyOther] != 50*2 {
		t.Errorf("other = %v, want 100", got[policyOther])
	}
	if got["NetworkPolicy/ns/p000"] != 3 {
		t.Errorf("p000 = %v, want 3", got["NetworkPolicy/ns/p000"])
	}
	if got[policyUnknown] != 5 {
		t.Errorf("unknown = %v, want 5", got[policyUnknown])
	}
	if _, ok := got["NetworkPolicy/ns/p200"]; ok {
		t.Error("policy beyond the cap has its own label")
	}
}

func TestMetricsLostReasonsStartAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg, 10)
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
	if _, err := newMetrics(reg, 10); err == nil {
		t.Error("registered the metrics twice")
	}
}
