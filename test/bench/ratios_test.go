package bench

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/nftnl"
	"github.com/nftguard/nftguard/internal/dataplane/nfttest"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

var (
	ratioRounds  = flag.Int("bench.ratio.rounds", 9, "interleaved rounds of the programming ratios benchmark")
	ratioDeltas  = flag.Int("bench.ratio.deltas", 5, "deltas of each size per method and round (the round's figure is their median)")
	ratioNoWatch = flag.Bool("bench.ratio.no-listener", false, "run the programming ratios without the nf_tables event listener")
)

// programMethod programs the table one way: cold loads tab into an empty
// namespace; delta applies the change from base to next to the loaded
// table.
type programMethod struct {
	name  string
	cold  func(tab *model.Table) error
	delta func(base, next *model.Table, groups func() (*model.Table, error)) error
}

// BenchmarkProgramRatios times nftguard's programming against nft -f and
// against google/nftables on the same table (BenchmarkProgram's node, the
// first -bench.prog.groups), in the same run: a cold load of the whole
// table and deltas that swap 1 and 1,000 peer addresses. Each of
// -bench.ratio.rounds rounds runs the three methods in a rotating order, and
// the figure of a round is nftguard's time divided by the other method's;
// reported are the median of the rounds' ratios and a 95% confidence
// interval of that median (order statistics), so the machine's drift falls
// on both sides of each ratio. nftguard: a Renderer renders (the delta:
// again, after the previous version) and the Programmer applies. nft: `nft
// -f` of the table as `nft list` prints it, each group's addresses in a set
// of its own (untagged: nft cannot read the shared sets' lines), and for a
// delta an incremental script of element commands. google/nftables: the same objects through
// nfttest's translation, one Conn.Flush. While it runs an nf_tables event
// listener (nftnl.Monitor, as the agent's tamper watch) reads every
// notification the changes cause, unless -bench.ratio.no-listener.
func BenchmarkProgramRatios(b *testing.B) {
	needRoot(b)
	ns := newNetNS(b)
	if !*ratioNoWatch {
		mon, err := nftnl.NewMonitor(int(ns))
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				if _, err := mon.Receive(); err != nil && !isOverrun(err) {
					return
				}
			}
		}()
		b.Cleanup(func() { mon.Close(); <-done })
	}
	groups := intList(b, *progGroups)[0]
	n := programShape(groups).build()
	base, err := render.Render(n.spec, n.groups, layout(render.Options{}))
	if err != nil {
		b.Fatal(err)
	}
	prog, err := nftnl.NewProgrammerInNetNS(int(ns))
	if err != nil {
		b.Fatal(err)
	}
	defer prog.Close()
	var renderer *render.Renderer
	methods := []programMethod{
		{"nftguard",
			func(*model.Table) error {
				renderer = render.NewRenderer(layout(render.Options{}))
				t, err := renderer.Render(n.spec, n.groups)
				if err != nil {
					return err
				}
				_, err = prog.Apply(t)
				return err
			},
			func(_, _ *model.Table, next func() (*model.Table, error)) error {
				t, err := next()
				if err != nil {
					return err
				}
				_, err = prog.Apply(t)
				return err
			}},
		{"nft", func(tab *model.Table) error {
			u, err := untagged(tab)
			if err != nil {
				return err
			}
			return nftIn(ns, u.String(), "-f", "-")
		},
			func(from, to *model.Table, _ func() (*model.Table, error)) error {
				f, err := untagged(from)
				if err != nil {
					return err
				}
				t, err := untagged(to)
				if err != nil {
					return err
				}
				script, err := elementScript(f, t)
				if err != nil {
					return err
				}
				return nftIn(ns, script, "-f", "-")
			}},
		{"google/nftables", func(tab *model.Table) error { return libraryLoad(ns, tab) },
			func(from, to *model.Table, _ func() (*model.Table, error)) error { return libraryDelta(ns, from, to) }},
	}
	type key struct{ what, method string }
	times := map[key][]float64{}
	sizes := []int{1, 1000}
	variants := map[int][2]*model.Table{}
	for _, d := range sizes {
		next, err := render.Render(n.spec, n.withDelta(d), layout(render.Options{}))
		if err != nil {
			b.Fatal(err)
		}
		variants[d] = [2]*model.Table{base, next}
	}
	for b.Loop() {
		for round := range *ratioRounds {
			for k := range methods {
				m := methods[(round+k)%len(methods)]
				// Cold: an empty namespace, the kernel done freeing the
				// previous table, the heap collected.
				if err := prog.Delete(); err != nil {
					b.Fatal(err)
				}
				time.Sleep(coldSettle)
				runtime.GC()
				start := time.Now()
				if err := m.cold(base); err != nil {
					b.Fatalf("%s cold load: %v", m.name, err)
				}
				times[key{"cold", m.name}] = append(times[key{"cold", m.name}], time.Since(start).Seconds())
			}
			// Each method's deltas start from its own load of the table
			// (untimed), and it puts the table back, untimed, after each.
			for k := range methods {
				m := methods[(round+k)%len(methods)]
				if err := prog.Delete(); err != nil {
					b.Fatal(err)
				}
				time.Sleep(coldSettle)
				if err := m.cold(base); err != nil {
					b.Fatalf("%s load: %v", m.name, err)
				}
				for _, d := range sizes {
					withDelta := n.withDelta(d)
					there := func() (*model.Table, error) { return renderer.Render(n.spec, withDelta) }
					back := func() (*model.Table, error) { return renderer.Render(n.spec, n.groups) }
					var ds []float64
					for range *ratioDeltas {
						start := time.Now()
						if err := m.delta(variants[d][0], variants[d][1], there); err != nil {
							b.Fatalf("%s %d-element delta: %v", m.name, d, err)
						}
						ds = append(ds, time.Since(start).Seconds())
						if err := m.delta(variants[d][1], variants[d][0], back); err != nil {
							b.Fatalf("%s %d-element delta back: %v", m.name, d, err)
						}
					}
					what := fmt.Sprintf("delta-%d", d)
					times[key{what, m.name}] = append(times[key{what, m.name}], median(ds))
				}
			}
		}
	}
	for _, what := range []string{"cold", "delta-1", "delta-1000"} {
		own := times[key{what, "nftguard"}]
		b.ReportMetric(median(own)*1e3, what+"-nftguard-ms")
		for _, other := range []string{"nft", "google/nftables"} {
			theirs := times[key{what, other}]
			ratios := make([]float64, len(own))
			for i := range own {
				ratios[i] = own[i] / theirs[i]
			}
			lo, hi := medianCI(ratios)
			short := strings.TrimPrefix(other, "google/")
			b.ReportMetric(median(theirs)*1e3, what+"-"+short+"-ms")
			b.ReportMetric(median(ratios), what+"-vs-"+short)
			b.ReportMetric(lo, what+"-vs-"+short+"-ci-lo")
			b.ReportMetric(hi, what+"-vs-"+short+"-ci-hi")
		}
	}
}

