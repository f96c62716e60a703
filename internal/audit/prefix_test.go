package audit

import (
	"strings"
	"testing"
)

func TestPodKey(t *testing.T) {
	// Values from: printf %s x/a | sha256sum | cut -c1-12
	for _, tc := range []struct{ ns, name, want string }{
		{"x", "a", "5356176b92c3"},
		{"x", "b", "b68ad6bd6971"},
		{"y", "a", "8187477f90b2"},
	} {
		if got := PodKey(tc.ns, tc.name); got != tc.want {
			t.Errorf("PodKey(%q, %q) = %q, want %q", tc.ns, tc.name, got, tc.want)
		}
	}
}

func TestParsePrefix(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Prefix
	}{
		{"nftguard:drop:in:5356176b92c3", Prefix{ActionDrop, Ingress, "5356176b92c3"}},
		{"nftguard:drop:eg:5356176b92c3", Prefix{ActionDrop, Egress, "5356176b92c3"}},
		{"nftguard:audit:in:0123456789ab", Prefix{ActionAudit, Ingress, "0123456789ab"}},
		{"nftguard:audit:eg:0123456789ab", Prefix{ActionAudit, Egress, "0123456789ab"}},
		{"nftguard:drop:in:5356176b92c3\x00", Prefix{ActionDrop, Ingress, "5356176b92c3"}},
		{"nftguard:drop:in:5356176b92c3 ", Prefix{ActionDrop, Ingress, "5356176b92c3"}},
	} {
		got, err := ParsePrefix(tc.in)
		if err != nil {
			t.Errorf("ParsePrefix(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParsePrefix(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		if s := got.String(); s != strings.TrimRight(tc.in, "\x00 ") {
			t.Errorf("Prefix(%q).String() = %q", tc.in, s)
		}
	}
}

func TestParsePrefixRejects(t *testing.T) {
	for _, in := range []string{
		"",
		"nftguard",
		"nftguard:drop:in",
		"nftguard:drop:in:5356176b92c3:extra",
		"nftguard:drop:in:",
		"nftguardx:drop:in:5356176b92c3",
		"other:drop:in:5356176b92c3",
		"nftguard:accept:in:5356176b92c3",
		"nftguard:lost:in:5356176b92c3",
		"nftguard:drop:out:5356176b92c3",
		"nftguard:drop:ingress:5356176b92c3",
		"nftguard:drop:in:5356176B92C3",
		"nftguard:drop:in:5356176b92c",
		"nftguard:drop:in:5356176b92c3a",
		"nftguard:drop:in:5356176b92cg",
		"NFTGUARD:drop:in:5356176b92c3",
		" nftguard:drop:in:5356176b92c3",
	} {
		if p, err := ParsePrefix(in); err == nil {
			t.Errorf("ParsePrefix(%q) = %+v, want an error", in, p)
		}
	}
}

func FuzzParsePrefix(f *testing.F) {
	f.Add("nftguard:drop:in:5356176b92c3")
	f.Add("nftguard:audit:eg:0123456789ab\x00")
	f.Add("nftguard:::")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePrefix(s)
		if err != nil {
			return
		}
		back, err := ParsePrefix(p.String())
		if err != nil || back != p {
			t.Fatalf("ParsePrefix(%q) = %+v does not round-trip: %+v, %v", s, p, back, err)
		}
	})
}
