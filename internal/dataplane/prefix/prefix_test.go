package prefix

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

func TestPodKey(t *testing.T) {
	sum := sha256.Sum256([]byte("default/web-0"))
	want := hex.EncodeToString(sum[:])[:12]
	if got := PodKey("default", "web-0"); got != want {
		t.Fatalf("PodKey = %q, want %q", got, want)
	}
	if PodKey("a", "b/c") == PodKey("a/b", "c") {
		// Both hash "a/b/c": namespaces cannot contain '/', so this is fine,
		// but the test documents the input format.
		t.Log("namespace/name is the hashed input")
	}
	if len(PodKey("x", "y")) != PodKeyLen {
		t.Fatal("wrong length")
	}
}

func TestFormatParse(t *testing.T) {
	key := PodKey("ns", "pod")
	for _, a := range []Action{ActionDrop, ActionAudit} {
		for _, d := range []Direction{Ingress, Egress} {
			s := Format(a, d, key)
			if want := "nftguard:" + string(a) + ":" + string(d) + ":" + key; s != want {
				t.Fatalf("Format = %q, want %q", s, want)
			}
			f, err := Parse(s)
			if err != nil {
				t.Fatalf("Parse(%q): %v", s, err)
			}
			if f != (Fields{Action: a, Direction: d, PodKey: key}) {
				t.Fatalf("Parse(%q) = %+v", s, f)
			}
			if f.String() != s {
				t.Fatalf("String() = %q", f.String())
			}
		}
	}
	if f, err := Parse(Format(ActionDrop, Egress, key) + "\x00"); err != nil || f.PodKey != key {
		t.Fatalf("trailing NUL: %+v %v", f, err)
	}
}

func TestParseRejects(t *testing.T) {
	for _, s := range []string{
		"",
		"nftguard",
		"nftguard:drop:in",
		"other:drop:in:0123456789ab",
		"nftguard:reject:in:0123456789ab",
		"nftguard:drop:out:0123456789ab",
		"nftguard:drop:in:0123456789a",
		"nftguard:drop:in:0123456789abc",
		"nftguard:drop:in:0123456789AB",
		"nftguard:drop:in:0123456789ag",
		"nftguard:drop:in:0123456789ab:x",
	} {
		if f, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) = %+v, want error", s, f)
		}
	}
}
