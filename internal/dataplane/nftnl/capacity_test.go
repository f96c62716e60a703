package nftnl

import (
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
)

func TestSetCapacity(t *testing.T) {
	for _, c := range []struct {
		n    int
		want uint32
	}{{0, 1024}, {1, 1024}, {512, 1024}, {513, 2048}, {1100, 4096}, {50000, 131072}} {
		if got := model.SetCapacity(c.n); got != c.want {
			t.Errorf("setCapacity(%d) = %d, want %d", c.n, got, c.want)
		}
	}
}

// TestSplitPlanKeepsCapacity: a plan too large for one transaction creates
// a sized set ahead of the rest, still with its size.
func TestSplitPlanKeepsCapacity(t *testing.T) {
	tab := groupNode(t, 3000)
	pl := model.DiffSized(nil, tab, func(string) uint32 { return 0 })
	batches := splitPlan(pl, 16<<10)
	if len(batches) < 3 {
		t.Fatalf("%d batches, want the set's elements split off", len(batches))
	}
	for _, o := range batches[0] {
		if o.Kind == model.OpAddSet && o.Name == shared4("g") {
			if o.Capacity != model.SetCapacity(3000) || len(o.Set.Elements) != 0 {
				t.Fatalf("early %s: capacity %d with %d elements, want capacity %d and none", o, o.Capacity, len(o.Set.Elements), model.SetCapacity(3000))
			}
			return
		}
	}
	t.Fatalf("first batch does not create %s:\n%s", shared4("g"), (&model.Plan{Ops: batches[0]}).String())
}

// groupNode renders a pod allowed from one group of n addresses.
func groupNode(t *testing.T, n int) *model.Table {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}).String()
	}
	return mustRender(t, v1alpha1.NodeRuleSetSpec{
		Pods:  []v1alpha1.LocalPod{{Namespace: "a", Name: "b", IPs: []string{"198.18.0.1"}, Ingress: &v1alpha1.Isolation{Rules: []string{"r"}}}},
		Rules: []v1alpha1.Rule{{ID: "r", Direction: v1alpha1.DirectionIngress, Peers: []v1alpha1.Peer{{AddressGroup: "g"}}}},
	}, map[string]v1alpha1.AddressGroupSpec{"g": {Addresses: addrs}})
}

// TestSharedSetCapacity grows a group through the capacity of its shared
// set: the kernel refuses elements beyond a set's declared size, and the
// Programmer replaces the set in time, also after a restart (when it reads
// the sizes back from the kernel).
func TestSharedSetCapacity(t *testing.T) {
	ns := newNetNS(t)
	name := shared4("g")
	kernelSet := func() *model.Set {
		t.Helper()
		sets, err := (&reader{netns: int(ns)}).sets()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range sets {
			if s.Name == name {
				return s
			}
		}
		t.Fatalf("no set %s in the kernel", name)
		return nil
	}
	p := programmer(t, ns)
	steps := []struct {
		members  int
		capacity uint32
		rebuild  bool
		restart  bool
	}{
		{members: 10, capacity: 1024},
		{members: 600, capacity: 1024},                 // 10 + 590 added fit
		{members: 1100, capacity: 4096, rebuild: true}, // 600 + 500 added do not
		{members: 1100, capacity: 4096, restart: true},
		{members: 3000, capacity: 4096},                 // 1100 + 1900 fit
		{members: 3000, capacity: 4096},                 // nothing to do
		{members: 4200, capacity: 16384, rebuild: true}, // 3000 + 1200 do not
		{members: 5, capacity: 16384},                   // never shrinks in place
	}
	for _, s := range steps {
		if s.restart {
			p.Close()
			p = programmer(t, ns)
		}
		st, err := p.Apply(groupNode(t, s.members))
		if err != nil {
			t.Fatalf("%d members: %v", s.members, err)
		}
		if st.Rebuild != s.rebuild {
			t.Errorf("%d members: rebuild %t, want %t (%+v)", s.members, st.Rebuild, s.rebuild, st.Changes)
		}
		k := kernelSet()
		if len(k.Elements) != s.members || k.Capacity != s.capacity {
			t.Fatalf("%d members: the kernel holds %d elements in a set of size %d, want size %d", s.members, len(k.Elements), k.Capacity, s.capacity)
		}
		if drift, err := p.Verify(); err != nil || len(drift) > 0 {
			t.Fatalf("%d members: drift %v, %v", s.members, drift, err)
		}
	}

	// What the replacement avoids: the kernel refuses a batch that fills a
	// set beyond its size, whole.
	b := newBatch(1000, 0)
	full := &model.Set{Name: "full", Kind: model.SetTaggedIPv4}
	for i := range model.MinSetCapacity + 1 {
		full.Elements = append(full.Elements, model.Element{Key: []byte{0, 0, 0, 1, 198, 19, byte(i >> 8), byte(i)}})
	}
	b.elements(false, full, b.addSet(full, model.MinSetCapacity), full.Elements)
	buf, ack, _, err := b.finish()
	if err != nil {
		t.Fatal(err)
	}
	s, err := newBatchSocket(int(ns), socketOptions(1<<20, 1<<20), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if err := s.send(buf, ack); !errors.Is(err, unix.ENFILE) {
		t.Fatalf("adding %d elements to a set of size %d: %v, want ENFILE", len(full.Elements), model.MinSetCapacity, err)
	}
}
