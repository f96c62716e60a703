package nftnl

import (
	"errors"
	"fmt"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/netnstest"
)

// TestBatchSocketErrors checks that a batch the kernel refuses fails with
// the kernel's error and changes nothing, and that the socket carries on
// with the next batch; a good batch of many messages commits.
func TestBatchSocketErrors(t *testing.T) {
	ns := netnstest.New(t)
	s, err := newBatchSocket(int(ns), socketOptions(1<<20, 1<<20), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	read, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	chains := func() int {
		t.Helper()
		cs, err := read.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			t.Fatal(err)
		}
		return len(cs)
	}
	seq := uint32(1)
	send := func(b *batch) error {
		t.Helper()
		buf, ackSeq, ok, err := b.finish()
		if err != nil || !ok {
			t.Fatalf("finishing batch: %v (ok %t)", err, ok)
		}
		seq = b.seq
		return s.send(buf, ackSeq)
	}
	accept := model.NewRule(model.Verdict{Kind: model.VerdictAccept})

	// A chain, then a rule in a chain that does not exist: the whole batch
	// is refused.
	b := newBatch(seq, 0)
	b.addTable()
	b.addChain(&model.Chain{Name: "good"})
	b.addRule("missing", accept, false, 0)
	b.addChain(&model.Chain{Name: "after"})
	if err := send(b); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("batch adding a rule to a missing chain: %v, want ENOENT", err)
	}
	if n := chains(); n != 0 {
		t.Fatalf("%d chains after a refused batch, want none", n)
	}

	// The next batch: 2,000 chains, each with a rule, acknowledged once.
	b = newBatch(seq, 0)
	b.addTable()
	for i := range 2000 {
		name := fmt.Sprintf("c%d", i)
		b.addChain(&model.Chain{Name: name})
		b.addRule(name, accept, false, 0)
	}
	if err := send(b); err != nil {
		t.Fatalf("batch after a refused batch: %v", err)
	}
	if n := chains(); n != 2000 {
		t.Fatalf("%d chains, want 2000", n)
	}
	// A second refused batch, then deleting the table.
	b = newBatch(seq, 0)
	b.addChain(&model.Chain{Name: "c0"})
	b.delChain("absent")
	if err := send(b); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("batch deleting a missing chain: %v, want ENOENT", err)
	}
	b = newBatch(seq, 0)
	b.delTable()
	if err := send(b); err != nil {
		t.Fatalf("deleting the table: %v", err)
	}
	if n := chains(); n != 0 {
		t.Fatalf("%d chains after deleting the table", n)
	}
}
