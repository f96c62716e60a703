package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/compiler"
	"github.com/nftguard/nftguard/internal/compiler/compilertest"
	"github.com/nftguard/nftguard/internal/controller"
	"github.com/nftguard/nftguard/internal/testenv"
)

// writeCounter counts the API writes (POST, PUT, PATCH, DELETE) that pass
// through it and the bytes of their bodies.
type writeCounter struct {
	next          http.RoundTripper
	writes, bytes atomic.Int64
}

func (c *writeCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	switch r.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		c.writes.Add(1)
		if r.ContentLength > 0 {
			c.bytes.Add(r.ContentLength)
		} else if r.GetBody != nil {
			if body, err := r.GetBody(); err == nil {
				n, _ := io.Copy(io.Discard, body)
				body.Close()
				c.bytes.Add(n)
			}
		}
	}
	return c.next.RoundTrip(r)
}

// cpSnapshot is the control plane benchmark's cluster: the synthetic
// generator's shapes with pod addresses from 198.18.0.0/15, single stack.
func cpSnapshot() *compiler.Snapshot {
	nodes := max(*cpNodes, 1)
	s := compilertest.Synthetic(compilertest.Params{Seed: 1, Nodes: nodes, PodsPerNode: max(*cpPods/nodes, 1),
		Namespaces: max(*cpPods/10, 1), NetworkPolicies: *cpPolicies, DefaultDenies: true})
	for i, p := range s.Pods {
		ip := addrAt(peerBase, i).String()
		p.Status.PodIP = ip
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		p.Spec.Containers[0].Image = "app"
	}
	// The generator's ipBlock excepts are not always inside their CIDR,
	// which the API server rejects: move each into its CIDR.
	for _, np := range s.NetworkPolicies {
		for _, r := range np.Spec.Egress {
			for _, peer := range r.To {
				if b := peer.IPBlock; b != nil {
					for i, ex := range b.Except {
						cidr, err1 := netip.ParsePrefix(b.CIDR)
						e, err2 := netip.ParsePrefix(ex)
						if err1 == nil && err2 == nil && !cidr.Contains(e.Addr()) {
							c, x := cidr.Addr().As4(), e.Addr().As4()
							b.Except[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{c[0], c[1], x[2], x[3]}), e.Bits()).String()
						}
					}
				}
			}
		}
	}
	return s
}

