package render

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/prefix"
)

// podChains returns the chains of a pod's isolated directions and adds
// their map elements, reusing the pod's chains from the last render when
// the pod did not change. The rules the pod references are checked every
// time: the rule set may have changed around an unchanged pod.
func (r *renderer) podChains(pod v1alpha1.LocalPod) ([]*model.Chain, error) {
	key := pod.Namespace + "/" + pod.Name
	// A second pod of the same name (invalid input) is rendered, not
	// remembered.
	remember := r.memo != nil && !r.pods[key]
	r.pods[key] = true
	var pm *podMemo
	var shape []byte
	if r.isFlat(pod.Ingress) || r.isFlat(pod.Egress) {
		// The lines of a pod in the identity layout depend on what kind
		// of peers its rules have, too.
		shape = r.flatShape(&pod)
	}
	if remember {
		if m := r.memo.pods[key]; m != nil && equalPod(&m.pod, &pod) && r.sameSpans(&pod, m.spans) && bytes.Equal(m.flatShape, shape) {
			pm = m
		}
	}
	if pm == nil {
		var err error
		if pm, err = r.buildPod(pod); err != nil {
			return nil, err
		}
		if remember {
			pm.pod = copyPod(pod)
			pm.flatShape = shape
			r.memo.pods[key] = pm
		}
	}
	for _, a := range pm.addrs {
		i := 0
		if a.Is6() {
			i = 1
		}
		r.ready[i] = append(r.ready[i], a)
	}
	if len(pm.addrs) == 0 {
		return nil, nil
	}
	var flatDirs [2]*flatDir
	for k, d := range []struct {
		iso       *v1alpha1.Isolation
		direction v1alpha1.Direction
	}{{pod.Ingress, v1alpha1.DirectionIngress}, {pod.Egress, v1alpha1.DirectionEgress}} {
		if d.iso == nil {
			continue
		}
		var fd *flatDir
		if pm.flat[k] {
			fd = &flatDir{dir: k}
			flatDirs[k] = fd
		}
		for _, id := range d.iso.Rules {
			ri, ok := r.rules[id]
			if !ok {
				return nil, fmt.Errorf("pod %s/%s: %s isolation references rule %q, which is not in the rule set", pod.Namespace, pod.Name, d.direction, id)
			}
			if ri.rule.Direction != d.direction {
				return nil, fmt.Errorf("pod %s/%s: %s isolation references %s rule %q", pod.Namespace, pod.Name, d.direction, ri.rule.Direction, id)
			}
			switch {
			case fd != nil && r.flatEligible(ri):
				if !slices.Contains(fd.rules, ri) {
					fd.rules = append(fd.rules, ri)
				}
			case pm.dispatched[k] && len(r.spansOf(id, ri)) > 0:
				ri.dispatched = true
			default:
				ri.direct = true
			}
		}
	}
	chains := make([]*model.Chain, 0, len(pm.chains)+len(pm.segments))
	for _, s := range pm.maps {
		r.sets[s.Name] = s
	}
	for _, c := range pm.segments {
		// Segment chains are named by their content: pods with the same
		// rules on the same ports share them.
		if !r.segments[c.Name] {
			r.segments[c.Name] = true
			chains = append(chains, c)
		}
	}
	for _, pc := range pm.chains {
		chains = append(chains, pc.chain)
		for _, a := range pm.addrs {
			m := pc.map4
			if a.Is6() {
				m = pc.map6
			}
			// Two pods claiming one address (a stale pod, say): the first
			// pod isolated in this direction keeps it, so the address stays
			// isolated.
			if owner := m + "/" + a.String(); !r.vmapOwners[owner] {
				r.vmapOwners[owner] = true
				r.sets[m].Elements = append(r.sets[m].Elements, model.Element{Key: a.AsSlice(), Verdict: &model.Verdict{Kind: model.VerdictGoto, Chain: pc.chain.Name}})
				// In the identity layout too, only for the addresses the
				// pod keeps.
				if k := pc.dir(); flatDirs[k] != nil {
					flatDirs[k].addrs = append(flatDirs[k].addrs, a)
				}
			}
		}
	}
	for _, fd := range flatDirs {
		if fd != nil {
			r.flat = append(r.flat, *fd)
		}
	}
	return chains, nil
}