// isOverrun reports a notification the kernel dropped for a full buffer,
// which the agent treats as "check now" and the benchmark ignores.
func isOverrun(err error) bool { return errors.Is(err, unix.ENOBUFS) }

// medianCI returns a distribution-free 95% confidence interval of the
// median of v: the order statistics k and n+1-k (1-based), k the largest
// with P(Binomial(n, 1/2) < k) <= 0.025 (for 9 rounds, the 2nd and 8th:
// 96%). With too few values for that it returns the extremes.
func medianCI(v []float64) (lo, hi float64) {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0, 0
	}
	k, cum := 0, 0.0
	for i := 0; i < n; i++ {
		cum += binom(n, i) / math.Pow(2, float64(n))
		if cum > 0.025 {
			break
		}
		k = i + 1
	}
	if k < 1 {
		k = 1
	}
	return s[k-1], s[n-k]
}

func binom(n, k int) float64 {
	r := 1.0
	for i := 1; i <= k; i++ {
		r = r * float64(n-k+i) / float64(i)
	}
	return r
}

// untagged returns t as nft can read it: nft cannot parse a constant in a
// concatenation, so each tagged line (tag . ip saddr @ag4.N, and the
// identity chains' tag . ip daddr . meta l4proto . th dport @idpi4) becomes
// a lookup in a set of its tag's own holding the same keys without the tag
// (tg4-<tag>, tp4-<tag>), and the shared sets go. The rules and elements
// are the same in number; the sets are more (one per tag and family, as an
// enforcer without shared sets writes them). The identity lines of egress,
// and port ranges in them, are not translated: the benchmark's node has
// neither.
func untagged(t *model.Table) (*model.Table, error) {
	name := func(prefix string, fam model.Family, tag uint32) string {
		if fam == model.IPv6 {
			return fmt.Sprintf("%s6-%08x", prefix, tag)
		}
		return fmt.Sprintf("%s4-%08x", prefix, tag)
	}
	out := &model.Table{}
	split := map[string]*model.Set{}
	var names []string
	for _, s := range t.Sets {
		fam, kind, prefix := model.IPv4, model.SetIPv4, "tg"
		switch s.Kind {
		case model.SetTaggedIPv4:
		case model.SetTaggedIPv6:
			fam, kind = model.IPv6, model.SetIPv6
		case model.SetTaggedEndpointIPv4:
			kind, prefix = model.SetEndpointIPv4, "tp"
		case model.SetTaggedEndpointIPv6:
			fam, kind, prefix = model.IPv6, model.SetEndpointIPv6, "tp"
		default:
			out.Sets = append(out.Sets, s)
			continue
		}
		for _, e := range s.Elements {
			n := name(prefix, fam, binary.NativeEndian.Uint32(e.Key[:4]))
			if split[n] == nil {
				split[n] = &model.Set{Name: n, Kind: kind}
				names = append(names, n)
			}
			if e.KeyEnd != nil && !bytes.Equal(e.Key, e.KeyEnd) {
				return nil, fmt.Errorf("set %s: a range of ports, %s, which an endpoint set cannot hold", s.Name, s.Kind.Format(e))
			}
			split[n].Elements = append(split[n].Elements, model.Element{Key: e.Key[4:]})
		}
	}
	slices.Sort(names)
	for _, n := range names {
		out.Sets = append(out.Sets, split[n])
	}
	for _, c := range t.Chains {
		cc := *c
		cc.Rules = make([]*model.Rule, len(c.Rules))
		for i, r := range c.Rules {
			stmts := slices.Clone(r.Stmts)
			for j, st := range stmts {
				switch ts := st.(type) {
				case model.TaggedAddrInSet:
					stmts[j] = model.AddrInSet{Family: ts.Family, Field: ts.Field, Set: name("tg", ts.Family, ts.Tag)}
				case model.TaggedEndpointInSet:
					if ts.Field != model.Daddr {
						return nil, fmt.Errorf("chain %s: an identity line of egress, which nft has no endpoint set for", c.Name)
					}
					stmts[j] = model.EndpointInSet{Family: ts.Family, Set: name("tp", ts.Family, ts.Tag)}
				}
			}
			cc.Rules[i] = model.NewRule(stmts...)
		}
		out.Chains = append(out.Chains, &cc)
	}
	return out, nil
}

