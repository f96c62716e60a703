package nftnl

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// TestIntervalElements checks the kernel encoding of interval sets: start
// and one-past-the-end elements, no end element for a range running to the
// last address, and the decoding back.
func TestIntervalElements(t *testing.T) {
	for _, cidr := range []string{"198.18.0.0/16", "0.0.0.0/0", "fd00::/8", "::/0"} {
		p := netip.MustParsePrefix(cidr)
		kind := model.SetIPv4Interval
		if p.Addr().Is6() {
			kind = model.SetIPv6Interval
		}
		elems := []model.Element{{Key: p.Addr().AsSlice(), KeyEnd: lastAddr(p).AsSlice()}}
		kel := kernelElements(kind, elems)
		wantN := 2
		if strings.HasSuffix(cidr, "/0") {
			wantN = 1
		}
		if len(kel) != wantN {
			t.Fatalf("%s: %d kernel elements, want %d", cidr, len(kel), wantN)
		}
		back := ModelElements(kind, kel)
		if len(back) != 1 || kind.Format(back[0]) != cidr {
			t.Fatalf("%s: decoded as %v", cidr, back)
		}
	}
	// 198.18.0.0/16 except 198.18.1.0/24 and 198.18.3.0/24.
	want := "198.18.0.0/24, 198.18.2.0/24, 198.18.4.0-198.18.255.255"
	var elems []model.Element
	for _, r := range strings.Split(want, ", ") {
		from, to := ipRange(r)
		elems = append(elems, model.Element{Key: from.AsSlice(), KeyEnd: to.AsSlice()})
	}
	back := ModelElements(model.SetIPv4Interval, kernelElements(model.SetIPv4Interval, elems))
	var parts []string
	for _, e := range back {
		parts = append(parts, model.SetIPv4Interval.Format(e))
	}
	if got := strings.Join(parts, ", "); got != want {
		t.Fatalf("round trip: got %s, want %s", got, want)
	}
}

// lastAddr returns the last address of a prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// ipRange parses "a-b" or a prefix into its first and last address.
func ipRange(s string) (from, to netip.Addr) {
	if a, b, ok := strings.Cut(s, "-"); ok {
		return netip.MustParseAddr(a), netip.MustParseAddr(b)
	}
	p := netip.MustParsePrefix(s)
	return p.Addr(), lastAddr(p)
}
