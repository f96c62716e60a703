package bench

import (
	"flag"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/nftguard/nftguard/internal/netnstest"
	"github.com/nftguard/nftguard/test/localcluster"
)

// Scale parameters. Defaults fit a 2-core machine with 24 GiB of memory;
// pass bigger values after -args (or through BENCH_ARGS in make bench).
var (
	compileTier = flag.String("bench.tier", "10k", "compiler tier: 10k (10k pods, 1k namespaces, 2k policies), 100k (100k pods, 25k namespaces, 75k policies), or pods/namespaces/policies such as 50000/10000/20000")

	engineEvents = flag.Int("bench.events", 500, "pod events per iteration of the engine benchmark")

	progElements   = flag.Int("bench.prog.elements", 100_000, "set elements in the programming benchmark's table")
	progChains     = flag.Int("bench.prog.chains", 10_000, "chains in the programming benchmark's table")
	progSamples    = flag.Int("bench.prog.samples", 100, "deltas applied per size for the latency percentiles")
	progColdRounds = flag.Int("bench.prog.cold-rounds", 5, "cold starts per group count (the median is reported)")
	progGroups     = flag.String("bench.prog.groups", "1000,0", "address groups holding the elements, one run each (0: one group per rule)")

	pathPolicies = flag.String("bench.path.policies", "0,1000,10000", "policy counts of the data path benchmark")
	pathDuration = flag.Duration("bench.path.duration", 3*time.Second, "measuring time of each data path run")
	pathRounds   = flag.Int("bench.path.rounds", 3, "interleaved rounds of each data path configuration (the median is reported)")
	pathConns    = flag.Int("bench.path.conns", 4, "concurrent clients of the connect/request/response test")

	auditDuration = flag.Duration("bench.audit.duration", 5*time.Second, "flood time of the drop log benchmark")
	auditPorts    = flag.Int("bench.audit.ports", 1000, "distinct destination ports of the flood (distinct lines per fold window)")

	memPods = flag.Int("bench.mem.pods", 100_000, "remote pods in the agent memory benchmark")

	cpNodes    = flag.Int("bench.cp.nodes", 500, "API-only nodes of the control plane benchmark")
	cpPods     = flag.Int("bench.cp.pods", 10_000, "pods of the control plane benchmark")
	cpPolicies = flag.Int("bench.cp.policies", 2_000, "NetworkPolicies of the control plane benchmark")
	cpEvents   = flag.Int("bench.cp.events", 50, "pod events measured after convergence")
	cpTimeout  = flag.Duration("bench.cp.timeout", 10*time.Minute, "longest wait for the control plane benchmark to converge")
)

func TestMain(m *testing.M) {
	// The local cluster's pod servers and API forwarders run as this binary.
	localcluster.MaybeRunChild()
	if spec := os.Getenv(roleEnv); spec != "" {
		os.Exit(runRole(spec))
	}
	flag.Parse()
	os.Exit(m.Run())
}

// needRoot skips a benchmark that needs root and network namespaces.
func needRoot(b testing.TB) {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("needs root (network namespaces and nftables)")
	}
}

// percentile returns the p-th percentile (0..100) of ds, nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func sum(ds []time.Duration) time.Duration {
	var t time.Duration
	for _, d := range ds {
		t += d
	}
	return t
}

// intList parses a comma-separated list of numbers.
func intList(b testing.TB, s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			b.Fatalf("bad number list %q: %v", s, err)
		}
		out = append(out, v)
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func inNS(ns netns.NsHandle, fn func() error) error { return netnstest.Do(ns, fn) }
