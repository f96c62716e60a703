package nftnl

import (
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/dptest"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

// bulkAddresses returns n IPv6 addresses in fd00:<block>::/64.
func bulkAddresses(block uint16, n int) []string {
	out := make([]string, n)
	for i := range n {
		out[i] = netip.AddrFrom16([16]byte{0xfd, 0, byte(block >> 8), byte(block), 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)}).String()
	}
	return out
}

// prober keeps probing a flow until stopped, counting probes and wrong
// outcomes.
type prober struct {
	probes, wrong atomic.Int64
	stop          chan struct{}
	wg            sync.WaitGroup
}

func startProber(workers int, want bool, probe func() bool) *prober {
	p := &prober{stop: make(chan struct{})}
	for range workers {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for {
				select {
				case <-p.stop:
					return
				default:
				}
				if probe() != want {
					p.wrong.Add(1)
				}
				p.probes.Add(1)
			}
		}()
	}
	return p
}

func (p *prober) done() (probes, wrong int64) {
	close(p.stop)
	p.wg.Wait()
	return p.probes.Load(), p.wrong.Load()
}

// TestAtomicBulkUpdate replaces 100,000 elements of an address set while
// an allowed flow (a member before and after) and a blocked flow (never a
// member) are probed without pause: no probe may see a drop or a leak, and
// the kernel must not answer ENOBUFS.
func TestAtomicBulkUpdate(t *testing.T) {
	const n = 100_000
	topo := newTopology(t, "a", "b", "c")
	a, b, c := topo.pods["a"], topo.pods["b"], topo.pods["c"]
	p := programmer(t, topo.node)
	members := func(block uint16) map[string]v1alpha1.AddressGroupSpec {
		addrs := append(bulkAddresses(block, n), a.ip4.String(), a.ip6.String())
		return map[string]v1alpha1.AddressGroupSpec{"big": {Addresses: addrs}}
	}
	pol := policy{
		ingress: map[string][]string{"b": {"from-big"}},
		rules:   []v1alpha1.Rule{ingressRule("from-big", group("big"), dptest.TCP(80))},
	}
	update := func(t *testing.T, block uint16) Stats {
		pol.groups = members(block)
		desired, err := render.Render(topo.spec(pol), pol.groups, render.Options{})
		if err != nil {
			t.Fatal(err)
		}
		allowed6 := startProber(1, true, func() bool { return tcpConnect(a.ns, b.ip6, 80, allowedTimeout) })
		allowed4 := startProber(1, true, func() bool { return tcpConnect(a.ns, b.ip4, 80, allowedTimeout) })
		blocked := startProber(3, false, func() bool { return tcpConnect(c.ns, b.ip6, 80, blockedTimeout) })
		time.Sleep(50 * time.Millisecond)
		start := time.Now()
		st, err := p.Apply(desired)
		took := time.Since(start)
		time.Sleep(blockedTimeout + 50*time.Millisecond) // let probes sent during the apply finish
		n6, drops6 := allowed6.done()
		n4, drops4 := allowed4.done()
		nb, leaks := blocked.done()
		if err != nil {
			t.Fatalf("apply: %v", err)
		}
		t.Logf("apply of %+v took %v; probes: %d allowed v6, %d allowed v4, %d blocked", st.Changes, took, n6, n4, nb)
		if drops6+drops4 > 0 {
			t.Errorf("allowed flow dropped %d times", drops6+drops4)
		}
		if leaks > 0 {
			t.Errorf("blocked flow passed %d times", leaks)
		}
		if n6 < 10 || n4 < 10 || nb < 3 {
			t.Errorf("too few probes during the update: %d, %d, %d", n6, n4, nb)
		}
		return st
	}

	t.Run("cold", func(t *testing.T) {
		pol.groups = members(1)
		desired, err := render.Render(topo.spec(pol), pol.groups, render.Options{})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		st, err := p.Apply(desired)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("cold apply of %d elements: %v", st.SetElements, time.Since(start))
		if st.Transactions != 1 || st.Changes.ElementsAdded < n {
			t.Fatalf("stats %+v", st)
		}
		check(t, tcpProbe("a->b", a.ns, b.ip6, 80, true), tcpProbe("c->b", c.ns, b.ip6, 80, false))
	})

	t.Run("replace in one transaction", func(t *testing.T) {
		st := update(t, 2)
		if st.Transactions != 1 || st.Full || st.Changes != (model.Changes{ElementsAdded: n, ElementsDeleted: n}) {
			t.Fatalf("stats %+v", st)
		}
		assertInSync(t, p)
	})

	t.Run("replace in bounded transactions", func(t *testing.T) {
		// A budget far below the delta: additions commit first, removals
		// last, and the sets never lose a member both versions have.
		p.mu.Lock()
		p.maxBatchBytes = 1 << 20
		p.mu.Unlock()
		defer func() {
			p.mu.Lock()
			p.maxBatchBytes = defaultMaxBatchBytes
			p.mu.Unlock()
		}()
		st := update(t, 3)
		if st.Transactions < 3 || st.Changes != (model.Changes{ElementsAdded: n, ElementsDeleted: n}) {
			t.Fatalf("stats %+v", st)
		}
		assertInSync(t, p)
	})
}

// benchSpec is one isolated pod admitting a group of n IPv6 addresses.
func benchSpec(n int, block uint16) (v1alpha1.NodeRuleSetSpec, map[string]v1alpha1.AddressGroupSpec) {
	spec := v1alpha1.NodeRuleSetSpec{
		Pods: []v1alpha1.LocalPod{{Namespace: "bench", Name: "server", IPs: []string{"198.18.0.1", "fd00::1"},
			Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Rules: []string{"from-group"}}}},
		Rules: []v1alpha1.Rule{ingressRule("from-group", group("group"), dptest.TCP(80))},
	}
	return spec, map[string]v1alpha1.AddressGroupSpec{"group": {Addresses: bulkAddresses(block, n)}}
}

// BenchmarkApply measures a cold apply of a table with N set elements and
// incremental applies that replace 1 and 1,000 of them, in a network
// namespace.
func BenchmarkApply(b *testing.B) {
	const n = 10_000
	ns := newNetNS(b)
	b.Run("cold-10000", func(b *testing.B) {
		spec, groups := benchSpec(n, 1)
		desired := mustRender(b, spec, groups)
		p := programmer(b, ns)
		for b.Loop() {
			b.StopTimer()
			if err := p.Delete(); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if _, err := p.Apply(desired); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(n), "elements")
	})
	for _, delta := range []int{1, 1000} {
		b.Run("delta-"+strconv.Itoa(delta), func(b *testing.B) {
			spec, groups := benchSpec(n, 1)
			tables := [2]*model.Table{mustRender(b, spec, groups)}
			g := groups["group"]
			g.Addresses = append(bulkAddresses(2, delta), g.Addresses[delta:]...)
			tables[1] = mustRender(b, spec, map[string]v1alpha1.AddressGroupSpec{"group": g})
			p := programmer(b, ns)
			if _, err := p.Apply(tables[0]); err != nil {
				b.Fatal(err)
			}
			i := 0
			for b.Loop() {
				i++
				st, err := p.Apply(tables[i%2])
				if err != nil {
					b.Fatal(err)
				}
				if st.Full || st.Changes.ElementsAdded != delta {
					b.Fatalf("stats %+v", st)
				}
			}
		})
	}
}
