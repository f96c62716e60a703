package bench

import (
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/nftnl"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

// programShape sizes the programming benchmark's node: 110 local pods,
// enough rules (one chain each) to reach the requested chains, and the
// peers spread over the given number of address groups (0: one per rule).
func programShape(groups int) nodeShape {
	const pods = 110
	rules := max(*progChains-pods, 1)
	if groups <= 0 || groups > rules {
		groups = rules
	}
	return nodeShape{localPods: pods, rules: rules, groups: groups, groupSize: max(*progElements/groups, 1)}
}

// countENOBUFS counts an Apply error caused by a full netlink buffer.
func countENOBUFS(err error) int {
	if errors.Is(err, unix.ENOBUFS) {
		return 1
	}
	return 0
}

// BenchmarkProgram programs nftables in a throwaway namespace with the
// dataplane's Programmer, as the agent does: cold start of the whole table
// from rendering to the committed transaction (elements/s over the set and
// map elements, of the median of -bench.prog.cold-rounds rounds; ns/op is
// per round), then deltas that swap 1 and
// 1,000 peer addresses, each measured from the changed AddressGroups to the
// committed transaction (the agent's work for one event: a Renderer that
// rendered the previous version renders the node again, reusing what did
// not change, then Apply; ns/op is per delta) with p50/p99 of both and the
// Apply alone. enobufs counts Applies the kernel refused for a full buffer.
// It runs for each -bench.prog.groups: the same chains and elements held in
// fewer, larger address groups or in one group per rule (each group is a
// named set per family, and the kernel looks sets up by name in a list).
func BenchmarkProgram(b *testing.B) {
	ns := newNetNS(b)
	for _, groups := range intList(b, *progGroups) {
		shape := programShape(groups)
		b.Run(fmt.Sprintf("groups=%d", shape.groups), func(b *testing.B) { benchProgram(b, ns, shape) })
	}
}

// coldSettle is the pause between cold-start rounds.
const coldSettle = 300 * time.Millisecond

func benchProgram(b *testing.B, ns netns.NsHandle, shape nodeShape) {
	n := shape.build()
	b.Run("cold", func(b *testing.B) {
		p, err := nftnl.NewProgrammerInNetNS(int(ns))
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		var st nftnl.Stats
		var total, apply []time.Duration
		enobufs := 0
		for b.Loop() {
			for range *progColdRounds {
				b.StopTimer()
				if err := p.Delete(); err != nil {
					b.Fatal(err)
				}
				// A node starts once: let the kernel free the previous
				// table (it does so in the background after the
				// transaction) and the runtime collect the previous
				// round's garbage, so that neither overlaps this round.
				time.Sleep(coldSettle)
				runtime.GC()
				b.StartTimer()
				start := time.Now()
				t, err := render.NewRenderer(layout(render.Options{})).Render(n.spec, n.groups)
				if err != nil {
					b.Fatal(err)
				}
				mid := time.Now()
				st, err = p.Apply(t)
				end := time.Now()
				enobufs += countENOBUFS(err)
				if err != nil {
					b.Fatal(err)
				}
				apply = append(apply, end.Sub(mid))
				total = append(total, end.Sub(start))
			}
		}
		// Rates of the median round: one round is one node starting, and
		// a round now and then is slowed by the machine.
		elems := float64(st.SetElements)
		b.ReportMetric(float64(sum(total).Nanoseconds())/float64(len(total)), "ns/op")
		b.ReportMetric(ms(percentile(total, 50)), "p50-ms")
		b.ReportMetric(elems, "elements")
		b.ReportMetric(float64(st.Chains), "chains")
		b.ReportMetric(float64(st.Rules), "rules")
		b.ReportMetric(float64(st.Transactions), "transactions")
		b.ReportMetric(elems/percentile(total, 50).Seconds(), "elements/s")
		b.ReportMetric(elems/percentile(apply, 50).Seconds(), "apply-elements/s")
		b.ReportMetric(float64(enobufs), "enobufs")
	})
	for _, d := range []int{1, 1000} {
		b.Run("delta-"+strconv.Itoa(d), func(b *testing.B) {
			p, err := nftnl.NewProgrammerInNetNS(int(ns))
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			versions := [2]map[string]v1alpha1.AddressGroupSpec{n.groups, n.withDelta(d)}
			renderer := render.NewRenderer(layout(render.Options{}))
			first, err := renderer.Render(n.spec, versions[0])
			if err != nil {
				b.Fatal(err)
			}
			if _, err := p.Apply(first); err != nil {
				b.Fatal(err)
			}
			var total, apply []time.Duration
			enobufs, full := 0, 0
			i := 0
			for b.Loop() {
				for range *progSamples {
					i++
					start := time.Now()
					t, err := renderer.Render(n.spec, versions[i%2])
					if err != nil {
						b.Fatal(err)
					}
					mid := time.Now()
					st, err := p.Apply(t)
					end := time.Now()
					enobufs += countENOBUFS(err)
					if err != nil {
						b.Fatal(err)
					}
					if st.Full {
						full++
					}
					if st.Changes.ElementsAdded != d || st.Changes.ElementsDeleted != d {
						b.Fatalf("delta of %d sent %+v", d, st.Changes)
					}
					total = append(total, end.Sub(start))
					apply = append(apply, end.Sub(mid))
				}
			}
			b.ReportMetric(float64(sum(total).Nanoseconds())/float64(len(total)), "ns/op")
			b.ReportMetric(ms(percentile(total, 50)), "p50-ms")
			b.ReportMetric(ms(percentile(total, 99)), "p99-ms")
			b.ReportMetric(ms(percentile(apply, 50)), "apply-p50-ms")
			b.ReportMetric(ms(percentile(apply, 99)), "apply-p99-ms")
			b.ReportMetric(float64(enobufs), "enobufs")
			b.ReportMetric(float64(full), "full-reconciles")
		})
	}
}
