package bench

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/testenv"
)

var (
	fanoutAgents = flag.String("bench.fanout.agents", "500,2000", "simulated agents of the watch fan-out benchmark (5000: see docs/benchmarks.md)")
	fanoutEvents = flag.Int("bench.fanout.events", 10, "group writes (pod events) per fan-out run")
)

// BenchmarkWatchFanout measures what one pod event costs the API server's
// watchers today: every agent watches every AddressGroup (as the agent's
// cache does), so a write of one group shard of 4,096 addresses (a pod
// joining a group) reaches every agent. Simulated agents are watch
// streams on the real kube-apiserver of envtest, sharing HTTP/2
// connections; each counts the events and bytes it reads. Per pod event it
// reports the events and bytes delivered in all and the API server's CPU
// (user and system time of its process). This is the baseline the
// per-node filtering of the fan-out is to cut: with it, a group reaches the
// nodes that reference it.
func BenchmarkWatchFanout(b *testing.B) {
	cfg := testenv.Start(b)
	cfg.QPS, cfg.Burst = 1000, 1000
	cl, err := client.New(cfg, client.Options{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	addrs := make([]string, 4096)
	for i := range addrs {
		addrs[i] = addrAt(peerBase, i).String()
	}
	ag := &v1alpha1.AddressGroup{ObjectMeta: metav1.ObjectMeta{Name: "ag-fanout-0"}, Spec: v1alpha1.AddressGroupSpec{Addresses: addrs}}
	if err := cl.Create(ctx, ag); err != nil {
		b.Fatal(err)
	}
	apiserver := apiServerPID(b)
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		b.Fatal(err)
	}
	url := strings.TrimSuffix(cfg.Host, "/") + "/apis/nftguard.io/v1alpha1/addressgroups?watch=1&allowWatchBookmarks=false"
	for _, agents := range intList(b, *fanoutAgents) {
		b.Run(fmt.Sprintf("agents=%d", agents), func(b *testing.B) {
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			var events, bytes atomic.Int64
			var wg sync.WaitGroup
			cur := &v1alpha1.AddressGroup{}
			if err := cl.Get(ctx, client.ObjectKey{Name: ag.Name}, cur); err != nil {
				b.Fatal(err)
			}
			started := make(chan error, agents)
			for range agents {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var resp *http.Response
					for attempt := 0; ; attempt++ {
						req, _ := http.NewRequestWithContext(wctx, http.MethodGet, url+"&resourceVersion="+cur.ResourceVersion, nil)
						var err error
						if resp, err = hc.Do(req); err != nil {
							started <- err
							return
						}
						if resp.StatusCode == http.StatusOK {
							break
						}
						// Too many watches starting at once (priority and
						// fairness): retry, as a client does.
						resp.Body.Close()
						if attempt == 100 {
							started <- fmt.Errorf("watch: %s", resp.Status)
							return
						}
						time.Sleep(100 * time.Millisecond)
					}
					defer resp.Body.Close()
					started <- nil
					r := bufio.NewReaderSize(resp.Body, 1<<16)
					for {
						line, err := r.ReadSlice('\n')
						bytes.Add(int64(len(line)))
						if err == bufio.ErrBufferFull {
							continue
						}
						if err != nil {
							return
						}
						events.Add(1)
					}
				}()
			}
			for range agents {
				if err := <-started; err != nil {
					b.Fatalf("watch: %v", err)
				}
			}
			var cpu time.Duration
			for b.Loop() {
				cpu0 := processCPU(b, apiserver)
				events.Store(0)
				bytes.Store(0)
				for e := range *fanoutEvents {
					if err := cl.Get(ctx, client.ObjectKey{Name: ag.Name}, cur); err != nil {
						b.Fatal(err)
					}
					cur.Spec.Addresses[e%len(cur.Spec.Addresses)] = addrAt(spareBase, e).String()
					if err := cl.Update(ctx, cur); err != nil {
						b.Fatal(err)
					}
					want := int64((e + 1) * agents)
					deadline := time.Now().Add(2 * time.Minute)
					for events.Load() < want {
						if time.Now().After(deadline) {
							b.Fatalf("%d of %d events delivered", events.Load(), want)
						}
						time.Sleep(5 * time.Millisecond)
					}
				}
				cpu = processCPU(b, apiserver) - cpu0
			}
			n := float64(*fanoutEvents)
			b.ReportMetric(float64(events.Load())/n, "events/pod-event")
			b.ReportMetric(float64(bytes.Load())/n/(1<<20), "MiB/pod-event")
			b.ReportMetric(cpu.Seconds()/n*1e3, "apiserver-cpu-ms/pod-event")
			cancel()
			wg.Wait()
		})
	}
}

// apiServerPID finds the kube-apiserver this process started.
func apiServerPID(b *testing.B) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		b.Fatal(err)
	}
	self := strconv.Itoa(os.Getpid())
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		cmd, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if len(f) > 1 && f[1] == self && strings.Contains(string(cmd), "kube-apiserver") {
			return pid
		}
	}
	b.Fatal("no kube-apiserver started by this process")
	return 0
}

// processCPU is a process's user and system time.
func processCPU(b *testing.B, pid int) time.Duration {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}
