package bench

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/nftguard/nftguard/internal/dataplane/nftnl"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

// pathShape is the data path benchmark's node for a number of policies:
// 110 local pods (the server is one of them), one rule and one address
// group of 10 peers per policy, so 10,000 policies hold about 100,000 set
// elements; the client is a peer of the last policy selecting the server.
func pathShape(policies int) nodeShape {
	return nodeShape{localPods: 110, rules: policies, groups: policies, groupSize: 10, server: true}
}

// linearScript renders the same policies as one linear chain, as an
// iptables-style enforcer would: after the established/invalid prologue,
// one rule per (local pod, peer address, port) in policy order, then a drop
// per isolated pod.
func linearScript(n node) string {
	var sb strings.Builder
	sb.WriteString("table inet linear {\n\tchain rules {\n")
	podsOf := map[string][]string{}
	var isolated []string
	for _, p := range n.spec.Pods {
		if p.Ingress == nil {
			continue
		}
		isolated = append(isolated, p.IPs[0])
		for _, r := range p.Ingress.Rules {
			podsOf[r] = append(podsOf[r], p.IPs[0])
		}
	}
	for _, r := range n.spec.Rules {
		for _, pod := range podsOf[r.ID] {
			for _, peer := range r.Peers {
				for _, a := range n.groups[peer.AddressGroup].Addresses {
					for _, port := range r.Ports {
						fmt.Fprintf(&sb, "\t\tip daddr %s ip saddr %s tcp dport %d accept\n", pod, a, port.Port)
					}
				}
			}
		}
	}
	for _, pod := range isolated {
		fmt.Fprintf(&sb, "\t\tip daddr %s drop\n", pod)
	}
	sb.WriteString("\t}\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n" +
		"\t\tct state established,related accept\n\t\tct state invalid drop\n\t\tjump rules\n\t}\n}\n")
	return sb.String()
}

// baselineScript turns conntrack on in the baseline node and filters
// nothing.
const baselineScript = `table inet baseline {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state established,related accept
	}
}
`

// pathRates is one measurement: connections (each one request and
// response) per second and bulk bits per second.
type pathRates struct{ crr, bulk float64 }

func measurePath(b *testing.B, p *pair) pathRates {
	dst := serverAddr.String()
	port := strconv.Itoa(benchPort)
	crr := runRoleIn(b, p.client, fmt.Sprintf("crr:%s,%s,%d,%s", dst, port, *pathConns, *pathDuration))
	bulk := runRoleIn(b, p.client, fmt.Sprintf("bulk:%s,%s,%s", dst, port, *pathDuration))
	return pathRates{crr, bulk}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// newServedPair builds a node with a client and a server pod and starts
// the server.
func newServedPair(b *testing.B) *pair {
	p := newPair(b)
	for _, ns := range []netns.NsHandle{p.client} {
		if err := inNS(ns, func() error { return writeSysctl("net/ipv4/ip_local_port_range", "1024 65000") }); err != nil {
			b.Fatal(err)
		}
	}
	startRole(b, p.server, "serve:"+strconv.Itoa(benchPort))
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		_ = inNS(p.client, func() error {
			var c net.Conn
			c, err = net.DialTimeout("tcp4", netip.AddrPortFrom(serverAddr, benchPort).String(), 200*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return nil
		})
		if err == nil {
			return p
		}
		if time.Now().After(deadline) {
			b.Fatalf("server not reachable: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkDatapath sends real TCP traffic between two pod namespaces
// through a node namespace: connections with one 64-byte request and
// response each (crr/s) and one bulk stream (bulk-bits/s), with the node
// filtering by nftguard's table for 0, 1,000 and 10,000 policies, and by
// the same policies as a linear rule list (a separate table, inet linear,
// in the same node namespace). A second node that tracks connections but
// filters nothing is measured in interleaved rounds as the baseline; each figure is the median of
// -bench.path.rounds rounds, and the ratios are to the baseline's median
// (1.0: no cost).
func BenchmarkDatapath(b *testing.B) {
	needRoot(b)
	base := newServedPair(b)
	// Nodes track connections anyway (kube-proxy, masquerading): the
	// baseline node runs conntrack with no filtering rule, so that the
	// ratios measure the rules and not conntrack itself.
	if err := nftIn(base.node, baselineScript, "-f", "-"); err != nil {
		b.Fatal(err)
	}
	filtered := newServedPair(b)
	for _, policies := range intList(b, *pathPolicies) {
		n := pathShape(policies).build()
		layouts := []struct {
			name      string
			install   func() (string, error)
			uninstall func() error
		}{
			{"nftguard", func() (string, error) {
				prog, err := nftnl.NewProgrammerInNetNS(int(filtered.node))
				if err != nil {
					return "", err
				}
				defer prog.Close()
				t, err := render.Render(n.spec, n.groups, layout(render.Options{}))
				if err != nil {
					return "", err
				}
				st, err := prog.Apply(t)
				return fmt.Sprintf("%d chains, %d rules, %d elements", st.Chains, st.Rules, st.SetElements), err
			}, func() error {
				prog, err := nftnl.NewProgrammerInNetNS(int(filtered.node))
				if err != nil {
					return err
				}
				defer prog.Close()
				return prog.Delete()
			}},
			{"linear", func() (string, error) {
				script := linearScript(n)
				return fmt.Sprintf("%d rules", strings.Count(script, "\n")-9), nftIn(filtered.node, script, "-f", "-")
			}, func() error {
				return nftIn(filtered.node, "", "delete", "table", "inet", "linear")
			}},
		}
		for _, l := range layouts {
			b.Run(fmt.Sprintf("policies=%d/%s", policies, l.name), func(b *testing.B) {
				start := time.Now()
				what, err := l.install()
				if err != nil {
					b.Fatalf("programming %s: %v", l.name, err)
				}
				b.Logf("%s table: %s, programmed in %v", l.name, what, time.Since(start).Round(time.Millisecond))
				defer func() {
					if err := l.uninstall(); err != nil {
						b.Errorf("removing %s table: %v", l.name, err)
					}
				}()
				var baseCRR, baseBulk, crr, bulk []float64
				for b.Loop() {
					for round := range *pathRounds {
						// Alternate which node goes first, so that
						// whatever the first run of a pair pays (or
						// gains) is shared.
						var r0, r1 pathRates
						if round%2 == 0 {
							r0, r1 = measurePath(b, base), measurePath(b, filtered)
						} else {
							r1, r0 = measurePath(b, filtered), measurePath(b, base)
						}
						baseCRR, baseBulk = append(baseCRR, r0.crr), append(baseBulk, r0.bulk)
						crr, bulk = append(crr, r1.crr), append(bulk, r1.bulk)
					}
				}
				b.ReportMetric(median(crr), "crr/s")
				b.ReportMetric(median(bulk), "bulk-bits/s")
				b.ReportMetric(median(baseCRR), "base-crr/s")
				b.ReportMetric(median(baseBulk), "base-bulk-bits/s")
				b.ReportMetric(median(crr)/median(baseCRR), "crr-ratio")
				b.ReportMetric(median(bulk)/median(baseBulk), "bulk-ratio")
			})
		}
	}
}
