package audit

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestQueryMatchesAndSummarize(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	web := Endpoint{IP: netip.MustParseAddr("198.18.0.5"), Port: 40001, Namespace: "shop", Pod: "web-0"}
	web2 := web
	web2.Port = 40002
	api := Endpoint{IP: netip.MustParseAddr("198.18.1.7"), Port: 8080, Namespace: "backend", Pod: "api-0"}
	ext := Endpoint{IP: netip.MustParseAddr("203.0.113.9"), Port: 443}
	lines := []Event{
		{Time: t0, Node: "n1", Action: ActionDrop, Direction: Ingress, Protocol: ProtocolTCP, Src: web, Dst: api,
			Policies: []string{"NetworkPolicy/backend/api"}, Count: 3},
		{Time: t0.Add(time.Minute), Node: "n1", Action: ActionLost, Reason: LostRateLimit, Count: 7},
		{Time: t0.Add(2 * time.Minute), Node: "n1", Action: ActionDrop, Direction: Ingress, Protocol: ProtocolTCP, Src: web2, Dst: api,
			Policies: []string{"NetworkPolicy/backend/api"}, Count: 2},
		{Time: t0.Add(3 * time.Minute), Node: "n1", Action: ActionAudit, Direction: Egress, Protocol: ProtocolTCP, Src: api, Dst: ext,
			Policies: []string{"DefaultDeny/baseline"}, Count: 1},
	}

	for _, tc := range []struct {
		name string
		q    Query
		want []int // counts of the flows, busiest first
	}{
		{"everything", Query{}, []int{5, 1}},
		{"by source namespace", Query{Namespace: "shop"}, []int{5}},
		{"by destination pod", Query{Namespace: "backend", Pod: "api-0"}, []int{5, 1}},
		{"pod in the wrong namespace", Query{Namespace: "shop", Pod: "api-0"}, nil},
		{"policy by full name", Query{Policy: "NetworkPolicy/backend/api"}, []int{5}},
		{"policy by short name", Query{Policy: "baseline"}, []int{1}},
		{"since", Query{Since: t0.Add(90 * time.Second)}, []int{2, 1}},
		{"audit only", Query{Action: ActionAudit}, []int{1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Summarize("n1", lines, tc.q, false)
			var got []int
			for _, f := range s.Flows {
				got = append(got, int(f.Count))
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("flow counts (-want +got):\n%s", diff)
			}
		})
	}

	s := Summarize("n1", lines, Query{}, false)
	want := Flow{Node: "n1", Action: ActionDrop, Direction: Ingress, Protocol: ProtocolTCP,
		Src:      FlowEnd{IP: "198.18.0.5", Namespace: "shop", Pod: "web-0"},
		Dst:      FlowEnd{IP: "198.18.1.7", Port: 8080, Namespace: "backend", Pod: "api-0"},
		Policies: []string{"NetworkPolicy/backend/api"}, Count: 5, Lines: 2, First: t0, Last: t0.Add(2 * time.Minute)}
	if diff := cmp.Diff(want, s.Flows[0]); diff != "" {
		t.Errorf("grouped flow (-want +got):\n%s", diff)
	}
	if s.Lost[LostRateLimit] != 7 {
		t.Errorf("lost = %v, want ratelimit 7", s.Lost)
	}
	if s.Truncated || !s.Oldest.Equal(t0) {
		t.Errorf("oldest %v truncated %v, want %v false", s.Oldest, s.Truncated, t0)
	}
	if s := Summarize("n1", lines, Query{Since: t0.Add(-time.Hour)}, true); !s.Truncated {
		t.Error("a full buffer newer than since is not reported truncated")
	}
	if s := Summarize("n1", lines, Query{Since: t0.Add(30 * time.Second)}, true); s.Truncated {
		t.Error("a full buffer that covers since is reported truncated")
	}
}

func TestMerge(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	f := Flow{Node: "n1", Action: ActionDrop, Direction: Ingress, Protocol: ProtocolUDP,
		Src: FlowEnd{IP: "198.18.0.5"}, Dst: FlowEnd{IP: "198.18.1.7", Port: 53}, Policies: []string{"DefaultDeny/x"},
		Count: 2, Lines: 1, First: t0, Last: t0}
	g := f
	g.Count, g.First, g.Last = 3, t0.Add(time.Minute), t0.Add(time.Minute)
	h := f
	h.Node, h.Count = "n2", 10
	m := Merge(
		Summary{Nodes: []string{"n1"}, Flows: []Flow{f}, Oldest: t0, Lost: map[LostReason]uint64{LostBuffer: 1}},
		Summary{Nodes: []string{"n1"}, Flows: []Flow{g}},
		Summary{Nodes: []string{"n2"}, Flows: []Flow{h}, Oldest: t0.Add(time.Hour), Truncated: true},
	)
	if diff := cmp.Diff([]string{"n1", "n2"}, m.Nodes); diff != "" {
		t.Errorf("nodes (-want +got):\n%s", diff)
	}
	if len(m.Flows) != 2 || m.Flows[0].Node != "n2" || m.Flows[1].Count != 5 || m.Flows[1].Lines != 2 ||
		!m.Flows[1].First.Equal(t0) || !m.Flows[1].Last.Equal(t0.Add(time.Minute)) {
		t.Errorf("merged flows = %+v", m.Flows)
	}
	if !m.Truncated || !m.Oldest.Equal(t0.Add(time.Hour)) || m.Lost[LostBuffer] != 1 {
		t.Errorf("merged summary = %+v", m)
	}
}
