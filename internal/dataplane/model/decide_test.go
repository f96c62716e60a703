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

// TestDecideRanges: a set of sorted, disjoint ranges (searched by halving)
// and the same ranges out of order (walked) decide alike, at every edge.
func TestDecideRanges(t *testing.T) {
	a := func(s string) []byte { return netip.MustParseAddr(s).AsSlice() }
	sorted := []Element{
		{Key: a("198.18.0.1"), KeyEnd: a("198.18.0.1")},
		{Key: a("198.18.0.10"), KeyEnd: a("198.18.0.20")},
		{Key: a("198.18.1.0"), KeyEnd: a("198.18.1.255")},
	}
	shuffled := []Element{sorted[2], sorted[0], sorted[1]}
	for _, es := range [][]Element{sorted, shuffled} {
		tab := &Table{
			Sets: []*Set{{Name: "peers", Kind: SetIPv4Interval, Elements: es}},
			Chains: []*Chain{{Name: "b", Hook: HookForward, Rules: []*Rule{
				NewRule(AddrInSet{Family: IPv4, Field: Saddr, Set: "peers"}, Verdict{Kind: VerdictAccept}),
				NewRule(Verdict{Kind: VerdictDrop})}}},
		}
		d := NewDecider(tab)
		if d.ranges["peers"] != (&es[0] == &sorted[0]) {
			t.Fatalf("searched by halving: %v", d.ranges["peers"])
		}
		for src, want := range map[string]bool{"198.18.0.0": false, "198.18.0.1": true, "198.18.0.2": false, "198.18.0.9": false,
			"198.18.0.10": true, "198.18.0.15": true, "198.18.0.20": true, "198.18.0.21": false, "198.18.1.0": true,
			"198.18.1.255": true, "198.18.2.0": false, "fd00::1": false} {
			p := Packet{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr("198.18.9.9"), Proto: ProtoTCP, Dport: 80}
			if p.Src.Is6() {
				p.Dst = netip.MustParseAddr("fd00::9")
			}
			got, err := d.Decide(HookForward, p)
			if err != nil || got != want {
				t.Errorf("from %s: %v, %v; want %v", src, got, err, want)
			}
		}
	}
}