// parallel runs fn for 0..n-1 on workers goroutines and returns the first
// error.
func parallel(n, workers int, fn func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

func load(ctx context.Context, c client.Client, s *compiler.Snapshot) error {
	const workers = 16
	steps := []struct {
		n  int
		fn func(i int) error
	}{
		{len(s.Nodes), func(i int) error { return c.Create(ctx, s.Nodes[i].DeepCopy()) }},
		{len(s.Namespaces), func(i int) error {
			err := c.Create(ctx, s.Namespaces[i].DeepCopy())
			if apierrors.IsAlreadyExists(err) { // kube-system
				return c.Update(ctx, s.Namespaces[i].DeepCopy())
			}
			return err
		}},
		{len(s.NetworkPolicies), func(i int) error { return c.Create(ctx, s.NetworkPolicies[i].DeepCopy()) }},
		{len(s.DefaultDenies), func(i int) error { return c.Create(ctx, s.DefaultDenies[i].DeepCopy()) }},
		{len(s.Pods), func(i int) error {
			p := s.Pods[i].DeepCopy()
			status := p.Status
			if err := c.Create(ctx, p); err != nil {
				return err
			}
			p.Status = status
			return c.Status().Update(ctx, p)
		}},
	}
	for _, st := range steps {
		if err := parallel(st.n, workers, st.fn); err != nil {
			return err
		}
	}
	return nil
}

// quiet waits until the counter has seen no write for 3 s, at most max,
// and returns how long the writes went on.
func quiet(c *writeCounter, max time.Duration) time.Duration {
	start := time.Now()
	last, changed := c.writes.Load(), start
	for time.Since(start) < max {
		time.Sleep(250 * time.Millisecond)
		if n := c.writes.Load(); n != last {
			last, changed = n, time.Now()
		} else if time.Since(changed) >= 3*time.Second {
			break
		}
	}
	return changed.Sub(start)
}

// compileFromAPI compiles the cluster the API server holds.
func compileFromAPI(ctx context.Context, c client.Client) (*compiler.Result, error) {
	s, err := compilertest.SnapshotFromAPI(ctx, c)
	if err != nil {
		return nil, err
	}
	return compiler.Compile(s), nil
}

// converged reports whether the API holds exactly the rule sets and groups
// of want, and if not, the first difference found.
func converged(ctx context.Context, c client.Client, want *compiler.Result) (bool, int, string, error) {
	var rss v1alpha1.NodeRuleSetList
	if err := c.List(ctx, &rss); err != nil {
		return false, 0, "", err
	}
	var ags v1alpha1.AddressGroupList
	if err := c.List(ctx, &ags); err != nil {
		return false, 0, "", err
	}
	largest := 0
	for _, rs := range rss.Items {
		b, _ := json.Marshal(rs.Spec)
		largest = max(largest, len(b))
	}
	if len(rss.Items) != len(want.NodeRuleSets) || len(ags.Items) != len(want.AddressGroups) {
		return false, largest, fmt.Sprintf("%d rule sets and %d groups, want %d and %d",
			len(rss.Items), len(ags.Items), len(want.NodeRuleSets), len(want.AddressGroups)), nil
	}
	for _, rs := range rss.Items {
		if w, ok := want.NodeRuleSets[rs.Name]; !ok || !equality.Semantic.DeepEqual(w, rs.Spec) {
			return false, largest, "rule set " + rs.Name + ": " + cmp.Diff(w, rs.Spec), nil
		}
	}
	for _, ag := range ags.Items {
		if w, ok := want.AddressGroups[ag.Name]; !ok || !equality.Semantic.DeepEqual(w, ag.Spec) {
			return false, largest, "group " + ag.Name + ": " + cmp.Diff(w, ag.Spec), nil
		}
	}
	return true, largest, "", nil
}

// childPID returns the pid of this process's child whose command is name.
func childPID(name string) (int, error) {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	self := os.Getpid()
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue // gone
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if open < 0 || end < open {
			continue
		}
		fields := strings.Fields(string(b[end+1:]))
		if len(fields) < 2 || string(b[open+1:end]) != name {
			continue
		}
		if ppid, err := strconv.Atoi(fields[1]); err == nil && ppid == self {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no child process %q", name)
}

// processRSS returns a process's resident memory now and at its peak
// (VmRSS and VmHWM), in bytes.
func processRSS(pid int) (now, peak int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(b)) {
		key, value, ok := strings.Cut(line, ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/status %s: %w", pid, key, err)
		}
		if key == "VmRSS" {
			now = kb << 10
		} else {
			peak = kb << 10
		}
	}
	return now, peak, nil
}

// BenchmarkControlPlane runs the controller in this process against a real
// kube-apiserver and etcd (internal/testenv; make test-binaries builds
// them) holding -bench.cp.nodes API-only nodes, -bench.cp.pods pods and
// -bench.cp.policies NetworkPolicies. It reports the time from the
// controller's start until every NodeRuleSet and AddressGroup equals a full
// compile of the cluster (converge-s), the largest NodeRuleSet spec in
// bytes, and then for -bench.cp.events new pods (created and given an IP,
// one at a time) the controller's API writes and bytes written per event,
// counted at its HTTP transport (events and status included), from when the
// writes that trail convergence have stopped (settle-s, settle-writes) until
// those of the events have. It reports
// the resident memory of the API server and etcd (now and at their peak,
// after the events) and the controller's live heap: the growth of this
// process's live heap from before the controller started to after the
// events (its informer caches and compiler state; the benchmark's own
// snapshot and compiled result were allocated before).
func BenchmarkControlPlane(b *testing.B) {
	env, err := testenv.New()
	if err != nil {
		b.Skipf("no API server: %v", err)
	}
	logf.SetLogger(logr.Discard())
	// etcd's default quota (2 GiB) is below what 150,000 pods and their
	// history take between compactions.
	env.ControlPlane.Etcd = &envtest.Etcd{}
	env.ControlPlane.Etcd.Configure().Set("quota-backend-bytes", strconv.Itoa(16<<30))
	// Loading 150,000 pods waits on etcd's fsyncs; what is measured is the
	// controller's, which does not wait on them.
	env.ControlPlane.Etcd.Configure().Set("unsafe-no-fsync", "true")
	cfg, err := env.Start()
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := env.Stop(); err != nil {
			b.Errorf("stopping the API server: %v", err)
		}
	}()
	cfg.QPS, cfg.Burst = 2000, 4000
	admin, err := client.New(cfg, client.Options{Scheme: scheme.Scheme})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := cpSnapshot()
	start := time.Now()
	if err := load(ctx, admin, s); err != nil {
		b.Fatalf("loading the cluster: %v", err)
	}
	b.Logf("loaded %d nodes, %d namespaces, %d pods, %d policies in %v", len(s.Nodes), len(s.Namespaces), len(s.Pods),
		len(s.NetworkPolicies), time.Since(start).Round(time.Millisecond))
	// Compiled from the objects as the API holds them (with the UIDs it
	// gave them).
	want, err := compileFromAPI(ctx, admin)
	if err != nil {
		b.Fatal(err)
	}
	pids := map[string]int{}
	for _, name := range []string{"kube-apiserver", "etcd"} {
		pid, err := childPID(name)
		if err != nil {
			b.Fatal(err)
		}
		pids[name] = pid
	}
	heap0 := liveHeap()

	counter := &writeCounter{}
	ccfg := rest.CopyConfig(cfg)
	ccfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { counter.next = rt; return counter }
	mgr, err := ctrl.NewManager(ccfg, ctrl.Options{Scheme: scheme.Scheme, Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		b.Fatal(err)
	}
	if err := controller.Setup(mgr, controller.Options{MaxObjectBytes: 1400 << 10}); err != nil {
		b.Fatal(err)
	}
	name := fmt.Sprintf("nodes=%d/pods=%d/policies=%d", len(s.Nodes), len(s.Pods), len(s.NetworkPolicies))
	b.Run(name, func(b *testing.B) {
		for b.Loop() {
			mgrDone := make(chan error, 1)
			start := time.Now()
			go func() { mgrDone <- mgr.Start(ctx) }()
			var largest int
			logged := start
			for {
				t0 := time.Now()
				ok, l, diff, err := converged(ctx, admin, want)
				if err != nil {
					b.Fatal(err)
				}
				largest = l
				if ok {
					break
				}
				if time.Since(start) > *cpTimeout {
					b.Fatalf("not converged after %v: %s", *cpTimeout, diff)
				}
				if time.Since(logged) > time.Minute {
					logged = time.Now()
					b.Logf("after %v: %.200s", time.Since(start).Round(time.Second), diff)
				}
				// Listing every rule set and group loads the API server:
				// at scale, look at most half the time.
				time.Sleep(max(250*time.Millisecond, time.Since(t0)))
			}
			convergeTime := time.Since(start)
			initialWrites := counter.writes.Load()
			// What trails the rule sets and groups (their status, the
			// policies' Events) is written before the pod events, so that
			// it is not counted as theirs.
			settle := quiet(counter, 30*time.Minute)
			settleWrites := counter.writes.Load() - initialWrites

			// Pod events: a new pod on a node, in a namespace with policies.
			w0, by0 := counter.writes.Load(), counter.bytes.Load()
			for i := range *cpEvents {
				tmpl := s.Pods[2+(i*7919)%(len(s.Pods)-2)]
				p := tmpl.DeepCopy()
				p.Name = fmt.Sprintf("%s-new%d", tmpl.Name, i)
				p.ResourceVersion = ""
				status := p.Status
				status.PodIP = addrAt(spareBase, i).String()
				status.PodIPs = []corev1.PodIP{{IP: status.PodIP}}
				if err := admin.Create(ctx, p); err != nil {
					b.Fatal(err)
				}
				p.Status = status
				if err := admin.Status().Update(ctx, p); err != nil {
					b.Fatal(err)
				}
				time.Sleep(500 * time.Millisecond)
			}
			// Every write the events cause, however late.
			quiet(counter, 10*time.Minute)
			heap := int64(liveHeap()) - int64(heap0)
			events := float64(max(*cpEvents, 1))
			for name, pid := range pids {
				now, peak, err := processRSS(pid)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(now)/(1<<20), name+"-rss-MiB")
				b.ReportMetric(float64(peak)/(1<<20), name+"-peak-rss-MiB")
			}
			b.ReportMetric(float64(heap)/(1<<20), "controller-heap-MiB")
			b.ReportMetric(convergeTime.Seconds(), "converge-s")
			b.ReportMetric(float64(largest), "largest-nrs-bytes")
			b.ReportMetric(float64(initialWrites), "initial-writes")
			b.ReportMetric(settle.Seconds(), "settle-s")
			b.ReportMetric(float64(settleWrites), "settle-writes")
			b.ReportMetric(float64(counter.writes.Load()-w0)/events, "writes/event")
			b.ReportMetric(float64(counter.bytes.Load()-by0)/events, "bytes/event")
			cancel()
			if err := <-mgrDone; err != nil {
				b.Errorf("manager: %v", err)
			}
		}
	})
}
