// Package message bounds the text nftguard writes where users read it:
// condition messages in status and the notes of Events, some of which
// carry an agent's or the kernel's error text into users' namespaces.
package message

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Max is the longest message Bound returns, in bytes: the limit of an
// events.k8s.io/v1 Event's note, and short enough for a condition that
// `kubectl describe` shows whole.
const Max = 1024

// Bound returns s as one line of valid UTF-8 without control characters
// (each run of them becomes one space, or none after a space), cut to at most Max bytes at a
// character boundary, with the number of bytes left out.
func Bound(s string) string { return BoundTo(s, Max) }

// BoundTo is Bound with a limit of n bytes (at least 64).
func BoundTo(s string, n int) string {
	n = max(n, 64)
	s = strings.ToValidUTF8(s, "\uFFFD")
	var b strings.Builder
	space := false
	for _, r := range s {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			if !space {
				b.WriteByte(' ')
			}
			space = true
			continue
		}
		space = r == ' '
		b.WriteRune(r)
	}
	out := strings.TrimSpace(b.String())
	if len(out) <= n {
		return out
	}
	// Leave room for the suffix; its digits never exceed those of len(out).
	suffix := fmt.Sprintf("… (%d more bytes)", len(out))
	cut := n - len(suffix)
	for cut > 0 && !utf8.RuneStart(out[cut]) {
		cut--
	}
	return out[:cut] + fmt.Sprintf("… (%d more bytes)", len(out)-cut)
}
