package bench

import (
	"os"
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/nftguard/nftguard/internal/compiler/compilertest"
	"github.com/nftguard/nftguard/internal/dataplane/nftnl"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

// rss is the process's resident memory in bytes, once the runtime has
// given back to the system what it freed: the benchmarks before this one in
// the same process (thousands of watching agents, say) leave freed memory
// resident, which would otherwise go back during the measurement.
func rss() int64 {
	debug.FreeOSMemory()
	now, _, err := processRSS(os.Getpid())
	if err != nil {
		return 0
	}
	return int64(now)
}

// BenchmarkAgentMemory measures what the agent keeps per remote pod in its
// address sets: -bench.mem.pods peers in groups of 100 referenced by the
// rules of 110 local pods, held as the agent holds them (the AddressGroup
// specs it watches, the rendered table and the Programmer's applied model;
// with root the table is also programmed into a throwaway namespace).
// heap-B/pod is the growth of the live heap, rss-B/pod the growth of the
// process's resident memory (Go runtime overhead included).
func BenchmarkAgentMemory(b *testing.B) {
	groups := max(*memPods/100, 1)
	shape := nodeShape{localPods: 110, rules: groups, groups: groups, groupSize: *memPods / groups}
	for b.Loop() {
		heap0, rss0 := liveHeap(), rss()
		n := shape.build()
		t, err := render.Render(n.spec, n.groups, layout(render.Options{}))
		if err != nil {
			b.Fatal(err)
		}
		var prog *nftnl.Programmer
		if os.Geteuid() == 0 {
			ns := newNetNS(b)
			if prog, err = nftnl.NewProgrammerInNetNS(int(ns)); err != nil {
				b.Fatal(err)
			}
			if _, err := prog.Apply(t); err != nil {
				b.Fatal(err)
			}
		}
		heap1, rss1 := liveHeap(), rss()
		pods := float64(n.elements())
		b.ReportMetric(float64(heap1-heap0)/pods, "heap-B/pod")
		if rss1 < rss0 {
			// Resident memory that shrinks while state is added measures
			// something else: report nothing rather than a wrapped figure.
			b.Errorf("resident memory went from %d to %d bytes while the agent's state was built", rss0, rss1)
		} else {
			b.ReportMetric(float64(rss1-rss0)/pods, "rss-B/pod")
		}
		runtime.KeepAlive(n)
		if prog != nil {
			prog.Close()
		}
	}
}

// BenchmarkControllerMemory measures the controller's compiled state per
// pod: the incremental engine loaded with a synthetic cluster of the
// -bench.tier size (engine-B/pod), and the synthetic snapshot (pods,
// namespaces and policies, per pod) as the generator makes it
// (snapshot-B/pod, a lower bound of what the informer cache holds: real
// pods carry more fields).
func BenchmarkControllerMemory(b *testing.B) {
	p, err := tierParams(*compileTier)
	if err != nil {
		b.Fatal(err)
	}
	b.Run(tierName(p), func(b *testing.B) {
		for b.Loop() {
			heap0 := liveHeap()
			s := compilertest.Synthetic(p)
			heap1 := liveHeap()
			e := loadEngine(s)
			heap2 := liveHeap()
			pods := float64(len(s.Pods))
			b.ReportMetric(float64(heap2-heap1)/pods, "engine-B/pod")
			b.ReportMetric(float64(heap1-heap0)/pods, "snapshot-B/pod")
			runtime.KeepAlive(e)
			runtime.KeepAlive(s)
		}
	})
}
