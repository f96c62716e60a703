package nftnl

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// kernelElement is an element as the kernel stores it. Interval sets of one
// field hold a start element and, unless the range runs to the last
// address, an end element one past the range (end set); concatenated
// interval sets hold the inclusive end as keyEnd.
type kernelElement struct {
	key, keyEnd []byte
	end         bool
	verdict     *model.Verdict
	// code is the kernel's code of verdict, set by eachKernelElement.
	code int32
}

// eachKernelElement calls fn with each element as the kernel stores it. A
// map element without a verdict, or with one the kernel does not know, is
// an error: it is never written as anything else.
func eachKernelElement(kind model.SetKind, elems []model.Element, fn func(kernelElement)) error {
	for i := range elems {
		e := &elems[i]
		var code int32
		if kind.IsMap() {
			if e.Verdict == nil {
				return fmt.Errorf("element %s of a verdict map has no verdict", kind.Format(*e))
			}
			var err error
			if code, err = verdictCode(*e.Verdict); err != nil {
				return fmt.Errorf("element %s: %w", kind.Format(*e), err)
			}
		} else if e.Verdict != nil {
			return fmt.Errorf("element %s of a set has a verdict", kind.Format(*e))
		}
		switch {
		case kind.IsRBTree():
			fn(kernelElement{key: e.Key, verdict: e.Verdict, code: code})
			if next, ok := increment(e.KeyEnd); ok {
				fn(kernelElement{key: next, end: true})
			}
		case kind.IsConcatInterval():
			fn(kernelElement{key: e.Key, keyEnd: e.KeyEnd, verdict: e.Verdict, code: code})
		default:
			fn(kernelElement{key: e.Key, verdict: e.Verdict, code: code})
		}
	}
	return nil
}

// modelElements decodes elements read from the kernel, sorted.
func modelElements(kind model.SetKind, elems []kernelElement) []model.Element {
	if !kind.IsRBTree() {
		out := make([]model.Element, 0, len(elems))
		for _, e := range elems {
			m := model.Element{Key: e.key, Verdict: e.verdict}
			if kind.IsConcatInterval() {
				m.KeyEnd = e.keyEnd
				if m.KeyEnd == nil {
					m.KeyEnd = e.key
				}
			}
			out = append(out, m)
		}
		slices.SortFunc(out, func(a, b model.Element) int { return model.CompareElements(&a, &b) })
		return out
	}
	// Pair starts with the end element that follows them. At one key an
	// end sorts before a start (the end of the range below).
	sorted := slices.Clone(elems)
	slices.SortFunc(sorted, func(a, b kernelElement) int {
		if c := bytes.Compare(a.key, b.key); c != 0 {
			return c
		}
		switch {
		case a.end == b.end:
			return 0
		case a.end:
			return -1
		}
		return 1
	})
	var out []model.Element
	var start []byte
	var verdict *model.Verdict // of a verdict map's start element
	for _, e := range sorted {
		switch {
		case !e.end:
			if start != nil { // a start without an end: keep it as one address
				out = append(out, model.Element{Key: start, KeyEnd: start, Verdict: verdict})
			}
			start, verdict = e.key, e.verdict
		case start != nil:
			out = append(out, model.Element{Key: start, KeyEnd: decrement(e.key), Verdict: verdict})
			start, verdict = nil, nil
		}
	}
	if start != nil { // runs to the last address
		out = append(out, model.Element{Key: start, KeyEnd: bytes.Repeat([]byte{0xff}, len(start)), Verdict: verdict})
	}
	return out
}

// increment returns b+1 as a big-endian number, and false when b is all ones.
func increment(b []byte) ([]byte, bool) {
	out := slices.Clone(b)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			return out, true
		}
	}
	return nil, false
}

func decrement(b []byte) []byte {
	out := slices.Clone(b)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]--
		if out[i] != 0xff {
			break
		}
	}
	return out
}

// align4 rounds n up to a multiple of 4, as netlink pads attributes.
func align4(n int) int { return (n + 3) &^ 3 }
