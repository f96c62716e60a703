package compiler

import (
	"encoding/json"
	"math/rand/v2"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// checkKeyEncoding compares the key writers with json.Marshal for a group
// built from these arguments.
func checkKeyEncoding(t *testing.T, ns string, nsSel, podSel *metav1.LabelSelector, port *v1alpha1.NamedPort) {
	t.Helper()
	for _, s := range []*metav1.LabelSelector{nsSel, podSel} {
		if s == nil {
			continue
		}
		want, err := json.Marshal(canonicalSelector(s))
		if err != nil {
			t.Fatal(err)
		}
		if got := appendCanonicalSelectorJSON([]byte("prefix"), s); string(got) != "prefix"+string(want) {
			t.Fatalf("selector %#v:\ngot  %s\nwant prefix%s", s, got, want)
		}
	}
	k := groupKey{Namespace: ns, NamespaceSelector: canonicalSelector(nsSel), PodSelector: canonicalSelector(podSel), NamedPort: port}
	if k.NamespaceSelector != nil {
		k.Namespace = ""
	}
	if emptySelector(k.PodSelector) {
		k.PodSelector = nil
	}
	want, err := json.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	if got := appendGroupKeyJSON(nil, ns, nsSel, podSel, port); string(got) != string(want) {
		t.Fatalf("group key of %q %#v %#v %#v:\ngot  %s\nwant %s", ns, nsSel, podSel, port, got, want)
	}
}

var keyStrings = []string{"", "a", "app", "x-y.z_1", "kubernetes.io/metadata.name", "a<b", "a>b", "a&b", `q"uote`, `back\slash`,
	"tab\t", "nl\n", "\x00", "\x7f", "é", "\u2028", "\u2029", "\xff", "a\xc3", "日本", "~!@#$%^*()"}

func randomSelector(rng *rand.Rand) *metav1.LabelSelector {
	str := func() string { return keyStrings[rng.IntN(len(keyStrings))] }
	switch rng.IntN(5) {
	case 0:
		return nil
	case 1:
		return &metav1.LabelSelector{}
	}
	s := &metav1.LabelSelector{}
	if n := rng.IntN(4); n > 0 || rng.IntN(2) == 0 {
		s.MatchLabels = map[string]string{}
		for range n {
			s.MatchLabels[str()] = str()
		}
	}
	if rng.IntN(3) == 0 {
		ops := []metav1.LabelSelectorOperator{metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn, metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist}
		for range 1 + rng.IntN(3) {
			r := metav1.LabelSelectorRequirement{Key: str(), Operator: ops[rng.IntN(len(ops))]}
			for range rng.IntN(3) {
				r.Values = append(r.Values, str())
			}
			s.MatchExpressions = append(s.MatchExpressions, r)
		}
	}
	return s
}

// TestKeyEncoding holds the key writers to json.Marshal, on which the
// group names (stored in API objects) depend.
func TestKeyEncoding(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 5000 {
		ns := keyStrings[rng.IntN(len(keyStrings))]
		var port *v1alpha1.NamedPort
		if rng.IntN(3) == 0 {
			port = &v1alpha1.NamedPort{Name: keyStrings[rng.IntN(len(keyStrings))], Protocol: v1alpha1.Protocol(keyStrings[rng.IntN(len(keyStrings))])}
		}
		checkKeyEncoding(t, ns, randomSelector(rng), randomSelector(rng), port)
	}
}

func FuzzKeyEncoding(f *testing.F) {
	f.Add("ns", "app", "web", "tier", "db", true, "http")
	f.Add("", "a<b", "\xff", "k", "", false, "")
	f.Fuzz(func(t *testing.T, ns, k1, v1, k2, v2 string, expr bool, port string) {
		s := &metav1.LabelSelector{MatchLabels: map[string]string{k1: v1}}
		if expr {
			s.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: k2, Operator: metav1.LabelSelectorOpIn, Values: []string{v2}}}
		} else {
			s.MatchLabels[k2] = v2
		}
		var np *v1alpha1.NamedPort
		if port != "" {
			np = &v1alpha1.NamedPort{Name: port, Protocol: v1alpha1.ProtocolTCP}
		}
		checkKeyEncoding(t, ns, s, s, np)
		checkKeyEncoding(t, ns, nil, s, np)
		checkKeyEncoding(t, ns, s, nil, nil)
	})
}
