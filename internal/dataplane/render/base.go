package render

import (
	"fmt"
	"net/netip"
	"slices"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// ingressPriority orders ingress-forward after egress-forward (priority
// filter). An accept in one base chain lets the packet on to the next base
// chain of the same hook, so a forwarded packet between two local pods must
// pass the source's egress chain and then the destination's ingress chain.
const ingressPriority = 10

// podRanges adds the pod range and ready sets of a spec with pod CIDRs and
// reports, per family, whether the base chains drop what is not ready.
// Every address of the spec's pods is ready (collected as the pods are
// rendered): the agent lists exactly the pods it has programmed, with the
// addresses their sandboxes were given.
func (r *renderer) podRanges(spec v1alpha1.NodeRuleSetSpec) ([2]bool, error) {
	var on [2]bool
	if len(spec.PodCIDRs) == 0 {
		return on, nil
	}
	var rs [2][]ipRange
	for _, c := range spec.PodCIDRs {
		p, err := parsePrefix(c)
		if err != nil {
			return on, fmt.Errorf("pod CIDR %q: %w", c, err)
		}
		i := 0
		if p.Addr().Is6() {
			i = 1
		}
		rs[i] = append(rs[i], prefixRange(p))
	}
	names := [2][2]string{{model.SetPodRanges4, model.SetReady4}, {model.SetPodRanges6, model.SetReady6}}
	kinds := [2][2]model.SetKind{{model.SetIPv4Interval, model.SetIPv4}, {model.SetIPv6Interval, model.SetIPv6}}
	for i := range 2 {
		ranges := normalizeRanges(rs[i])
		if len(ranges) == 0 {
			continue
		}
		on[i] = true
		nets := &model.Set{Name: names[i][0], Kind: kinds[i][0]}
		for _, rg := range ranges {
			nets.Elements = append(nets.Elements, model.Element{Key: rg.from.AsSlice(), KeyEnd: rg.to.AsSlice()})
		}
		rd := &model.Set{Name: names[i][1], Kind: kinds[i][1]}
		slices.SortFunc(r.ready[i], netip.Addr.Compare)
		for _, a := range slices.Compact(r.ready[i]) {
			rd.Elements = append(rd.Elements, model.Element{Key: a.AsSlice()})
		}
		sortElements(nets)
		sortElements(rd)
		r.sets[nets.Name], r.sets[rd.Name] = nets, rd
	}
	return on, nil
}

// podInterfaces adds the set of pod interfaces when they are known.
func (r *renderer) podInterfaces() error {
	if r.opts.PodInterfaces == nil {
		return nil
	}
	set := &model.Set{Name: model.SetPodInterfaces, Kind: model.SetIfnames}
	for _, name := range r.opts.PodInterfaces {
		k, ok := model.IfnameKey(name)
		if !ok {
			return fmt.Errorf("pod interface %q is not an interface name", name)
		}
		set.Elements = append(set.Elements, model.Element{Key: k})
	}
	sortElements(set)
	set.Elements = slices.CompactFunc(set.Elements, func(a, b model.Element) bool { return model.CompareElements(&a, &b) == 0 })
	r.sets[set.Name] = set
	return nil
}

// notReady returns the rules dropping traffic whose address (field) is in
// the node's pod ranges but not ready, for the families whose ranges are
// known.
func notReady(ranges [2]bool, field model.AddrField) []*model.Rule {
	var out []*model.Rule
	for i, fam := range []model.Family{model.IPv4, model.IPv6} {
		if !ranges[i] {
			continue
		}
		nets, ready := model.SetPodRanges4, model.SetReady4
		if fam == model.IPv6 {
			nets, ready = model.SetPodRanges6, model.SetReady6
		}
		out = append(out, model.NewRule(
			model.AddrInSet{Family: fam, Field: field, Set: nets},
			model.AddrInSet{Family: fam, Field: field, Set: ready, Invert: true},
			model.Verdict{Kind: model.VerdictDrop},
		))
	}
	return out
}

// baseChains returns the base chains; with podIfs, egress-input drops the
// router advertisements and redirects that arrive on pod interfaces; with
// the pod ranges of a family
// known, traffic of not-ready addresses in them is dropped after the
// prologue (after established flows and, on input, neighbour discovery are
// accepted). With revoked set, the prologue first drops the packets of
// connections whose conntrack mark has that bit: established connections
// the agent has revoked.
func baseChains(ranges [2]bool, revoked uint32, podIfs bool, identities [2]bool) []*model.Chain {
	prologue := func(hook model.Hook) []*model.Rule {
		var out []*model.Rule
		if revoked != 0 {
			out = append(out, model.NewRule(model.CtMark{Bits: revoked}, model.Verdict{Kind: model.VerdictDrop}))
		}
		out = append(out, model.NewRule(model.CtState{Bits: model.CtEstablished | model.CtRelated}, model.Verdict{Kind: model.VerdictAccept}))
		if hook == model.HookInput && podIfs {
			// Router advertisements (134) and redirects (137) arriving
			// on a pod's interface are dropped: a pod is no router of
			// its node's. The type comes first, so that other packets
			// cost one compare.
			for _, typ := range []uint8{134, 137} {
				out = append(out, model.NewRule(model.ICMPv6Types{From: typ, To: typ}, model.IifnameInSet{Set: model.SetPodInterfaces},
					model.Verdict{Kind: model.VerdictDrop}))
			}
		}
		if hook == model.HookInput {
			// Neighbour discovery a pod needs from its node (router
			// solicitation 133, neighbour solicitation 135 and
			// advertisement 136) is accepted on input only, and only with
			// hop limit 255, which no router forwards: it is on-link by
			// construction, and may carry the pod's global address. ND is
			// never forwarded, so the forward chains accept none: an
			// isolated pod's ND to another pod meets its policies like
			// anything else. Router advertisements (134) and redirects
			// (137) are not accepted here.
			out = append(out,
				model.NewRule(model.ICMPv6Types{From: 133, To: 133, HopLimit: 255}, model.Verdict{Kind: model.VerdictAccept}),
				model.NewRule(model.ICMPv6Types{From: 135, To: 136, HopLimit: 255}, model.Verdict{Kind: model.VerdictAccept}))
		}
		return out
	}
	// In the identity layout, the peer's identity first (flat.go).
	lookups := func(dir int) []*model.Rule {
		if !identities[dir] {
			return nil
		}
		return identityLookups(dir)
	}
	egress := func(name string, hook model.Hook) *model.Chain {
		return &model.Chain{Name: name, Hook: hook, Priority: 0, Rules: append(append(append(prologue(hook), notReady(ranges, model.Saddr)...), lookups(1)...),
			model.NewRule(model.AddrVmap{Family: model.IPv4, Field: model.Saddr, Vmap: model.MapEgress4}),
			model.NewRule(model.AddrVmap{Family: model.IPv6, Field: model.Saddr, Vmap: model.MapEgress6}),
		)}
	}
	return []*model.Chain{
		egress(model.ChainEgressForward, model.HookForward),
		egress(model.ChainEgressInput, model.HookInput),
		{Name: model.ChainIngressForward, Hook: model.HookForward, Priority: ingressPriority, Rules: append(append(append(prologue(model.HookForward), notReady(ranges, model.Daddr)...), lookups(0)...),
			model.NewRule(model.AddrVmap{Family: model.IPv4, Field: model.Daddr, Vmap: model.MapIngress4}),
			model.NewRule(model.AddrVmap{Family: model.IPv6, Field: model.Daddr, Vmap: model.MapIngress6}),
		)},
	}
}
