package render

import (
	"encoding/binary"
	"testing"

	"github.com/nftguard/nftguard/internal/dataplane/dptest"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

func elems(n, offset int, verdict *model.Verdict) []model.Element {
	out := make([]model.Element, n)
	for i := range out {
		k := make([]byte, 4)
		binary.BigEndian.PutUint32(k, uint32(0xc6120000+i+offset)) // 198.18.x.y
		out[i] = model.Element{Key: k, Verdict: verdict}
	}
	return out
}

func TestElementDelta(t *testing.T) {
	jump := &model.Verdict{Kind: model.VerdictGoto, Chain: "in-a"}
	base := elems(5, 0, jump)
	if r, a := model.ElementDelta(base, elems(5, 0, jump)); r != nil || a != nil {
		t.Errorf("equal sets: removed %v added %v", r, a)
	}
	reversed := []model.Element{base[4], base[3], base[2], base[1], base[0]}
	if r, a := model.ElementDelta(base, reversed); len(r) != 0 || len(a) != 0 {
		t.Errorf("same members in another order: removed %v added %v", r, a)
	}
	r, a := model.ElementDelta(base, elems(5, 1, jump))
	if len(r) != 1 || len(a) != 1 || r[0].Key[3] != base[0].Key[3] || a[0].Key[3] != base[4].Key[3]+1 {
		t.Errorf("shifted by one: removed %v added %v", r, a)
	}
	mixed := []model.Element{base[1], base[0], elems(1, 9, jump)[0]}
	if r, a := model.ElementDelta(base, mixed); len(r) != 3 || len(a) != 1 || a[0].Key[3] != base[0].Key[3]+9 {
		t.Errorf("unsorted want: removed %v added %v", r, a)
	}
	other := &model.Verdict{Kind: model.VerdictGoto, Chain: "in-b"}
	if r, a := model.ElementDelta(base, elems(5, 0, other)); len(r) != 5 || len(a) != 5 {
		t.Errorf("same keys, other verdicts: removed %d added %d, want 5 and 5", len(r), len(a))
	}
	if r, a := model.ElementDelta(base, elems(5, 0, nil)); len(r) != 5 || len(a) != 5 {
		t.Errorf("verdicts dropped: removed %d added %d, want 5 and 5", len(r), len(a))
	}
}

// BenchmarkElementDelta is the per-set cost of an update that leaves a
// 100k-element set as it was, one that replaces a member (both sorted, as
// rendered), and the same on lists in no order.
func BenchmarkElementDelta(b *testing.B) {
	cur := elems(100_000, 0, nil)
	b.Run("unchanged", func(b *testing.B) {
		want := elems(100_000, 0, nil)
		b.ReportAllocs()
		for b.Loop() {
			model.ElementDelta(cur, want)
		}
	})
	b.Run("one-changed", func(b *testing.B) {
		want := elems(100_000, 1, nil) // the first member leaves, a new one comes
		b.ReportAllocs()
		for b.Loop() {
			model.ElementDelta(cur, want)
		}
	})
	b.Run("one-changed-unsorted", func(b *testing.B) {
		want := elems(100_000, 1, nil)
		want[0], want[1] = want[1], want[0]
		b.ReportAllocs()
		for b.Loop() {
			model.ElementDelta(cur, want)
		}
	})
}

// TestRenderedSetsAreSorted: Render emits every set's elements in order, so
// an update diffs them in one pass (mergeDelta) rather than through maps.
func TestRenderedSetsAreSorted(t *testing.T) {
	spec, groups := dptest.Sample()
	tbl, err := Render(spec, groups, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range tbl.Sets {
		if !model.SortedElements(s.Elements) {
			t.Errorf("set %s is not in order: %s", s.Name, model.ElemsString(s.Kind, s.Elements))
		}
	}
}

// TestMergeSorted merges runs of interleaved keys (shards of a group).
func TestMergeSorted(t *testing.T) {
	var runs [][]model.Element
	var all []model.Element
	for r := range 5 {
		var run []model.Element
		// Disjoint, interleaved, of different lengths.
		for i := r; i < 400; i += 5 {
			if (i/5)%(r+1) != 0 {
				continue
			}
			e := model.Element{Key: []byte{byte(i >> 8), byte(i)}}
			run = append(run, e)
			all = append(all, e)
		}
		runs = append(runs, run)
	}
	runs = append(runs, nil)
	got := mergeSorted(runs)
	if len(got) != len(all) || !model.SortedElements(got) {
		t.Fatalf("merged %d of %d elements, sorted %v", len(got), len(all), model.SortedElements(got))
	}
}
