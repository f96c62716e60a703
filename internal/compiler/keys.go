package compiler

import (
	"encoding/json"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// The names of groups are hashes of their key in JSON (groupKey), and the
// selector cache is keyed by canonical selectors in JSON. These functions
// write the same bytes as json.Marshal without its reflection and, for the
// common selectors (match labels only), without building the canonical
// selector; TestKeyEncoding holds them to json.Marshal.

// appendJSONString appends s as json.Marshal writes it.
func appendJSONString(b []byte, s string) []byte {
	for i := range len(s) {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			// Escapes, or bytes that may need them: let encoding/json decide.
			q, err := json.Marshal(s)
			if err != nil {
				panic(err) // a string always encodes
			}
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendCanonicalSelectorJSON appends the canonical form of s (not nil) in
// JSON: json.Marshal(canonicalSelector(s)).
func appendCanonicalSelectorJSON(b []byte, s *metav1.LabelSelector) []byte {
	if len(s.MatchExpressions) > 0 {
		j, err := json.Marshal(canonicalSelector(s))
		if err != nil {
			panic(err) // only strings inside
		}
		return append(b, j...)
	}
	if len(s.MatchLabels) == 0 {
		return append(b, "{}"...)
	}
	var buf [8]string
	keys := buf[:0]
	for k := range s.MatchLabels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, `{"matchLabels":{`...)
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = appendJSONString(b, s.MatchLabels[k])
	}
	return append(b, "}}"...)
}

// appendGroupKeyJSON appends the key of the group ix.group returns for these
// arguments: json.Marshal of its groupKey.
func appendGroupKeyJSON(b []byte, ns string, nsSel, podSel *metav1.LabelSelector, port *v1alpha1.NamedPort) []byte {
	b = append(b, '{')
	sep := func() {
		if len(b) > 1 {
			b = append(b, ',')
		}
	}
	if nsSel == nil && ns != "" {
		b = append(b, `"ns":`...)
		b = appendJSONString(b, ns)
	}
	if nsSel != nil {
		sep()
		b = append(b, `"nss":`...)
		b = appendCanonicalSelectorJSON(b, nsSel)
	}
	if podSel != nil && (len(podSel.MatchLabels) > 0 || len(podSel.MatchExpressions) > 0) {
		sep()
		b = append(b, `"pod":`...)
		b = appendCanonicalSelectorJSON(b, podSel)
	}
	if port != nil {
		sep()
		b = append(b, `"port":{"name":`...)
		b = appendJSONString(b, port.Name)
		b = append(b, `,"protocol":`...)
		b = appendJSONString(b, string(port.Protocol))
		b = append(b, '}')
	}
	return append(b, '}')
}
