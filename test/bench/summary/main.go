// Command summary reads `go test -bench` output of the nftguard benchmarks
// on standard input, copies it to standard output, and then prints a table
// of each target: the measured value, the target, whether it is met and
// the published figure it is compared with.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// target is one row of the table: the metric of the benchmarks whose name
// matches, shown scaled, and how it compares with the goal.
type target struct {
	what   string
	bench  *regexp.Regexp
	metric string
	scale  float64 // shown = value * scale
	unit   string
	// goal and atMost: met when shown <= goal (atMost) or >= goal; a goal
	// of 0 with atMost false means there is no numeric goal (report only).
	goal   float64
	atMost bool
	target string
	anchor string
}

var targets = []target{
	// Counts and ratios first: load cannot change them.
	{"rules walked by a new connection, identity layout", re(`^RuleCount/`), "identity-layout-rules/conn", 1, "", 16, true, "≤ 16 at every policy count (flat)", "Cilium: one policy map lookup"},
	{"rules walked by a new connection, the agent's default (identities from 16 rules)", re(`^RuleCount/`), "default-rules/conn", 1, "", 36, true, "≤ 36 at every policy count (bounded: 6 + 2 per rule under 16)", ""},
	{"rules walked by a new connection, rule chains only", re(`^RuleCount/`), "rule-chains-rules/conn", 1, "", 0, false, "(grows with the policies on the packet's port)", ""},
	{"cold start, nftguard ÷ nft -f (median of rounds)", re(`^ProgramRatios$`), "cold-vs-nft", 1, "×", 1, true, "≤ 1.00", ""},
	{"  95% CI high", re(`^ProgramRatios$`), "cold-vs-nft-ci-hi", 1, "×", 0, false, "(reported)", ""},
	{"cold start, nftguard ÷ google/nftables (median of rounds)", re(`^ProgramRatios$`), "cold-vs-nftables", 1, "×", 1, true, "≤ 1.00", ""},
	{"  95% CI high", re(`^ProgramRatios$`), "cold-vs-nftables-ci-hi", 1, "×", 0, false, "(reported)", ""},
	{"1-element delta, nftguard ÷ nft -f (median of rounds)", re(`^ProgramRatios$`), "delta-1-vs-nft", 1, "×", 1, true, "≤ 1.00", ""},
	{"  95% CI high", re(`^ProgramRatios$`), "delta-1-vs-nft-ci-hi", 1, "×", 0, false, "(reported)", ""},
	{"1-element delta, nftguard ÷ google/nftables (median of rounds)", re(`^ProgramRatios$`), "delta-1-vs-nftables", 1, "×", 1, true, "≤ 1.00", ""},
	{"  95% CI high", re(`^ProgramRatios$`), "delta-1-vs-nftables-ci-hi", 1, "×", 0, false, "(reported)", ""},
	{"1,000-element delta, nftguard ÷ nft -f (median of rounds)", re(`^ProgramRatios$`), "delta-1000-vs-nft", 1, "×", 1, true, "≤ 1.00", ""},
	{"  95% CI high", re(`^ProgramRatios$`), "delta-1000-vs-nft-ci-hi", 1, "×", 0, false, "(reported)", ""},
	{"1,000-element delta, nftguard ÷ google/nftables (median of rounds)", re(`^ProgramRatios$`), "delta-1000-vs-nftables", 1, "×", 1, true, "≤ 1.00", ""},
	{"  95% CI high", re(`^ProgramRatios$`), "delta-1000-vs-nftables-ci-hi", 1, "×", 0, false, "(reported)", ""},
	{"rules walked by a new connection, linear layout", re(`^RuleCount/`), "linear-rules/conn", 1, "", 0, false, "(computed: grows with the policies)", "iptables-style enforcers"},
	{"full compile", re(`^Compile/`), "ns/op", 1e-9, "s", 3, true, "≤ 3 s (100k pods/25k ns/75k policies)", "Antrea ~6 s"},
	{"full compile peak heap", re(`^Compile/`), "peak-heap-MiB", 1.0 / 1024, "GiB", 1, true, "≤ 1 GiB", "Antrea ~1.6 GB"},
	{"pod event (relabel) p99", re(`^EnginePodEvent/.*/relabel`), "p99-ms", 1, "ms", 10, true, "≤ 10 ms", "Cilium policy p99 ~300 ms"},
	{"pod event (replace) p99", re(`^EnginePodEvent/.*/replace`), "p99-ms", 1, "ms", 10, true, "≤ 10 ms", "Cilium policy p99 ~300 ms"},
	{"cold start", re(`^Program/.*/cold`), "elements/s", 1e-3, "k elem/s", 250, false, "≥ 250k elements/s", "google/nftables ~220k rules/s"},
	{"1-element delta p99", re(`^Program/.*/delta-1$`), "p99-ms", 1, "ms", 0, false, "(reported)", "Calico nftables ~17 ms per IP-set member"},
	{"1k-element delta p99", re(`^Program/.*/delta-1000$`), "p99-ms", 1, "ms", 50, true, "≤ 50 ms", "kube-proxy nftables ~141 ms"},
	{"ENOBUFS", re(`^Program/`), "enobufs", 1, "", 0, true, "0", ""},
	{"connection rate vs baseline", re(`^Datapath/.*/nftguard`), "crr-ratio", 1, "×", 0.97, false, "≥ 0.97, flat 0→10k policies", "linear iptables −75% at 15k rules"},
	{"bulk throughput vs baseline", re(`^Datapath/.*/nftguard`), "bulk-ratio", 1, "×", 0.97, false, "≥ 0.97", ""},
	{"linear layout connection rate", re(`^Datapath/.*/linear`), "crr-ratio", 1, "×", 0, false, "shown degrading", "linear iptables −75% at 15k rules"},
	{"drops logged", re(`^AuditLog`), "logged-drops/s", 1e-3, "k/s", 10, false, "≥ 10k/s", ""},
	{"agent CPU per 10k drops/s", re(`^AuditLog`), "cores-per-10k/s", 1, "cores", 0.5, true, "≤ 0.5 core", ""},
	{"drop records lost, unaccounted", re(`^AuditLog`), "unaccounted", 1, "", 0, true, "0 (losses accounted)", ""},
	{"agent memory per remote pod", re(`^AgentMemory`), "rss-B/pod", 1.0 / 1024, "KiB", 5, true, "≤ 5 KiB", ""},
	{"controller heap per pod", re(`^ControllerMemory/`), "engine-B/pod", 1.0 / 1024, "KiB", 0, false, "(reported)", ""},
	{"watch events per pod event", re(`^WatchFanout/`), "events/pod-event", 1, "", 0, false, "(unfiltered: every agent; span: the buckets of the nodes referencing the group)", "Antrea spans: only the nodes that need it"},
	{"watch bytes per pod event", re(`^WatchFanout/`), "MiB/pod-event", 1, "MiB", 0, false, "(reported)", ""},
	{"nodes reached per node referencing the group", re(`^WatchFanout/.*/span=`), "nodes-reached/node-referencing", 1, "", 0, false, "(reported: its bucket's nodes)", ""},
	{"API server CPU per pod event", re(`^WatchFanout/`), "apiserver-cpu-ms/pod-event", 1, "ms", 0, false, "(reported)", ""},
	{"time to converge", re(`^ControlPlane/`), "converge-s", 1, "s", 0, false, "(reported)", ""},
	{"largest NodeRuleSet", re(`^ControlPlane/`), "largest-nrs-bytes", 1.0 / 1024, "KiB", 512, true, "≤ 512 KiB", ""},
	{"API writes per pod event", re(`^ControlPlane/`), "writes/event", 1, "", 25, true, "O(1), not one per node", ""},
	{"API bytes per pod event", re(`^ControlPlane/`), "bytes/event", 1.0 / 1024, "KiB", 0, false, "(reported)", ""},
	{"policy change to enforced p50", re(`^EndToEnd$`), "policy-p50-ms", 1, "ms", 150, true, "≤ 150 ms", ""},
	{"policy change to enforced p99", re(`^EndToEnd$`), "policy-p99-ms", 1, "ms", 1000, true, "≤ 1 s", "Cilium policy p99 ~300 ms"},
	{"new pod to reachable p50", re(`^EndToEnd$`), "pod-p50-ms", 1, "ms", 150, true, "≤ 150 ms", ""},
	{"new pod to reachable p99", re(`^EndToEnd$`), "pod-p99-ms", 1, "ms", 1000, true, "≤ 1 s", ""},
	{"new isolated pod, ADD to ready p50", re(`^AddToReady$`), "isolated-p50-ms", 1, "ms", 0, false, "(reported)", ""},
	{"new isolated pod, ADD to ready p99", re(`^AddToReady$`), "isolated-p99-ms", 1, "ms", 0, false, "(reported)", ""},
	{"new open pod, ADD to ready p50", re(`^AddToReady$`), "open-p50-ms", 1, "ms", 0, false, "(reported)", ""},
	{"new open pod, ADD to ready p99", re(`^AddToReady$`), "open-p99-ms", 1, "ms", 0, false, "(reported)", ""},
	{"real nodes: policy change to enforced p50", re(`^EndToEndRealNodes$`), "policy-p50-ms", 1, "ms", 0, false, "(reported)", ""},
	{"real nodes: policy change to enforced p99", re(`^EndToEndRealNodes$`), "policy-p99-ms", 1, "ms", 0, false, "(reported)", ""},
	{"real nodes: pod created to reachable p50", re(`^EndToEndRealNodes$`), "pod-p50-ms", 1, "ms", 0, false, "(reported)", ""},
	{"real nodes: pod created to reachable p99", re(`^EndToEndRealNodes$`), "pod-p99-ms", 1, "ms", 0, false, "(reported)", ""},
	{"real nodes: pod Ready to reachable p50", re(`^EndToEndRealNodes$`), "pod-ready-p50-ms", 1, "ms", 0, false, "(reported)", ""},
	{"real nodes: pod Ready to reachable p99", re(`^EndToEndRealNodes$`), "pod-ready-p99-ms", 1, "ms", 0, false, "(reported)", ""},
	{"drops API naming memory per pod (index)", re(`^DropsNaming$`), "index-B/pod", 1, "B", 0, false, "(reported)", ""},
	{"drops API naming index at the pods run", re(`^DropsNaming$`), "index-MiB", 1, "MiB", 0, false, "(reported)", ""},
	{"controller pod cache per pod, slim", re(`^DropsNaming$`), "slim-pod-B/pod", 1.0 / 1024, "KiB", 0, false, "(reported)", ""},
	{"controller pod cache per pod, full", re(`^DropsNaming$`), "full-pod-B/pod", 1.0 / 1024, "KiB", 0, false, "(reported)", ""},
	{"drops list, one namespace, p50", re(`^DropsQuery$`), "namespace-p50-ms", 1, "ms", 0, false, "(reported)", ""},
	{"drops list, one namespace, p99", re(`^DropsQuery$`), "namespace-p99-ms", 1, "ms", 0, false, "(reported)", ""},
	{"drops list, cluster-wide, p50", re(`^DropsQuery$`), "cluster-wide-p50-ms", 1, "ms", 0, false, "(reported)", ""},
	{"drops list, cluster-wide, p99", re(`^DropsQuery$`), "cluster-wide-p99-ms", 1, "ms", 0, false, "(reported)", ""},
	{"drops list through the aggregator ÷ direct", re(`^DropsQuery$`), "cluster-wide-aggregator-ratio", 1, "×", 0, false, "(reported)", ""},
}

