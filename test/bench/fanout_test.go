package bench

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/testenv"
)

var (
	fanoutAgents = flag.String("bench.fanout.agents", "500,2000,5000", "simulated agents of the watch fan-out benchmark")
	fanoutEvents = flag.Int("bench.fanout.events", 10, "writes (pod events) per fan-out run")
	fanoutSpans  = flag.String("bench.fanout.spans", "1,50", "nodes referencing the written group in the span runs (every node is always run too)")
)

// BenchmarkWatchFanout measures what one pod event costs the API server's
// watchers: the write of one group shard of 4,096 addresses (a pod joining
// a group), watched by simulated agents, streams on the real kube-apiserver
// of envtest sharing HTTP/2 connections, each counting the events and
// bytes it reads. Per pod event it reports the events and bytes delivered
// in all and the API server's CPU (user and system time of its process).
//
// Runs, at each number of agents (nodes node-0 to node-<n-1>):
//   - unfiltered: every agent watches every AddressGroup (the agents
//     before span labels): a write reaches every node;
//   - span=S: every agent watches with its node's span selector, as agents
//     do, and the group's span labels are those the controller writes when
//     S nodes reference it (S = every node included): a write reaches the
//     nodes of those nodes' buckets;
//   - drops-endpoints: every agent watches the drops API's EndpointSlice,
//     as agents do to find the drops servers; a write is a replica's
//     readiness changing.
func BenchmarkWatchFanout(b *testing.B) {
	cfg := testenv.Start(b)
	cfg.QPS, cfg.Burst = 1000, 1000
	cl, err := client.New(cfg, client.Options{})
	if err != nil {
		b.Fatal(err)
	}
	apiserver := apiServerPID(b)
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		b.Fatal(err)
	}
	host := strings.TrimSuffix(cfg.Host, "/")
	groups := host + "/apis/nftguard.io/v1alpha1/addressgroups?watch=1&allowWatchBookmarks=false"
	for _, agents := range intList(b, *fanoutAgents) {
		node := func(i int) string { return fmt.Sprintf("node-%d", i) }
		spans := append(intList(b, *fanoutSpans), agents)
		b.Run(fmt.Sprintf("agents=%d/unfiltered", agents), func(b *testing.B) {
			w := newGroupWriter(b, cl, fmt.Sprintf("ag-fanout-%d-all", agents), []map[string]string{nil}, []int{agents})
			fanout(b, hc, apiserver, agents, func(int) string { return groups }, w)
		})
		for _, span := range spans {
			if span > agents {
				continue
			}
			b.Run(fmt.Sprintf("agents=%d/span=%d", agents, span), func(b *testing.B) {
				// One group per write, each referenced by S other nodes, so
				// the figure is not one bucket's luck.
				var labels []map[string]string
				var reach []int
				total := 0
				for e := range *fanoutEvents {
					buckets := map[int]bool{}
					for j := range span {
						buckets[v1alpha1.SpanBucket(node((e*span+j)%agents))] = true
					}
					reached := 0
					for i := range agents {
						if buckets[v1alpha1.SpanBucket(node(i))] {
							reached++
						}
					}
					labels = append(labels, v1alpha1.SpanLabels(slices.Sorted(maps.Keys(buckets))))
					reach = append(reach, reached)
					total += reached
				}
				w := newGroupWriter(b, cl, fmt.Sprintf("ag-fanout-%d-%d", agents, span), labels, reach)
				fanout(b, hc, apiserver, agents, func(i int) string {
					return groups + "&labelSelector=" + url.QueryEscape(v1alpha1.SpanSelector(node(i)).String())
				}, w)
				b.ReportMetric(float64(total)/float64(span**fanoutEvents), "nodes-reached/node-referencing")
			})
		}
		b.Run(fmt.Sprintf("agents=%d/drops-endpoints", agents), func(b *testing.B) {
			w := newSliceWriter(b, cl, fmt.Sprintf("fanout-%d", agents), agents)
			watch := host + "/apis/discovery.k8s.io/v1/namespaces/" + w.ns + "/endpointslices?watch=1&allowWatchBookmarks=false&labelSelector=" +
				url.QueryEscape(discoveryv1.LabelServiceName+"=nftguard-drops")
			fanout(b, hc, apiserver, agents, func(int) string { return watch }, w)
		})
	}
}

// writer is what a fan-out run writes: resourceVersion returns the version
// the watches start at, write makes write e and returns how many watchers
// it reaches.
type writer interface {
	resourceVersion() string
	write(e int) (reach int)
}