// elementScript is the change from one table to the other as nft commands,
// when it changes only elements (as a change of group members does).
func elementScript(from, to *model.Table) (string, error) {
	var sb strings.Builder
	for _, o := range model.Diff(from, to).Ops {
		switch o.Kind {
		case model.OpAddElements, model.OpDelElements:
			verb := "add"
			if o.Kind == model.OpDelElements {
				verb = "delete"
			}
			fmt.Fprintf(&sb, "%s element inet %s %s { ", verb, model.TableName, o.Name)
			for i, e := range o.Elems {
				if i > 0 {
					sb.WriteString(", ")
				}
				sb.WriteString(o.Set.Kind.Format(e))
			}
			sb.WriteString(" }\n")
		case model.OpFlushSet:
			fmt.Fprintf(&sb, "flush set inet %s %s\n", model.TableName, o.Name)
		default:
			return "", fmt.Errorf("the delta is not only elements: %s", o)
		}
	}
	return sb.String(), nil
}

// libraryConn opens google/nftables in ns with socket buffers as large as
// the Programmer's: the library sends a whole batch in one sendmsg and asks
// for an acknowledgement of every message.
func libraryConn(ns netns.NsHandle) (*nftables.Conn, error) {
	buffers := func(c *netlink.Conn) error {
		rc, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 128<<20)
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 128<<20)
			}
		}); err != nil {
			return err
		}
		return serr
	}
	return nftables.New(nftables.WithNetNSFd(int(ns)), nftables.WithSockOptions(buffers))
}