func re(s string) *regexp.Regexp { return regexp.MustCompile(s) }

// result is one benchmark line.
type result struct {
	name    string
	metrics map[string]float64
	// load is the machine's mean 1-minute load average while the
	// benchmark ran (since the line before it), or -1 if unknown.
	load float64
}

// loadSampler records the machine's 1-minute load average once a second,
// so that each result carries the load it ran under: timings are context
// only, next to that load.
type loadSampler struct {
	mu      sync.Mutex
	sum     float64
	samples int
	// last is the latest sample (valid when sampled).
	last    float64
	sampled bool
}

func (l *loadSampler) run(read func() (float64, bool), every time.Duration) {
	for range time.Tick(every) {
		if v, ok := read(); ok {
			l.mu.Lock()
			l.sum += v
			l.samples++
			l.last, l.sampled = v, true
			l.mu.Unlock()
		}
	}
}

// take returns the mean of the samples since the last take and starts
// again. A benchmark that ended within a second of the one before it has no
// sample of its own: it gets the latest sample (-1 if there is none yet).
func (l *loadSampler) take() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.samples == 0 {
		if !l.sampled {
			return -1
		}
		return l.last
	}
	mean := l.sum / float64(l.samples)
	l.sum, l.samples = 0, 0
	return mean
}