// buildPod renders the chains of a pod's isolated directions.
func (r *renderer) buildPod(pod v1alpha1.LocalPod) (*podMemo, error) {
	pm := &podMemo{spans: r.podSpans(&pod)}
	for _, s := range pod.IPs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("pod %s/%s: IP %q: %w", pod.Namespace, pod.Name, s, err)
		}
		pm.addrs = append(pm.addrs, a.Unmap())
	}
	if len(pm.addrs) == 0 {
		return pm, nil
	}
	podKey := prefix.PodKey(pod.Namespace, pod.Name)
	for k, d := range []struct {
		iso        *v1alpha1.Isolation
		direction  v1alpha1.Direction
		short      string
		dir        prefix.Direction
		map4, map6 string
	}{
		{pod.Ingress, v1alpha1.DirectionIngress, "in", prefix.Ingress, model.MapIngress4, model.MapIngress6},
		{pod.Egress, v1alpha1.DirectionEgress, "eg", prefix.Egress, model.MapEgress4, model.MapEgress6},
	} {
		if d.iso == nil {
			continue
		}
		action, final := prefix.ActionDrop, model.VerdictDrop
		switch d.iso.Mode {
		case v1alpha1.IsolationEnforce, "":
		case v1alpha1.IsolationAudit:
			action, final = prefix.ActionAudit, model.VerdictAccept
		default:
			return nil, fmt.Errorf("pod %s/%s: unknown %s isolation mode %q", pod.Namespace, pod.Name, d.direction, d.iso.Mode)
		}
		c := &model.Chain{Name: PodChainName(d.short, pod.Namespace, pod.Name)}
		// A packet conntrack calls invalid (out of window, say) is
		// dropped for the pods nftguard isolates, and only for them: the
		// node's other traffic, and that of pods no policy isolates, is
		// left as it was. Audit drops nothing.
		if final == model.VerdictDrop {
			c.Rules = append(c.Rules, model.NewRule(model.CtState{Bits: model.CtInvalid}, model.Verdict{Kind: model.VerdictDrop}))
		}
		// A pod's traffic to itself through a Service (kube-proxy DNATs it
		// back to the pod: hairpin) passes the forward hook with the pod's
		// address on both sides. No policy can isolate a pod from itself,
		// so it is accepted whatever the rules say.
		self := model.Saddr
		if d.direction == v1alpha1.DirectionEgress {
			self = model.Daddr
		}
		for _, a := range pm.addrs {
			c.Rules = append(c.Rules, model.NewRule(model.AddrIs{Field: self, Addr: a}, model.Verdict{Kind: model.VerdictAccept}))
		}
		seen := make(map[string]bool, len(d.iso.Rules))
		var ids, ported, anyPort []string
		for _, id := range d.iso.Rules {
			if seen[id] {
				continue
			}
			seen[id] = true
			ids = append(ids, id)
			if len(r.ruleSpans(id)) > 0 {
				ported = append(ported, id)
			} else {
				anyPort = append(anyPort, id)
			}
		}
		if r.isFlat(d.iso) {
			// The identity layout: a few lines, whatever the rules.
			lines, open, jumps, err := r.flatRules(openSetName(d.short, pod.Namespace, pod.Name), ids)
			if err != nil {
				return nil, err
			}
			if open != nil {
				pm.maps = append(pm.maps, open)
			}
			pm.flat[k] = true
			c.Rules = append(c.Rules, lines...)
			ids = jumps
		} else if len(ported) >= DispatchMin {
			// Dispatch on the destination port to the rules for that
			// port, then walk the rules for every port.
			m, segs := r.portDispatch(PodPortMapName(d.short, pod.Namespace, pod.Name), ported)
			pm.dispatched[k] = true
			pm.maps = append(pm.maps, m)
			pm.segments = append(pm.segments, segs...)
			c.Rules = append(c.Rules, model.NewRule(model.PortsVmap{Vmap: m.Name}))
			ids = anyPort
		}
		c.Rules = r.appendJumps(slices.Grow(c.Rules, len(ids)+2), ids, false)
		c.Rules = append(c.Rules,
			model.NewRule(model.LimitRate{Rate: r.opts.LogRate, Burst: r.opts.LogBurst}, model.NFLog{Prefix: prefix.Format(action, d.dir, podKey), Group: r.opts.LogGroup}),
			model.NewRule(model.Verdict{Kind: final}),
		)
		r.identify(c)
		pm.chains = append(pm.chains, podChain{chain: c, map4: d.map4, map6: d.map6})
	}
	return pm, nil
}

// appendJumps appends rules jumping to the chains of the rules with those
// ids (to their peer chains with peers set), allocated together.
func (r *renderer) appendJumps(rules []*model.Rule, ids []string, peers bool) []*model.Rule {
	rs := make([]model.Rule, len(ids))
	stmts := make([]model.Stmt, len(ids))
	for i, id := range ids {
		stmts[i] = r.jump(id, peers)
		rs[i].Stmts = stmts[i : i+1 : i+1]
		rules = append(rules, &rs[i])
	}
	return rules
}

// jump returns the statement jumping to the chain of the rule with that id,
// or to its peer chain.
func (r *renderer) jump(id string, peers bool) model.Stmt {
	ri := r.rules[id]
	if peers {
		if ri == nil {
			return model.Verdict{Kind: model.VerdictJump, Chain: peersChainName(id)}
		}
		if ri.peersJump == nil {
			ri.peersJump = model.Verdict{Kind: model.VerdictJump, Chain: peersChainName(id)}
		}
		return ri.peersJump
	}
	if ri == nil {
		return model.Verdict{Kind: model.VerdictJump, Chain: RuleChainName(id)}
	}
	if ri.jump == nil {
		ri.jump = model.Verdict{Kind: model.VerdictJump, Chain: r.chainName(id, ri)}
	}
	return ri.jump
}

// chainName returns the name of the chain of the rule with that id and info.
func (r *renderer) chainName(id string, ri *ruleInfo) string {
	if ri.chain == "" {
		ri.chain = RuleChainName(id)
	}
	return ri.chain
}
