package nftnl

import (
	"slices"
	"testing"

	"github.com/google/nftables"

	"github.com/nftguard/nftguard/internal/dataplane/dptest"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/nfttest"
)

// withReadySet returns the sample table with a co-owned set "coowned4" that
// another writer fills.
func withReadySet(t *testing.T) *model.Table {
	spec, groups := dptest.Sample()
	tab := mustRender(t, spec, groups)
	tab.Sets = append(slices.Clone(tab.Sets), &model.Set{Name: "coowned4", Kind: model.SetIPv4, CoOwned: true})
	slices.SortFunc(tab.Sets, func(a, b *model.Set) int {
		if a.Name < b.Name {
			return -1
		}
		return 1
	})
	return tab
}

// TestCoOwnedSetInKernel: the Programmer creates a co-owned set, leaves
// the elements another writer puts in it through every apply, repair and
// restart, and reports them as no drift.
func TestCoOwnedSetInKernel(t *testing.T) {
	ns := newNetNS(t)
	p := programmer(t, ns)
	if _, err := p.Apply(withReadySet(t)); err != nil {
		t.Fatal(err)
	}
	other, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	ready := nfttest.Set(&model.Set{Name: "coowned4", Kind: model.SetIPv4})
	written := []model.Element{{Key: []byte{198, 18, 0, 10}}, {Key: []byte{198, 18, 0, 11}}}
	libElems, err := nfttest.Elements(model.SetIPv4, written)
	if err != nil {
		t.Fatal(err)
	}
	if err := other.SetAddElements(ready, libElems); err != nil {
		t.Fatal(err)
	}
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	hasWritten := func(when string) {
		t.Helper()
		tab, err := ReadTable(int(ns))
		if err != nil {
			t.Fatal(err)
		}
		if s := tab.Set("coowned4"); s == nil || !model.SortedElements(s.Elements) || len(s.Elements) != 2 ||
			model.ElemsString(s.Kind, s.Elements) != model.ElemsString(model.SetIPv4, written) {
			t.Fatalf("%s: coowned4 holds %v, want the other writer's %s", when, s, model.ElemsString(model.SetIPv4, written))
		}
	}
	if d, err := p.Verify(); err != nil || len(d) != 0 {
		t.Fatalf("the other writer's elements count as drift: %v %v", d, err)
	}
	// A change to nftguard's own objects, then a full reconcile by a new
	// Programmer (an agent restart), then a rebuild forced by a chain of
	// the wrong shape.
	changed := withReadySet(t)
	changed.Chain(model.ChainEgressInput).Rules = changed.Chain(model.ChainEgressInput).Rules[:1]
	if _, err := p.Apply(changed); err != nil {
		t.Fatal(err)
	}
	hasWritten("after an incremental apply")
	p.Close()
	restarted := programmer(t, ns)
	if st, err := restarted.Apply(changed); err != nil || !st.Full {
		t.Fatalf("restart: %+v %v", st, err)
	}
	hasWritten("after a restart")
	other.DelChain(&nftables.Chain{Table: nfttest.Table(), Name: model.ChainEgressInput})
	other.AddChain(&nftables.Chain{Table: nfttest.Table(), Name: model.ChainEgressInput})
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	if d, err := restarted.Verify(); err != nil || len(d) == 0 {
		t.Fatalf("a replaced base chain is not drift: %v %v", d, err)
	}
	st, err := restarted.Apply(changed)
	if err != nil || !st.Rebuild {
		t.Fatalf("repair: %+v %v", st, err)
	}
	hasWritten("after a rebuild")
	assertInSync(t, restarted)
}
