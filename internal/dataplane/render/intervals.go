package render

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// ipRange is an inclusive range of addresses of one family.
type ipRange struct{ from, to netip.Addr }

func (r ipRange) String() string { return model.RangeString(r.from, r.to) }

// prefixRange returns the addresses of a prefix (host bits ignored).
func prefixRange(p netip.Prefix) ipRange {
	p = p.Masked()
	return ipRange{from: p.Addr(), to: model.LastAddr(p)}
}

// parsePrefix parses a CIDR, or a bare address as a host prefix. IPv4-mapped
// IPv6 addresses are taken as IPv4.
func parsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// normalizeRanges sorts ranges of one family and merges those that overlap
// or touch, so that the result is the shortest list covering the same
// addresses (what an nftables interval set accepts).
func normalizeRanges(rs []ipRange) []ipRange {
	if len(rs) == 0 {
		return nil
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b ipRange) int {
		if c := a.from.Compare(b.from); c != 0 {
			return c
		}
		return a.to.Compare(b.to)
	})
	out := []ipRange{rs[0]}
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		next := last.to.Next() // invalid when last.to is the family's last address
		if r.from.Compare(last.to) <= 0 || (next.IsValid() && r.from == next) {
			if r.to.Compare(last.to) > 0 {
				last.to = r.to
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// subtractRange removes ex from normalised ranges.
func subtractRange(rs []ipRange, ex ipRange) []ipRange {
	var out []ipRange
	for _, r := range rs {
		if ex.to.Compare(r.from) < 0 || ex.from.Compare(r.to) > 0 {
			out = append(out, r) // disjoint
			continue
		}
		if ex.from.Compare(r.from) > 0 {
			out = append(out, ipRange{from: r.from, to: ex.from.Prev()})
		}
		if ex.to.Compare(r.to) < 0 {
			out = append(out, ipRange{from: ex.to.Next(), to: r.to})
		}
	}
	return out
}

// blockRanges returns the addresses of a CIDR minus its excepts, as
// normalised ranges. Excepts outside the CIDR remove nothing; an except of
// the other family is an error.
func blockRanges(cidr string, except []string) ([]ipRange, error) {
	p, err := parsePrefix(cidr)
	if err != nil {
		return nil, fmt.Errorf("ipBlock cidr %q: %w", cidr, err)
	}
	rs := []ipRange{prefixRange(p)}
	for _, e := range except {
		ep, err := parsePrefix(e)
		if err != nil {
			return nil, fmt.Errorf("ipBlock %s except %q: %w", cidr, e, err)
		}
		if ep.Addr().Is4() != p.Addr().Is4() {
			return nil, fmt.Errorf("ipBlock %s except %q: address family differs from the cidr", cidr, e)
		}
		rs = subtractRange(rs, prefixRange(ep))
	}
	return normalizeRanges(rs), nil
}
