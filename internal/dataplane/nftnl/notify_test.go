package nftnl

import (
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/nftguard/nftguard/internal/dataplane/dptest"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/nfttest"
)

// notifications collects a Monitor's notifications in the background.
func notifications(t *testing.T, m *Monitor) <-chan model.Notification {
	ch := make(chan model.Notification, 4096)
	go func() {
		defer close(ch)
		for {
			ns, err := m.Receive()
			if err != nil {
				return
			}
			for _, n := range ns {
				ch <- n
			}
		}
	}()
	t.Cleanup(func() { m.Close() })
	return ch
}

// untilGeneration returns the notifications up to and including the next
// end of a transaction.
func untilGeneration(t *testing.T, ch <-chan model.Notification) []model.Notification {
	t.Helper()
	var out []model.Notification
	timeout := time.After(10 * time.Second)
	for {
		select {
		case n, ok := <-ch:
			if !ok {
				t.Fatal("monitor stopped")
			}
			out = append(out, n)
			if n.Object == model.ObjectGeneration {
				return out
			}
		case <-timeout:
			t.Fatalf("no end of transaction after %d notifications", len(out))
		}
	}
}

func has(ns []model.Notification, want model.Notification) bool {
	return slices.ContainsFunc(ns, func(n model.Notification) bool {
		return n.Deleted == want.Deleted && n.Object == want.Object && n.Family == want.Family && n.Table == want.Table &&
			n.Name == want.Name && (want.RuleID == "" || n.RuleID == want.RuleID)
	})
}

// TestMonitor: every committed change of the table is announced and
// decoded, with the rule ids nftguard writes and the process that
// committed it; changes to other tables are told apart.
func TestMonitor(t *testing.T) {
	ns := newNetNS(t)
	m, err := NewMonitor(int(ns))
	if err != nil {
		t.Fatal(err)
	}
	ch := notifications(t, m)
	spec, groups := dptest.Sample()
	tab := mustRender(t, spec, groups)
	p := programmer(t, ns)
	if _, err := p.Apply(tab); err != nil {
		t.Fatal(err)
	}
	got := untilGeneration(t, ch)
	gen := got[len(got)-1]
	// The kernel names the thread that committed: one of this process's.
	if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", gen.PID)); err != nil || gen.Generation == 0 {
		t.Errorf("end of transaction %s, not by a thread of process %d: %v", gen, os.Getpid(), err)
	}
	inet := func(obj model.ObjectKind, name string) model.Notification {
		return model.Notification{Object: obj, Family: "inet", Table: model.TableName, Name: name}
	}
	rule := inet(model.ObjectRule, model.ChainIngressForward)
	rule.RuleID = tab.Chain(model.ChainIngressForward).Rules[0].ID()
	for _, want := range []model.Notification{
		inet(model.ObjectTable, ""), inet(model.ObjectChain, model.ChainIngressForward), rule,
		inet(model.ObjectSet, model.MapIngress4), inet(model.ObjectElements, model.MapIngress4),
	} {
		if !has(got, want) {
			t.Errorf("no notification %s among %d", want, len(got))
		}
	}
	for _, n := range got[:len(got)-1] {
		if !n.Ours() {
			t.Errorf("notification about another table: %s", n)
		}
	}
	// Every notification of the Programmer's transaction names its socket.
	for _, n := range got {
		if !p.Owns(n.PortID) {
			t.Errorf("notification %s with port id %d: the Programmer does not own it", n, n.PortID)
		}
	}

	// Another writer flushes a chain of the table, then writes its own
	// table.
	other, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	other.FlushChain(&nftables.Chain{Table: nfttest.Table(), Name: model.ChainIngressForward})
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	flushed := untilGeneration(t, ch)
	for _, n := range flushed {
		if p.Owns(n.PortID) {
			t.Errorf("another writer's %s (port id %d) reads as the Programmer's", n, n.PortID)
		}
	}
	del := inet(model.ObjectRule, model.ChainIngressForward)
	del.Deleted = true
	if !has(flushed, del) {
		t.Errorf("flushing a chain announced %v", flushed)
	}
	if err := writeOtherTable(ns); err != nil {
		t.Fatal(err)
	}
	foreign := untilGeneration(t, ch)
	if !has(foreign, model.Notification{Object: model.ObjectTable, Family: "inet", Table: "other"}) {
		t.Errorf("another table's creation announced %v", foreign)
	}
	for _, n := range foreign[:len(foreign)-1] {
		if n.Ours() {
			t.Errorf("a change of table other reads as ours: %s", n)
		}
	}
}