// libraryLoad loads the whole table through google/nftables: the objects
// nfttest translates, elements in batches of 1,000 per message, one Flush.
func libraryLoad(ns netns.NsHandle, tab *model.Table) error {
	c, err := libraryConn(ns)
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	t := c.AddTable(nfttest.Table())
	// Chains first: verdict map elements and jumps name them.
	chains := map[string]*nftables.Chain{}
	for _, ch := range tab.Chains {
		lc := nfttest.Chain(ch)
		lc.Table = t
		chains[ch.Name] = c.AddChain(lc)
	}
	sets := map[string]*nftables.Set{}
	for _, s := range tab.Sets {
		ns := nfttest.Set(s)
		ns.Table = t
		if s.Kind.Sized() {
			ns.Size = model.SetCapacity(len(s.Elements))
		}
		if err := c.AddSet(ns, nil); err != nil {
			return fmt.Errorf("set %s: %w", s.Name, err)
		}
		elems, err := nfttest.Elements(s.Kind, s.Elements)
		if err != nil {
			return err
		}
		for len(elems) > 0 {
			k := min(len(elems), 1000)
			if err := c.SetAddElements(ns, elems[:k]); err != nil {
				return fmt.Errorf("elements of %s: %w", s.Name, err)
			}
			elems = elems[k:]
		}
		sets[s.Name] = ns
	}
	for _, ch := range tab.Chains {
		for _, r := range ch.Rules {
			exprs, err := nfttest.Rule(r)
			if err != nil {
				return err
			}
			c.AddRule(&nftables.Rule{Table: t, Chain: chains[ch.Name], Exprs: exprs, UserData: nfttest.UserData(r)})
		}
	}
	return c.Flush()
}

// libraryDelta applies the element changes from one table to the other
// through google/nftables, one Flush.
func libraryDelta(ns netns.NsHandle, from, to *model.Table) error {
	c, err := libraryConn(ns)
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	t := nfttest.Table()
	for _, o := range model.Diff(from, to).Ops {
		s := nfttest.Set(o.Set)
		s.Table = t
		switch o.Kind {
		case model.OpAddElements, model.OpDelElements:
			elems, err := nfttest.Elements(o.Set.Kind, o.Elems)
			if err != nil {
				return err
			}
			if o.Kind == model.OpAddElements {
				err = c.SetAddElements(s, elems)
			} else {
				err = c.SetDeleteElements(s, elems)
			}
			if err != nil {
				return err
			}
		case model.OpFlushSet:
			c.FlushSet(s)
		default:
			return fmt.Errorf("the delta is not only elements: %s", o)
		}
	}
	return c.Flush()
}
