package bench

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/dataplane/nftnl"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

// benchResolver names the two pods of the drop log benchmark from memory.
type benchResolver struct{}

func (benchResolver) LocalPod(string, audit.Direction) (string, string, []string, bool) {
	return "bench", "server", []string{"NetworkPolicy/bench/deny-all"}, true
}

func (benchResolver) Peer(ip netip.Addr) (string, string, bool) {
	if ip == clientAddr {
		return "bench", "client", true
	}
	return "", "", false
}

func cpuTime() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAuditLog floods an isolated pod with UDP datagrams to
// -bench.audit.ports destination ports (so that folding leaves that many
// lines a second) from a separate process, with the table's log rate limit
// lifted (a million packets a second), and runs the drop log pipeline
// (NFLOG reader, folding, names, JSON lines to a file) in this process.
// It reports packets logged per second, lines per second, records the
// pipeline accounted as lost, packets sent but neither logged nor counted
// lost (unaccounted: dropped before NFLOG, on the sending side or the
// veth), and this process's CPU in cores, also per 10k logged drops/s.
func BenchmarkAuditLog(b *testing.B) {
	needRoot(b)
	p := newPair(b)
	spec := v1alpha1.NodeRuleSetSpec{Pods: []v1alpha1.LocalPod{{Namespace: "bench", Name: "server", IPs: []string{serverAddr.String()},
		Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Policies: []string{"NetworkPolicy/bench/deny-all"}}}}}
	t, err := render.Render(spec, nil, layout(render.Options{LogRate: 1_000_000, LogBurst: 1_000_000}))
	if err != nil {
		b.Fatal(err)
	}
	prog, err := nftnl.NewProgrammerInNetNS(int(p.node))
	if err != nil {
		b.Fatal(err)
	}
	defer prog.Close()
	if _, err := prog.Apply(t); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		out := filepath.Join(b.TempDir(), "drops.log")
		l, err := audit.New(audit.Config{Node: "bench", Group: render.DefaultLogGroup, NetNS: int(p.node), Output: out,
			Resolver: benchResolver{}, Registerer: prometheus.NewRegistry(), ReadBuffer: 8 << 20})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- l.Run(ctx) }()
		time.Sleep(300 * time.Millisecond) // NFLOG bound
		cpu0, t0 := cpuTime(), time.Now()
		sent := runRoleIn(b, p.client, fmt.Sprintf("flood:%s,%d,%s", serverAddr, *auditPorts, *auditDuration))
		elapsed := time.Since(t0)
		time.Sleep(1500 * time.Millisecond) // let the last fold window close
		cpu := cpuTime() - cpu0
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		tot := l.Totals()
		data, err := os.ReadFile(out)
		if err != nil {
			b.Fatal(err)
		}
		secs := elapsed.Seconds()
		logged := float64(tot.Drops) / secs
		cores := cpu.Seconds() / secs
		b.ReportMetric(logged, "logged-drops/s")
		b.ReportMetric(sent/secs, "sent/s")
		b.ReportMetric(float64(bytes.Count(data, []byte("\n")))/secs, "lines/s")
		b.ReportMetric(float64(tot.Lost), "lost-accounted")
		b.ReportMetric(max(sent-float64(tot.Drops)-float64(tot.Lost), 0), "unaccounted")
		b.ReportMetric(cores, "cpu-cores")
		if logged > 0 {
			b.ReportMetric(cores/(logged/10_000), "cores-per-10k/s")
		}
	}
}
