package audit

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Query selects drop log lines. Zero fields select everything.
type Query struct {
	// Namespace matches lines whose source or destination pod is in it.
	Namespace string
	// Pod matches lines whose source or destination pod has this name
	// (in Namespace, when set).
	Pod string
	// Policy matches lines attributed to a policy: its full name
	// ("NetworkPolicy/shop/web", "DefaultDeny/baseline") or its last part
	// ("web", "baseline").
	Policy string
	// Since drops lines older than it.
	Since time.Time
	// Action, when set, keeps only drop or only audit lines.
	Action Action
}

// Matches reports whether a drop or audit line matches q. Lost lines never
// match: Summarize reports them apart.
func (q Query) Matches(ev *Event) bool {
	if ev.Action == ActionLost {
		return false
	}
	if q.Action != "" && ev.Action != q.Action {
		return false
	}
	if !q.Since.IsZero() && ev.Time.Before(q.Since) {
		return false
	}
	if q.Namespace != "" || q.Pod != "" {
		side := func(e Endpoint) bool {
			return (q.Namespace == "" || e.Namespace == q.Namespace) && (q.Pod == "" || e.Pod == q.Pod)
		}
		if !side(ev.Src) && !side(ev.Dst) {
			return false
		}
	}
	if q.Policy != "" && !slices.ContainsFunc(ev.Policies, func(p string) bool {
		return p == q.Policy || p[strings.LastIndexByte(p, '/')+1:] == q.Policy
	}) {
		return false
	}
	return true
}

// FlowEnd is one side of a flow: the pod (or address) and, on the
// destination side, the port. Source ports are left out: they change with
// every connection.
type FlowEnd struct {
	IP        string `json:"ip,omitempty"`
	Port      uint16 `json:"port,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
}

// Flow is the drop or audit lines of one flow, counted.
type Flow struct {
	Node      string    `json:"node"`
	Action    Action    `json:"action"`
	Direction Direction `json:"direction"`
	Protocol  Protocol  `json:"protocol"`
	Src       FlowEnd   `json:"src"`
	Dst       FlowEnd   `json:"dst"`
	Policies  []string  `json:"policies"`
	// Count is the number of packets logged; Lines the number of log lines.
	Count uint64    `json:"count"`
	Lines int       `json:"lines"`
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
}

// key identifies the flow a line belongs to.
func (f *Flow) key() string {
	return strings.Join([]string{f.Node, string(f.Action), string(f.Direction), f.Protocol.String(),
		f.Src.IP, f.Src.Namespace, f.Src.Pod, f.Dst.IP, f.Dst.Namespace, f.Dst.Pod,
		strconv.Itoa(int(f.Dst.Port)), strings.Join(f.Policies, ",")}, "\x00")
}

// Summary is the answer to a Query on one node (or several, merged).
type Summary struct {
	// Nodes lists the nodes that answered.
	Nodes []string `json:"nodes"`
	// Flows are grouped by node, action, direction, protocol, endpoints,
	// destination port and policies, the busiest first.
	Flows []Flow `json:"flows"`
	// Lost counts, by reason, records missing from the log in the window:
	// the flows are a lower bound when it is not empty.
	Lost map[LostReason]uint64 `json:"lost,omitempty"`
	// Oldest is the time of the oldest line the nodes still hold; when it is
	// after the query's since, older lines have been forgotten.
	Oldest time.Time `json:"oldest,omitzero"`
	// Truncated is true when a node no longer holds the whole window.
	Truncated bool `json:"truncated,omitempty"`
}

// Summarize groups the lines of one node that match q by flow.
// The lines are expected oldest first, as Logger.Recent returns them, and
// full is true when the node's buffer of recent lines is full (so lines
// before the oldest were forgotten).
func Summarize(node string, lines []Event, q Query, full bool) Summary {
	s := Summary{Nodes: []string{node}}
	if len(lines) > 0 {
		s.Oldest = lines[0].Time
		s.Truncated = full && (q.Since.IsZero() || lines[0].Time.After(q.Since))
	}
	flows := map[string]*Flow{}
	for i := range lines {
		ev := &lines[i]
		if ev.Action == ActionLost {
			if q.Since.IsZero() || !ev.Time.Before(q.Since) {
				if s.Lost == nil {
					s.Lost = map[LostReason]uint64{}
				}
				s.Lost[ev.Reason] += ev.Count
			}
			continue
		}
		if !q.Matches(ev) {
			continue
		}
		f := Flow{
			Node: cmp.Or(ev.Node, node), Action: ev.Action, Direction: ev.Direction, Protocol: ev.Protocol,
			Src:      flowEnd(ev.Src, false),
			Dst:      flowEnd(ev.Dst, true),
			Policies: slices.Clone(ev.Policies),
		}
		if f.Policies == nil {
			f.Policies = []string{}
		}
		k := f.key()
		if old, ok := flows[k]; ok {
			old.Count += ev.Count
			old.Lines++
			old.First = minTime(old.First, ev.Time)
			old.Last = maxTime(old.Last, ev.Time)
			continue
		}
		f.Count, f.Lines, f.First, f.Last = ev.Count, 1, ev.Time, ev.Time
		flows[k] = &f
	}
	for _, f := range flows {
		s.Flows = append(s.Flows, *f)
	}
	sortFlows(s.Flows)
	return s
}

// Merge combines the summaries of several nodes: flows with the same key
// are added up (the same flow may be logged on both the source's and the
// destination's node, but with a different node and direction, so they stay
// apart).
func Merge(parts ...Summary) Summary {
	var out Summary
	flows := map[string]*Flow{}
	for _, p := range parts {
		out.Nodes = append(out.Nodes, p.Nodes...)
		out.Truncated = out.Truncated || p.Truncated
		if !p.Oldest.IsZero() && (out.Oldest.IsZero() || p.Oldest.After(out.Oldest)) {
			out.Oldest = p.Oldest // the latest of the oldest: the window every node still covers
		}
		for r, n := range p.Lost {
			if out.Lost == nil {
				out.Lost = map[LostReason]uint64{}
			}
			out.Lost[r] += n
		}
		for i := range p.Flows {
			f := p.Flows[i]
			k := f.key()
			if old, ok := flows[k]; ok {
				old.Count += f.Count
				old.Lines += f.Lines
				old.First = minTime(old.First, f.First)
				old.Last = maxTime(old.Last, f.Last)
				continue
			}
			f.Policies = slices.Clone(f.Policies)
			flows[k] = &f
		}
	}
	slices.Sort(out.Nodes)
	out.Nodes = slices.Compact(out.Nodes)
	for _, f := range flows {
		out.Flows = append(out.Flows, *f)
	}
	sortFlows(out.Flows)
	return out
}

func sortFlows(fs []Flow) {
	slices.SortFunc(fs, func(a, b Flow) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), b.Last.Compare(a.Last), cmp.Compare(a.key(), b.key()))
	})
}

func flowEnd(e Endpoint, withPort bool) FlowEnd {
	out := FlowEnd{Namespace: e.Namespace, Pod: e.Pod}
	if e.IP.IsValid() {
		out.IP = e.IP.String()
	}
	if withPort {
		out.Port = e.Port
	}
	return out
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