// groupWriter writes member changes of groups of 4,096 addresses, one per
// span given (write e changes group e modulo their number), each reaching
// the given number of watchers.
type groupWriter struct {
	b     *testing.B
	cl    client.Client
	cur   []*v1alpha1.AddressGroup
	reach []int
	rv    string
}

func newGroupWriter(b *testing.B, cl client.Client, prefix string, spans []map[string]string, reach []int) *groupWriter {
	addrs := make([]string, 4096)
	for i := range addrs {
		addrs[i] = addrAt(peerBase, i).String()
	}
	w := &groupWriter{b: b, cl: cl, reach: reach}
	for i, span := range spans {
		ag := &v1alpha1.AddressGroup{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", prefix, i), Labels: span},
			Spec: v1alpha1.AddressGroupSpec{Addresses: slices.Clone(addrs)}}
		if err := cl.Create(context.Background(), ag); err != nil {
			b.Fatal(err)
		}
		w.cur, w.rv = append(w.cur, ag), ag.ResourceVersion
	}
	return w
}

func (w *groupWriter) resourceVersion() string { return w.rv }

func (w *groupWriter) write(e int) int {
	ag := w.cur[e%len(w.cur)]
	ag.Spec.Addresses[e%len(ag.Spec.Addresses)] = addrAt(spareBase, e).String()
	if err := w.cl.Update(context.Background(), ag); err != nil {
		w.b.Fatal(err)
	}
	return w.reach[e%len(w.reach)]
}

// sliceWriter flips the readiness of one of the two endpoints of the drops
// API's EndpointSlice, in a namespace of its own.
type sliceWriter struct {
	b      *testing.B
	cl     client.Client
	ns     string
	cur    *discoveryv1.EndpointSlice
	agents int
}

func newSliceWriter(b *testing.B, cl client.Client, ns string, agents int) *sliceWriter {
	ctx := context.Background()
	if err := cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		b.Fatal(err)
	}
	port, proto := int32(8443), corev1.ProtocolTCP
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: "nftguard-drops-x7k2p", Labels: map[string]string{discoveryv1.LabelServiceName: "nftguard-drops"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("https"), Port: &port, Protocol: &proto}},
	}
	for i := range 2 {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{addrAt(peerBase, i).String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To(fmt.Sprintf("node-%d", i)),
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: fmt.Sprintf("nftguard-controller-6d9f8c7b5-%d", i)},
		})
	}
	if err := cl.Create(ctx, es); err != nil {
		b.Fatal(err)
	}
	return &sliceWriter{b: b, cl: cl, ns: ns, cur: es, agents: agents}
}

func (w *sliceWriter) resourceVersion() string { return w.cur.ResourceVersion }

func (w *sliceWriter) write(e int) int {
	w.cur.Endpoints[0].Conditions.Ready = ptr.To(e%2 == 1)
	if err := w.cl.Update(context.Background(), w.cur); err != nil {
		w.b.Fatal(err)
	}
	return w.agents
}

// fanout starts agents watch streams (agent i on watchURL(i)), then makes
// *fanoutEvents writes, waiting after each for the watchers it reaches to
// receive it, and reports events, bytes and API server CPU per write.
func fanout(b *testing.B, hc *http.Client, apiserver, agents int, watchURL func(int) string, w writer) {
	ctx, cancel := context.WithCancel(context.Background())
	var events, bytes atomic.Int64
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // before the wait: it ends the watches
	started := make(chan error, agents)
	rv := w.resourceVersion()
	for i := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var resp *http.Response
			for attempt := 0; ; attempt++ {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, watchURL(i)+"&resourceVersion="+rv, nil)
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
		var want int64
		for e := range *fanoutEvents {
			want += int64(w.write(e))
			deadline := time.Now().Add(2 * time.Minute)
			for events.Load() < want {
				if time.Now().After(deadline) {
					b.Fatalf("%d of %d events delivered", events.Load(), want)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		cpu = processCPU(b, apiserver) - cpu0
		// No watcher outside the reach got it late.
		time.Sleep(200 * time.Millisecond)
		if got := events.Load(); got != want {
			b.Fatalf("%d events delivered, want %d", got, want)
		}
	}
	n := float64(*fanoutEvents)
	b.ReportMetric(float64(events.Load())/n, "events/pod-event")
	b.ReportMetric(float64(bytes.Load())/n/(1<<20), "MiB/pod-event")
	b.ReportMetric(cpu.Seconds()/n*1e3, "apiserver-cpu-ms/pod-event")
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
