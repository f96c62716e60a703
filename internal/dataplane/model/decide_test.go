package model

import (
	"net/netip"
	"strings"
	"testing"
)

// TestDecideRefusesWhatItCannotEvaluate: a missing set, an ICMPv6 packet
// against an ICMPv6 match, and runaway jumps are errors, not verdicts.
func TestDecideRefusesWhatItCannotEvaluate(t *testing.T) {
	p := Packet{Src: netip.MustParseAddr("198.18.0.1"), Dst: netip.MustParseAddr("198.18.0.2"), Proto: ProtoTCP, Dport: 80}
	loop := &Chain{Name: "loop"}
	loop.Rules = []*Rule{NewRule(Verdict{Kind: VerdictJump, Chain: "loop"})}
	for _, tc := range []struct {
		name string
		tab  *Table
		p    Packet
		want string
	}{
		{"missing set", &Table{Chains: []*Chain{{Name: "b", Hook: HookForward, Rules: []*Rule{
			NewRule(AddrInSet{Family: IPv4, Field: Saddr, Set: "gone"}, Verdict{Kind: VerdictDrop})}}}}, p, "missing set gone"},
		{"ICMPv6 types", &Table{Chains: []*Chain{{Name: "b", Hook: HookInput, Rules: []*Rule{
			NewRule(ICMPv6Types{From: 135, To: 136, HopLimit: 255}, Verdict{Kind: VerdictAccept})}}}},
			Packet{Src: netip.MustParseAddr("fd00::1"), Dst: netip.MustParseAddr("fd00::2"), Proto: ProtoICMPv6}, "ICMPv6"},
		{"runaway jumps", &Table{Chains: []*Chain{{Name: "b", Hook: HookForward, Rules: []*Rule{
			NewRule(Verdict{Kind: VerdictJump, Chain: "loop"})}}, loop}}, p, "deeper"},
	} {
		hook := HookForward
		if tc.p.Proto == ProtoICMPv6 {
			hook = HookInput
		}
		if _, err := tc.tab.Decide(hook, tc.p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %q", tc.name, err, tc.want)
		}
	}
}
