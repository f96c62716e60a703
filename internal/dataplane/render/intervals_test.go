package render

import (
	"net/netip"
	"strings"
	"testing"
)

func rangesString(rs []ipRange) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = r.String()
	}
	return strings.Join(parts, ", ")
}

func TestBlockRanges(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cidr   string
		except []string
		want   string
	}{
		{name: "no except", cidr: "198.18.0.0/16", want: "198.18.0.0/16"},
		{name: "host bits ignored", cidr: "198.18.3.7/16", want: "198.18.0.0/16"},
		{name: "bare address", cidr: "198.18.0.1", want: "198.18.0.1"},
		{name: "one except in the middle", cidr: "198.18.0.0/16", except: []string{"198.18.1.0/24"},
			want: "198.18.0.0/24, 198.18.2.0-198.18.255.255"},
		{name: "except at the start", cidr: "198.18.0.0/24", except: []string{"198.18.0.0/25"}, want: "198.18.0.128/25"},
		{name: "except at the end", cidr: "198.18.0.0/24", except: []string{"198.18.0.128/25"}, want: "198.18.0.0/25"},
		{name: "except everything", cidr: "198.18.0.0/24", except: []string{"198.18.0.0/24"}, want: ""},
		{name: "nested excepts", cidr: "198.18.0.0/16", except: []string{"198.18.4.0/22", "198.18.5.0/24", "198.18.5.128/25"},
			want: "198.18.0.0/22, 198.18.8.0-198.18.255.255"},
		{name: "adjacent excepts", cidr: "198.18.0.0/24", except: []string{"198.18.0.64/26", "198.18.0.128/26"},
			want: "198.18.0.0/26, 198.18.0.192/26"},
		{name: "except outside the cidr", cidr: "198.18.0.0/24", except: []string{"198.19.0.0/24"}, want: "198.18.0.0/24"},
		{name: "single address excepts", cidr: "198.18.0.0/30", except: []string{"198.18.0.1/32", "198.18.0.2/32"},
			want: "198.18.0.0, 198.18.0.3"},
		{name: "all of IPv4 minus one", cidr: "0.0.0.0/0", except: []string{"198.18.0.0/15"},
			want: "0.0.0.0-198.17.255.255, 198.20.0.0-255.255.255.255"},
		{name: "v6", cidr: "fd00::/64", except: []string{"fd00::/65"}, want: "fd00::8000:0:0:0/65"},
		{name: "v6 nested", cidr: "fd00::/48", except: []string{"fd00:0:0:1::/64", "fd00:0:0:1::/80", "fd00:0:0:2::/64"},
			want: "fd00::/64, fd00:0:0:3::-fd00::ffff:ffff:ffff:ffff:ffff"},
		{name: "v6 adjacent", cidr: "fd00::/120", except: []string{"fd00::/122", "fd00::40/122"}, want: "fd00::80/121"},
		{name: "all of IPv6 minus fd00::/8", cidr: "::/0", except: []string{"fd00::/8"},
			want: "::-fcff:ffff:ffff:ffff:ffff:ffff:ffff:ffff, fe00::/7"},
		{name: "v4-mapped is IPv4", cidr: "::ffff:198.18.0.0/112", want: "198.18.0.0/16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := blockRanges(tc.cidr, tc.except)
			if err != nil {
				t.Fatal(err)
			}
			if got := rangesString(rs); got != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestBlockRangesErrors(t *testing.T) {
	for _, tc := range []struct{ cidr, except string }{
		{"not-a-cidr", ""},
		{"198.18.0.0/33", ""},
		{"198.18.0.0/16", "fd00::/64"},
		{"198.18.0.0/16", "198.18.0.0/x"},
	} {
		var ex []string
		if tc.except != "" {
			ex = []string{tc.except}
		}
		if _, err := blockRanges(tc.cidr, ex); err == nil {
			t.Errorf("blockRanges(%q, %q): no error", tc.cidr, tc.except)
		}
	}
}

func TestNormalizeRanges(t *testing.T) {
	r := func(a, b string) ipRange { return ipRange{netip.MustParseAddr(a), netip.MustParseAddr(b)} }
	got := normalizeRanges([]ipRange{
		r("198.18.0.10", "198.18.0.20"),
		r("198.18.0.0", "198.18.0.9"),         // touches the first
		r("198.18.0.15", "198.18.0.30"),       // overlaps
		r("198.18.1.0", "198.18.1.0"),         // apart
		r("255.255.255.0", "255.255.255.255"), // runs to the end
		r("255.255.255.255", "255.255.255.255"),
	})
	want := "198.18.0.0-198.18.0.30, 198.18.1.0, 255.255.255.0/24"
	if s := rangesString(got); s != want {
		t.Fatalf("got %s, want %s", s, want)
	}
}
