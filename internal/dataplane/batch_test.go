package dataplane

import (
	"errors"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/internal/netnstest"
)

// TestBatchConnErrors checks that a batch the kernel refuses fails Flush
// with the kernel's error and changes nothing, and that the connection
// carries on with the next batch; a good batch of many messages commits.
func TestBatchConnErrors(t *testing.T) {
	ns := netnstest.New(t)
	c, err := dialBatchConn(int(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseLasting()
	read, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	table := nftTable()
	chains := func() int {
		t.Helper()
		cs, err := read.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			t.Fatal(err)
		}
		return len(cs)
	}

	// A chain, then a rule in a chain that does not exist: the whole batch
	// is refused.
	c.AddTable(table)
	c.AddChain(&nftables.Chain{Name: "good", Table: table})
	c.AddRule(&nftables.Rule{Table: table, Chain: &nftables.Chain{Name: "missing", Table: table}})
	c.AddChain(&nftables.Chain{Name: "after", Table: table})
	err = c.Flush()
	if !errors.Is(err, unix.ENOENT) {
		t.Fatalf("Flush of a batch adding a rule to a missing chain: %v, want ENOENT", err)
	}
	if n := chains(); n != 0 {
		t.Fatalf("%d chains after a refused batch, want none", n)
	}

	// The same connection sends the next batch: 2,000 chains, each with a
	// rule, acknowledged once.
	c.AddTable(table)
	for i := range 2000 {
		ch := c.AddChain(&nftables.Chain{Name: "c" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676)), Table: table})
		c.AddRule(&nftables.Rule{Table: table, Chain: ch})
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("Flush after a refused batch: %v", err)
	}
	if n := chains(); n != 2000 {
		t.Fatalf("%d chains, want 2000", n)
	}
	// A second refused batch, then deleting the table.
	c.AddChain(&nftables.Chain{Name: "caa", Table: table})
	c.AddChain(&nftables.Chain{Name: "x", Table: &nftables.Table{Name: "absent", Family: nftables.TableFamilyINet}})
	if err := c.Flush(); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("Flush adding a chain to a missing table: %v, want ENOENT", err)
	}
	c.DelTable(table)
	if err := c.Flush(); err != nil {
		t.Fatalf("deleting the table: %v", err)
	}
	if n := chains(); n != 0 {
		t.Fatalf("%d chains after deleting the table", n)
	}
}
