package bench

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nftguard/nftguard/internal/compiler"
	"github.com/nftguard/nftguard/internal/compiler/compilertest"
)

// tierParams turns a tier name (or pods/namespaces/policies) into
// synthetic cluster parameters: nodes of 110 pods, the Enforce and Audit
// DefaultDenies, every tenth pod dual-stack.
func tierParams(tier string) (compilertest.Params, error) {
	switch tier {
	case "10k":
		tier = "10000/1000/2000"
	case "100k":
		tier = "100000/25000/75000"
	}
	parts := strings.Split(tier, "/")
	if len(parts) != 3 {
		return compilertest.Params{}, fmt.Errorf("tier %q: want 10k, 100k or pods/namespaces/policies", tier)
	}
	var n [3]int
	for i, s := range parts {
		v, err := strconv.Atoi(s)
		if err != nil || v <= 0 {
			return compilertest.Params{}, fmt.Errorf("tier %q: %q is not a positive number", tier, s)
		}
		n[i] = v
	}
	const podsPerNode = 110
	return compilertest.Params{Seed: 1, Nodes: (n[0] + podsPerNode - 1) / podsPerNode, PodsPerNode: podsPerNode,
		Namespaces: n[1], NetworkPolicies: n[2], DefaultDenies: true, DualStackEvery: 10}, nil
}

func tierName(p compilertest.Params) string {
	return fmt.Sprintf("pods=%d/ns=%d/policies=%d", p.Nodes*p.PodsPerNode, p.Namespaces, p.NetworkPolicies)
}

// heapSampler samples the bytes of heap objects (live and not yet swept)
// every millisecond and keeps the peak.
type heapSampler struct {
	stop chan struct{}
	done sync.WaitGroup
	peak uint64
}

func heapObjects() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func startHeapSampler() *heapSampler {
	h := &heapSampler{stop: make(chan struct{}), peak: heapObjects()}
	h.done.Add(1)
	go func() {
		defer h.done.Done()
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-h.stop:
				return
			case <-t.C:
				h.peak = max(h.peak, heapObjects())
			}
		}
	}()
	return h
}

func (h *heapSampler) finish() uint64 {
	close(h.stop)
	h.done.Wait()
	return max(h.peak, heapObjects())
}

// liveHeap is the heap after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	return heapObjects()
}

const mib = 1 << 20

// BenchmarkCompile is a full compile of a synthetic cluster. Besides time
// and allocations it reports the peak heap of the process during the
// compile (snapshot included: peak-heap-MiB), the snapshot alone
// (input-MiB) and what the result keeps (result-MiB).
func BenchmarkCompile(b *testing.B) {
	p, err := tierParams(*compileTier)
	if err != nil {
		b.Fatal(err)
	}
	s := compilertest.Synthetic(p)
	b.Run(tierName(p), func(b *testing.B) {
		b.ReportAllocs()
		base := liveHeap()
		var peak, kept uint64
		for b.Loop() {
			b.StopTimer()
			runtime.GC()
			h := startHeapSampler()
			b.StartTimer()
			res := compiler.Compile(s)
			b.StopTimer()
			peak = max(peak, h.finish())
			kept = max(kept, liveHeap()-base)
			runtime.KeepAlive(res)
			b.StartTimer()
		}
		b.ReportMetric(float64(peak)/mib, "peak-heap-MiB")
		b.ReportMetric(float64(base)/mib, "input-MiB")
		b.ReportMetric(float64(kept)/mib, "result-MiB")
	})
}

// loadEngine feeds every object of a snapshot to a new engine and consumes
// the first Changes.
func loadEngine(s *compiler.Snapshot) *compiler.Engine {
	e := compiler.NewEngine()
	for _, n := range s.Nodes {
		e.UpsertNode(n)
	}
	for _, ns := range s.Namespaces {
		e.UpsertNamespace(ns)
	}
	for _, np := range s.NetworkPolicies {
		e.UpsertNetworkPolicy(np)
	}
	for _, dd := range s.DefaultDenies {
		e.UpsertDefaultDeny(dd)
	}
	for _, pod := range s.Pods {
		e.UpsertPod(pod)
	}
	e.Changes()
	return e
}

// BenchmarkEnginePodEvent is the controller's incremental compile of one
// pod event on a loaded cluster (-bench.events of them per iteration;
// ns/op is per event), with p50/p99:
// relabel changes a label no selector uses the value of (the common case
// of a rollout), move relabels the pod into another tier (it leaves and
// joins groups), replace deletes a pod and creates another with the same
// labels (new IP in every group holding it, cluster-wide ones included).
func BenchmarkEnginePodEvent(b *testing.B) {
	p, err := tierParams(*compileTier)
	if err != nil {
		b.Fatal(err)
	}
	s := compilertest.Synthetic(p)
	base := liveHeap()
	e := loadEngine(s)
	engineHeap := liveHeap() - base
	rng := rand.New(rand.NewPCG(1, 2))
	tiers := []string{"web", "api", "db", "worker", "cache"}
	events := map[string]func(i int){
		"relabel": func(i int) {
			pod := s.Pods[2+rng.IntN(len(s.Pods)-2)].DeepCopy()
			pod.Labels["build"] = strconv.Itoa(i)
			e.UpsertPod(pod)
		},
		"move": func(i int) {
			pod := s.Pods[2+rng.IntN(len(s.Pods)-2)].DeepCopy()
			pod.Labels["tier"] = tiers[i%len(tiers)]
			e.UpsertPod(pod)
		},
		"replace": func(i int) {
			old := s.Pods[2+rng.IntN(len(s.Pods)-2)]
			e.DeletePod(old.Namespace, old.Name)
			pod := old.DeepCopy()
			pod.Name = fmt.Sprint(old.Name, "-r", i)
			pod.Status.PodIP = fmt.Sprintf("10.255.%d.%d", (i/250)%250, i%250+1)
			pod.Status.PodIPs = pod.Status.PodIPs[:1]
			pod.Status.PodIPs[0].IP = pod.Status.PodIP
			e.UpsertPod(pod)
		},
	}
	for _, name := range []string{"relabel", "move", "replace"} {
		event := events[name]
		b.Run(tierName(p)+"/"+name, func(b *testing.B) {
			var lat []time.Duration
			i := 0
			for b.Loop() {
				for range *engineEvents {
					start := time.Now()
					event(i)
					e.Changes()
					lat = append(lat, time.Since(start))
					i++
				}
			}
			b.ReportMetric(float64(sum(lat).Nanoseconds())/float64(len(lat)), "ns/op")
			b.ReportMetric(ms(percentile(lat, 50)), "p50-ms")
			b.ReportMetric(ms(percentile(lat, 99)), "p99-ms")
			b.ReportMetric(float64(engineHeap)/float64(len(s.Pods)), "engine-B/pod")
		})
	}
}