// loadAverage reads the 1-minute load average.
func loadAverage() (float64, bool) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, false
	}
	v, err := strconv.ParseFloat(f[0], 64)
	return v, err == nil
}

var procSuffix = regexp.MustCompile(`-\d+$`)

func parse(line string) (result, bool) {
	f := strings.Fields(line)
	if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
		return result{}, false
	}
	if _, err := strconv.Atoi(f[1]); err != nil {
		return result{}, false
	}
	r := result{name: procSuffix.ReplaceAllString(strings.TrimPrefix(f[0], "Benchmark"), ""), metrics: map[string]float64{}}
	for i := 2; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return result{}, false
		}
		r.metrics[f[i+1]] = v
	}
	return r, true
}

func main() {
	loads := &loadSampler{}
	go loads.run(loadAverage, time.Second)
	var results []result
	sc := bufio.NewScanner(io.TeeReader(os.Stdin, os.Stdout))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if r, ok := parse(sc.Text()); ok {
			r.load = loads.take()
			results = append(results, r)
		}
	}
	fmt.Println()
	fmt.Printf("LOAD is the machine's mean 1-minute load average while the benchmark ran, on %d CPUs: "+
		"counts and ratios do not depend on it, timings do.\n", runtime.NumCPU())
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "TARGET\tBENCHMARK\tMEASURED\tTARGET\tMET\tLOAD\tANCHOR")
	for _, t := range targets {
		for _, r := range results {
			v, ok := r.metrics[t.metric]
			if !ok || !t.bench.MatchString(r.name) {
				continue
			}
			shown := v * t.scale
			met := "-"
			switch {
			case t.goal == 0 && !t.atMost:
			case t.atMost && shown <= t.goal, !t.atMost && shown >= t.goal:
				met = "yes"
			default:
				met = "NO"
			}
			load := "?"
			if r.load >= 0 {
				load = strconv.FormatFloat(r.load, 'f', 1, 64)
			}
			fmt.Fprintf(w, "%s\t%s\t%s %s\t%s\t%s\t%s\t%s\n", t.what, r.name, format(shown), t.unit, t.target, met, load, t.anchor)
		}
	}
	w.Flush()
}

func format(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}
