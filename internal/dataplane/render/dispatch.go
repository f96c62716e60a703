package render

import (
	"encoding/binary"
	"fmt"
	"slices"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// DispatchMin is how many rules with ports a pod direction needs before it
// dispatches on the destination port rather than walking its rules in
// turn for every new connection.
var DispatchMin = 8

// ruleSpans returns the port spans of a rule (nil: every port, or a rule
// that is not in the rule set or is invalid, which is reported elsewhere).
func (r *renderer) ruleSpans(id string) []portSpan {
	ri := r.rules[id]
	if ri == nil {
		return nil
	}
	return r.spansOf(id, ri)
}

// spansOf returns the port spans of the rule with that id and info, as
// ruleSpans does.
func (r *renderer) spansOf(id string, ri *ruleInfo) []portSpan {
	if ri.spansDone {
		return ri.spans
	}
	ri.spansDone = true
	if r.memo == nil {
		ri.spans, _ = portSpans(ri.rule)
		return ri.spans
	}
	// The Renderer keeps the spans of the rules it rendered, with the
	// ports they came from.
	ru := ri.rule
	sm := r.memo.spans[id]
	if sm == nil || !slices.Equal(sm.ports, ru.Ports) {
		spans, _ := portSpans(ru)
		sm = &spansMemo{ports: slices.Clone(ru.Ports), spans: spans}
		r.memo.spans[id] = sm
	}
	sm.gen = r.memo.gen
	ri.spans, ri.memo = sm.spans, sm
	return ri.spans
}

// podSpans returns the port spans of the rules a pod references.
func (r *renderer) podSpans(pod *v1alpha1.LocalPod) [][]portSpan {
	n := 0
	for _, iso := range []*v1alpha1.Isolation{pod.Ingress, pod.Egress} {
		if iso != nil {
			n += len(iso.Rules)
		}
	}
	if n == 0 {
		return nil
	}
	out := make([][]portSpan, 0, n)
	for _, iso := range []*v1alpha1.Isolation{pod.Ingress, pod.Egress} {
		if iso == nil {
			continue
		}
		for _, id := range iso.Rules {
			out = append(out, r.ruleSpans(id))
		}
	}
	return out
}

// sameSpans reports whether the pod's rules have the ports a remembered
// pod was rendered with.
func (r *renderer) sameSpans(pod *v1alpha1.LocalPod, want [][]portSpan) bool {
	i := 0
	for _, iso := range []*v1alpha1.Isolation{pod.Ingress, pod.Egress} {
		if iso == nil {
			continue
		}
		for _, id := range iso.Rules {
			if i >= len(want) || !slices.Equal(r.ruleSpans(id), want[i]) {
				return false
			}
			i++
		}
	}
	return i == len(want)
}

// portDispatch builds a pod direction's port map: the destination ports of
// its rules cut into disjoint segments, each mapped to a chain that jumps to
// the rules allowing that segment, in their order. Chains are named by
// their rules, so that pods with the same rules share them.
func (r *renderer) portDispatch(name string, ids []string) (*model.Set, []*model.Chain) {
	m := &model.Set{Name: name, Kind: model.MapPortsVerdict}
	var chains []*model.Chain
	made := map[string]bool{}
	type segment struct {
		proto    uint8
		from, to int
		ids      []string
	}
	var segs []segment
	spans := make([][]portSpan, len(ids))
	for i, id := range ids {
		spans[i] = r.ruleSpans(id)
	}
	var cuts []int
	var in []string
	for _, proto := range []uint8{model.ProtoTCP, model.ProtoUDP, model.ProtoSCTP} {
		cuts = cuts[:0]
		for _, ss := range spans {
			for _, s := range ss {
				if s.proto == proto {
					cuts = append(cuts, int(s.from), int(s.to)+1)
				}
			}
		}
		slices.Sort(cuts)
		cuts = slices.Compact(cuts)
		for i := 0; i+1 < len(cuts); i++ {
			from, to := cuts[i], cuts[i+1]-1
			in = in[:0]
			for j, id := range ids {
				if slices.ContainsFunc(spans[j], func(s portSpan) bool {
					return s.proto == proto && int(s.from) <= from && to <= int(s.to)
				}) {
					in = append(in, id)
				}
			}
			if len(in) == 0 {
				continue
			}
			if n := len(segs); n > 0 && segs[n-1].proto == proto && segs[n-1].to+1 == from && slices.Equal(segs[n-1].ids, in) {
				segs[n-1].to = to
				continue
			}
			segs = append(segs, segment{proto, from, to, slices.Clone(in)})
		}
	}
	for _, sg := range segs {
		chain := segmentChainName(sg.ids)
		if !made[chain] {
			made[chain] = true
			c := &model.Chain{Name: chain, Rules: r.appendJumps(make([]*model.Rule, 0, len(sg.ids)), sg.ids, true)}
			r.identify(c)
			chains = append(chains, c)
		}
		k := make([]byte, 16)
		putConcatField(k[:8], sg.proto, uint16(sg.from))
		putConcatField(k[8:], sg.proto, uint16(sg.to))
		m.Elements = append(m.Elements, model.Element{Key: k[:8:8], KeyEnd: k[8:], Verdict: &model.Verdict{Kind: model.VerdictJump, Chain: chain}})
	}
	sortElements(m)
	return m, chains
}

// portSpan is a protocol and a range of destination ports.
type portSpan struct {
	proto    uint8
	from, to uint16
}

// portSpans returns a rule's ports as sorted, merged spans; none when the
// rule allows every protocol and port.
func portSpans(ru *v1alpha1.Rule) ([]portSpan, error) {
	if len(ru.Ports) == 0 {
		return nil, nil
	}
	type span = portSpan
	spans := make([]span, 0, len(ru.Ports))
	for _, p := range ru.Ports {
		proto, err := protoNumber(p.Protocol)
		if err != nil {
			return nil, fmt.Errorf("rule %q: %w", ru.ID, err)
		}
		if p.Port < 0 || p.Port > 65535 || p.EndPort < 0 || p.EndPort > 65535 {
			return nil, fmt.Errorf("rule %q: port %d-%d out of range", ru.ID, p.Port, p.EndPort)
		}
		s := span{proto, uint16(p.Port), uint16(p.Port)}
		switch {
		case p.Port == 0 && p.EndPort != 0:
			return nil, fmt.Errorf("rule %q: endPort %d without a port", ru.ID, p.EndPort)
		case p.Port == 0:
			s.to = 65535
		case p.EndPort != 0:
			if p.EndPort < p.Port {
				return nil, fmt.Errorf("rule %q: endPort %d is below port %d", ru.ID, p.EndPort, p.Port)
			}
			s.to = uint16(p.EndPort)
		}
		spans = append(spans, s)
	}
	return mergeInPlace(spans), nil
}

// concatField encodes protocol . port as the kernel lays them out in a
// concatenation: each field padded to 4 bytes, the port in network order.
func concatField(proto uint8, port uint16) []byte {
	b := make([]byte, 8)
	putConcatField(b, proto, port)
	return b
}

// putConcatField writes protocol . port (concatField) into b, 8 bytes long.
func putConcatField(b []byte, proto uint8, port uint16) {
	b[0] = proto
	b[1], b[2], b[3] = 0, 0, 0
	binary.BigEndian.PutUint16(b[4:], port)
	b[6], b[7] = 0, 0
}
