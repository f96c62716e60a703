package audit

import (
	"encoding/json"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"
)

// decodeLine unmarshals a line into a generic map.
func decodeLine(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("line %s is not a JSON object: %v", b, err)
	}
	return m
}

func checkKeys(t *testing.T, what string, m map[string]any, want ...string) {
	t.Helper()
	got := slices.Sorted(maps.Keys(m))
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s has fields %v, want %v", what, got, want)
	}
}

func TestEventJSON(t *testing.T) {
	cet := time.FixedZone("CET", 3600)
	ev := Event{
		Time:      time.Date(2026, 3, 1, 13, 4, 5, 123456789, cet),
		Node:      "node-1",
		Action:    ActionDrop,
		Direction: Ingress,
		Protocol:  ProtocolTCP,
		Src:       Endpoint{IP: netip.MustParseAddr("198.18.1.5"), Port: 40123, Namespace: "y", Pod: "a"},
		Dst:       Endpoint{IP: netip.MustParseAddr("198.18.2.7"), Port: 80, Namespace: "x", Pod: "b"},
		Policies:  []string{"DefaultDeny/baseline", "NetworkPolicy/x/deny-all"},
		Count:     3,
	}
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	m := decodeLine(t, b)
	checkKeys(t, "drop line", m, "schema", "time", "node", "action", "direction", "protocol", "src", "dst", "policies", "count")
	want := map[string]any{
		"schema":    float64(1),
		"time":      "2026-03-01T12:04:05.123456789Z",
		"node":      "node-1",
		"action":    "drop",
		"direction": "ingress",
		"protocol":  "TCP",
		"src":       map[string]any{"ip": "198.18.1.5", "port": float64(40123), "namespace": "y", "pod": "a"},
		"dst":       map[string]any{"ip": "198.18.2.7", "port": float64(80), "namespace": "x", "pod": "b"},
		"policies":  []any{"DefaultDeny/baseline", "NetworkPolicy/x/deny-all"},
		"count":     float64(3),
	}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("line %s\nwant %v", b, want)
	}

	var back Event
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	ev.Time = ev.Time.UTC()
	if !reflect.DeepEqual(back, ev) {
		t.Errorf("round trip = %+v, want %+v", back, ev)
	}
}

func TestEventJSONOmitsUnknown(t *testing.T) {
	ev := Event{
		Time:      time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC),
		Node:      "n",
		Action:    ActionAudit,
		Direction: Egress,
		Protocol:  ProtocolICMPv6,
		Src:       Endpoint{IP: netip.MustParseAddr("fd00::1")},
		Dst:       Endpoint{IP: netip.MustParseAddr("fd00::2")},
		Count:     1,
	}
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	m := decodeLine(t, b)
	checkKeys(t, "audit line", m, "schema", "time", "node", "action", "direction", "protocol", "src", "dst", "policies", "count")
	checkKeys(t, "src", m["src"].(map[string]any), "ip")
	checkKeys(t, "dst", m["dst"].(map[string]any), "ip")
	if m["time"] != "2026-03-01T00:00:00Z" || m["action"] != "audit" || m["direction"] != "egress" || m["protocol"] != "ICMPv6" {
		t.Errorf("line %s", b)
	}
	if p, ok := m["policies"].([]any); !ok || len(p) != 0 {
		t.Errorf("policies = %#v, want []", m["policies"])
	}

	ev.Protocol = 47
	b, _ = json.Marshal(ev)
	if m := decodeLine(t, b); m["protocol"] != "47" {
		t.Errorf("protocol 47 written as %#v", m["protocol"])
	}
}

func TestLostLineJSON(t *testing.T) {
	ev := Event{
		Time:   time.Date(2026, 3, 1, 0, 0, 1, 500, time.UTC),
		Node:   "n",
		Action: ActionLost,
		Count:  17,
		Reason: LostBuffer,
		// Fields that do not belong on a lost line are not written.
		Direction: Ingress,
		Policies:  []string{"x"},
	}
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	m := decodeLine(t, b)
	checkKeys(t, "lost line", m, "schema", "time", "node", "action", "count", "reason")
	want := map[string]any{
		"schema": float64(1), "time": "2026-03-01T00:00:01.0000005Z", "node": "n",
		"action": "lost", "count": float64(17), "reason": "buffer",
	}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("line %s\nwant %v", b, want)
	}
	var back Event
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Action != ActionLost || back.Reason != LostBuffer || back.Count != 17 || !back.Time.Equal(ev.Time) {
		t.Errorf("round trip = %+v", back)
	}
}

func TestEventUnmarshalRejectsOtherSchema(t *testing.T) {
	var ev Event
	if err := json.Unmarshal([]byte(`{"schema":2,"time":"2026-03-01T00:00:00Z","action":"drop"}`), &ev); err == nil {
		t.Error("schema 2 accepted")
	}
}
