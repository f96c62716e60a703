package render

import (
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// ingressPriority orders ingress-forward after egress-forward (priority
// filter). An accept in one base chain lets the packet on to the next base
// chain of the same hook, so a forwarded packet between two local pods must
// pass the source's egress chain and then the destination's ingress chain.
const ingressPriority = 10

func baseChains() []*model.Chain {
	prologue := func() []*model.Rule {
		return []*model.Rule{
			model.NewRule(model.CtState{Bits: model.CtEstablished | model.CtRelated}, model.Verdict{Kind: model.VerdictAccept}),
			// Neighbour discovery (router solicitation .. redirect) is never
			// filtered: a pod's solicitations may carry its global address.
			model.NewRule(model.ICMPv6Types{From: 133, To: 137}, model.Verdict{Kind: model.VerdictAccept}),
			model.NewRule(model.CtState{Bits: model.CtInvalid}, model.Verdict{Kind: model.VerdictDrop}),
		}
	}
	egress := func(name string, hook model.Hook) *model.Chain {
		return &model.Chain{Name: name, Hook: hook, Priority: 0, Rules: append(prologue(),
			model.NewRule(model.AddrVmap{Family: model.IPv4, Field: model.Saddr, Vmap: model.MapEgress4}),
			model.NewRule(model.AddrVmap{Family: model.IPv6, Field: model.Saddr, Vmap: model.MapEgress6}),
		)}
	}
	return []*model.Chain{
		egress(model.ChainEgressForward, model.HookForward),
		egress(model.ChainEgressInput, model.HookInput),
		{Name: model.ChainIngressForward, Hook: model.HookForward, Priority: ingressPriority, Rules: append(prologue(),
			model.NewRule(model.AddrVmap{Family: model.IPv4, Field: model.Daddr, Vmap: model.MapIngress4}),
			model.NewRule(model.AddrVmap{Family: model.IPv6, Field: model.Daddr, Vmap: model.MapIngress6}),
		)},
	}
}
