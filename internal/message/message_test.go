package message

import (
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestBound(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"short stays", "Table holds generation 3", "Table holds generation 3"},
		{"control characters become one space", "netlink: \x1b[31mEPERM\x1b[0m\r\n\tretry", "netlink: [31mEPERM [0m retry"},
		{"newlines inside", "line one\nline two\n", "line one line two"},
		{"invalid UTF-8 replaced", "bad \xff byte", "bad \uFFFD byte"},
		{"C1 and line separators", "a\u0085b\u2028c", "a b c"},
	} {
		if got := Bound(tc.in); got != tc.want {
			t.Errorf("%s: Bound(%q) = %q, want %q", tc.name, tc.in, got, tc.want)
		}
	}
}

func TestBoundCuts(t *testing.T) {
	long := strings.Repeat("é", 2000) // 4000 bytes
	got := Bound(long)
	if len(got) > Max {
		t.Fatalf("Bound gave %d bytes, want at most %d", len(got), Max)
	}
	if !utf8.ValidString(got) {
		t.Fatalf("Bound cut inside a character: %q", got[len(got)-40:])
	}
	if !strings.HasSuffix(got, " more bytes)") || !strings.HasPrefix(got, "éé") {
		t.Fatalf("Bound(4000 bytes) = ...%q, want the start and a count of what was left out", got[len(got)-40:])
	}
	kept := strings.Count(got, "é")
	var left int
	if _, err := fmt.Sscan(got[strings.LastIndex(got, "(")+1:], &left); err != nil {
		t.Fatal(err)
	}
	if kept*2+left != len(long) {
		t.Errorf("kept %d bytes and says %d left out, of %d", kept*2, left, len(long))
	}
	if got := BoundTo(strings.Repeat("x", 100), 10); len(got) > 64 {
		t.Errorf("BoundTo(100, 10) = %d bytes, want the floor of 64", len(got))
	}
}
