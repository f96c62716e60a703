package controller

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	compileDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "nftguard_controller_compile_duration_seconds",
		Help:    "Time to compile the cluster's policies into rule sets and address groups.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	})
	objectWrites = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nftguard_controller_object_writes_total",
		Help: "API writes by kind (NodeRuleSet, AddressGroup, DefaultDeny) and operation (create, update, delete, status).",
	}, []string{"kind", "op"})
	writeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nftguard_controller_write_errors_total",
		Help: "Failed API writes by kind.",
	}, []string{"kind"})
	oversizedObjects = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "nftguard_controller_oversized_objects",
		Help: "Rule sets and address groups not written because they exceed the object size limit.",
	})
	largestRuleSetBytes = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "nftguard_controller_largest_rule_set_bytes",
		Help: "Size in bytes of the largest compiled NodeRuleSet spec.",
	})
	pendingEvents = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "nftguard_controller_coalesced_events",
		Help: "Watch events folded into the compile that is queued or running.",
	})
)

func init() {
	metrics.Registry.MustRegister(compileDuration, objectWrites, writeErrors, oversizedObjects, largestRuleSetBytes, pendingEvents)
}
