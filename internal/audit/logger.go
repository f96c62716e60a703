package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
)

// Resolver names the pods and policies of logged packets. LocalPod is
// expected to be a fast, in-memory lookup; Peer may be slow (an API
// lookup): the pipeline calls both off the NFLOG read loop, once per line
// rather than once per packet.
type Resolver interface {
	// LocalPod finds the local pod of a chain by pod key (see PodKey):
	// its namespace, name and the policies isolating it in dir.
	LocalPod(podKey string, dir Direction) (namespace, name string, policies []string, ok bool)
	// Peer names the pod owning ip, if known.
	Peer(ip netip.Addr) (namespace, name string, ok bool)
}

// Clock tells the time; tests inject their own.
type Clock interface {
	Now() time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// Config configures a Logger. Zero values take the defaults below.
type Config struct {
	// Node is written in every line.
	Node string
	// Group is the NFLOG group the dataplane logs to.
	Group uint16
	// NetNS is a file descriptor of the network namespace to read NFLOG in;
	// 0 reads in the current one.
	NetNS int
	// Output is the log file, or StdoutPath ("-") for standard output.
	Output string
	// MaxSize is the size in bytes past which the file is rotated (default
	// 100 MiB); negative never rotates.
	MaxSize int64
	// MaxFiles is the number of rotated files kept, Output.1 to
	// Output.<MaxFiles> (default 5).
	MaxFiles int
	// Window is how long repeats of a flow are folded into one line
	// (default 1 s).
	Window time.Duration
	// QueueSize bounds the records waiting between the NFLOG read loop and
	// the folding (default 4096); records beyond it are counted as lost.
	QueueSize int
	// ReadBuffer is the NFLOG socket's receive buffer in bytes (default
	// 1 MiB, capped by the kernel at net.core.rmem_max).
	ReadBuffer int
	// RecentSize is the number of lines Recent returns at most (default 100).
	RecentSize int
	// Resolver names pods and policies; nil leaves lines with IPs and ports.
	Resolver Resolver
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
	// Clock defaults to the system clock.
	Clock Clock
	Log   logr.Logger
	// Retry is how long the log waits before binding NFLOG or opening the
	// output again after a failure (default 5 s). Neither failure stops
	// Run: see Ready.
	Retry time.Duration
	// OnReadyChange, when set, is called (from the pipeline's goroutines)
	// whenever what Ready reports changes.
	OnReadyChange func()
	// OnLines, when set, receives every batch of lines as they are written
	// to the file (whether or not that write succeeds); it must not block
	// and may keep the slice.
	OnLines func([]Event)
}

const (
	defaultMaxSize    = 100 << 20
	defaultMaxFiles   = 5
	defaultWindow     = time.Second
	defaultQueueSize  = 4096
	defaultReadBuffer = 1 << 20
	defaultRecentSize = 100
	defaultRetry      = 5 * time.Second
	// maxOpenFlows bounds the flows being folded; past it every open flow is
	// written early.
	maxOpenFlows = 4096
	// writeQueue bounds the batches of lines waiting for the writer.
	writeQueue = 16
	// writeChunk is the size past which buffered lines are written.
	writeChunk = 64 << 10
)

// Totals counts what a Logger has written since it started.
type Totals struct {
	// Drops and AuditEvents count logged packets (after the dataplane's
	// rate limit) in drop and audit lines.
	Drops, AuditEvents uint64
	// Lost counts records in lost lines.
	Lost uint64
}

// Logger is the audit pipeline: NFLOG read loop -> decoding -> folding ->
// names and policies -> JSON lines and metrics. Three goroutines keep the
// stages apart: the read loop only copies records into a bounded queue,
// the fold loop decodes and folds them, and the writer calls the Resolver
// and writes. Recent, Totals and ReportRateLimited are safe to call while
// Run runs.
type Logger struct {
	cfg     Config
	log     logr.Logger
	metrics *metrics
	losses  *losses
	src     source
	tick    time.Duration
	started atomic.Bool

	mu         sync.Mutex
	recent     []Event // ring of the last lines, oldest at recentNext once full
	recentNext int
	totals     Totals

	writeFailing bool // writer goroutine only
	health       health
}

// New checks cfg, applies defaults and registers the metrics.
func New(cfg Config) (*Logger, error) {
	if cfg.Output == "" {
		return nil, errors.New("audit log output is empty")
	}
	if cfg.MaxSize == 0 {
		cfg.MaxSize = defaultMaxSize
	}
	if cfg.MaxFiles <= 0 {
		cfg.MaxFiles = defaultMaxFiles
	}
	if cfg.Window <= 0 {
		cfg.Window = defaultWindow
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = defaultQueueSize
	}
	if cfg.ReadBuffer <= 0 {
		cfg.ReadBuffer = defaultReadBuffer
	}
	if cfg.RecentSize <= 0 {
		cfg.RecentSize = defaultRecentSize
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Retry <= 0 {
		cfg.Retry = defaultRetry
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("registering audit metrics: %w", err)
	}
	l := &Logger{
		cfg:     cfg,
		log:     cfg.Log,
		metrics: m,
		losses:  &losses{metrics: m},
		src:     &nflogSource{group: cfg.Group, netNS: cfg.NetNS, readBuffer: cfg.ReadBuffer, log: cfg.Log},
		tick:    min(max(cfg.Window/4, 10*time.Millisecond), 250*time.Millisecond),
	}
	l.health.onChange = cfg.OnReadyChange
	l.health.ready = func(ok bool) { m.setReady(ok) }
	m.setReady(true)
	return l, nil
}

// Run reads NFLOG and writes the log until ctx is done, then writes the
// lines still being folded and returns. An NFLOG group that cannot be
// bound or read, and an output that cannot be opened or written, do not
// stop it: Ready says so, and both are tried again every Retry. Run may be
// called once.
func (l *Logger) Run(ctx context.Context) error {
	if !l.started.CompareAndSwap(false, true) {
		return errors.New("audit logger already started")
	}
	out := &lazyOutput{
		open: func() (io.WriteCloser, error) {
			w, err := openOutput(l.cfg.Output, l.cfg.MaxSize, l.cfg.MaxFiles, func(err error) {
				l.log.Error(err, "Rotating audit log failed, appending to the current file", "path", l.cfg.Output)
			})
			if err != nil {
				return nil, fmt.Errorf("opening audit log %s: %w", l.cfg.Output, err)
			}
			return w, nil
		},
		retry:  l.cfg.Retry,
		report: l.health.setOutput,
	}
	if err := out.ensure(); err != nil {
		l.log.Error(err, "Cannot open the audit log; counting lines as lost until it opens", "retryEvery", l.cfg.Retry)
	}
	defer func() {
		if err := out.Close(); err != nil {
			l.log.Error(err, "Closing audit log failed", "path", l.cfg.Output)
		}
	}()

	records := make(chan record, l.cfg.QueueSize)
	in := &intake{clock: l.cfg.Clock, out: records, losses: l.losses, log: l.log}
	batches := make(chan []flow, writeQueue)
	written := make(chan struct{})
	go func() {
		defer close(written)
		l.writeLoop(out, batches)
	}()

	srcCtx, stopSource := context.WithCancel(ctx)
	defer stopSource()
	srcDone := make(chan error, 1)
	in.bound = func() { l.health.setSource(nil) }
	go func() { srcDone <- l.runSource(srcCtx, in) }()
	l.log.Info("Starting audit log", "node", l.cfg.Node, "group", l.cfg.Group, "output", l.cfg.Output, "window", l.cfg.Window)

	f := newFolder(l.cfg.Window, maxOpenFlows)
	ticker := time.NewTicker(l.tick)
	defer ticker.Stop()
	var batch []flow
	var runErr error
loop:
	for {
		select {
		case rec := <-records:
			batch = append(batch, l.fold(f, rec)...)
		case <-ticker.C:
			now := l.cfg.Clock.Now()
			batch = append(batch, f.expire(now)...)
			batch = append(batch, l.lostFlows(now)...)
			if len(batch) > 0 {
				batches <- batch
				batch = nil
			}
		case err := <-srcDone:
			srcDone = nil
			runErr = err
			break loop
		case <-ctx.Done():
			break loop
		}
	}

	// Stop the source, then fold what it already queued and write
	// everything still open.
	stopSource()
	if srcDone != nil {
		runErr = <-srcDone
	}
	in.close()
	for drained := false; !drained; {
		select {
		case rec := <-records:
			batch = append(batch, l.fold(f, rec)...)
		default:
			drained = true
		}
	}
	now := l.cfg.Clock.Now()
	batch = append(batch, f.closeAll()...)
	batch = append(batch, l.lostFlows(now)...)
	if len(batch) > 0 {
		batches <- batch
	}
	close(batches)
	<-written
	if runErr != nil {
		l.log.Error(runErr, "Audit log stopped")
		return runErr
	}
	l.log.Info("Audit log stopped")
	return nil
}

// runSource runs the NFLOG source until ctx ends, binding it again after
// every failure.
func (l *Logger) runSource(ctx context.Context, in *intake) error {
	var last string
	for {
		err := l.src.run(ctx, in)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = errors.New("NFLOG source stopped")
		}
		l.health.setSource(err)
		if err.Error() != last {
			l.log.Error(err, "Audit log cannot read NFLOG; packets are still dropped, but not logged, until it can", "retryEvery", l.cfg.Retry)
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(l.cfg.Retry):
		}
	}
}

// ReportRateLimited adds n packets that the dataplane's in-kernel rate
// limit kept from being logged, for the agent to call when the dataplane
// counts them. They appear in the next lost line with reason "ratelimit".
func (l *Logger) ReportRateLimited(n uint64) {
	l.losses.add(LostRateLimit, n)
}

// Recent returns the last lines written (at most Config.RecentSize), oldest
// first.
func (l *Logger) Recent() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Event, 0, len(l.recent))
	out = append(out, l.recent[l.recentNext:]...)
	out = append(out, l.recent[:l.recentNext]...)
	for i := range out {
		out[i].Policies = slices.Clone(out[i].Policies)
	}
	return out
}

// RecentCapacity is the number of lines Recent returns at most: when Recent
// returns that many, older lines have been forgotten.
func (l *Logger) RecentCapacity() int { return l.cfg.RecentSize }

// Totals returns what has been written since the Logger started.
func (l *Logger) Totals() Totals {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.totals
}

// fold decodes a record and folds it, returning the flows that closed.
func (l *Logger) fold(f *folder, rec record) []flow {
	fl, err := l.decode(rec)
	if err != nil {
		l.losses.add(LostMalformed, 1)
		l.log.V(1).Info("Ignoring NFLOG record", "reason", err.Error(), "prefix", rec.prefix)
		return nil
	}
	return f.add(rec.seen, fl)
}

func (l *Logger) decode(rec record) (flow, error) {
	p, err := ParsePrefix(rec.prefix)
	if err != nil {
		return flow{}, err
	}
	pkt, err := ParsePacket(rec.payload)
	if err != nil {
		return flow{}, err
	}
	ev := Event{
		Time: rec.seen.UTC(), Node: l.cfg.Node, Action: p.Action, Direction: p.Direction,
		Protocol: pkt.Protocol, Src: Endpoint{IP: pkt.Src}, Dst: Endpoint{IP: pkt.Dst},
	}
	if pkt.HasPorts {
		ev.Src.Port, ev.Dst.Port = pkt.SrcPort, pkt.DstPort
	}
	fl := flow{ev: ev, podKey: p.PodKey}
	if r := l.cfg.Resolver; r != nil {
		// An in-memory lookup: the policies in force when the packet was read.
		if ns, name, policies, ok := r.LocalPod(p.PodKey, p.Direction); ok {
			fl.local = &localPod{namespace: ns, name: name, policies: policies}
		}
	}
	return fl, nil
}

// lostFlows turns the losses counted since the last call into lost lines.
func (l *Logger) lostFlows(now time.Time) []flow {
	var out []flow
	for i, n := range l.losses.take() {
		if n > 0 {
			out = append(out, flow{ev: Event{
				Time: now.UTC(), Node: l.cfg.Node, Action: ActionLost, Reason: lostReasons[i], Count: n,
			}})
		}
	}
	return out
}

type peerName struct {
	namespace, name string
	ok              bool
}

// writeLoop names pods and policies, writes the lines and counts them.
func (l *Logger) writeLoop(out *lazyOutput, batches <-chan []flow) {
	var buf bytes.Buffer
	var evs []Event // the lines in buf
	// An output that could not be opened is tried again even when no line
	// is waiting, so that Ready recovers with the disk.
	retry := time.NewTicker(l.cfg.Retry)
	defer retry.Stop()
	for {
		var batch []flow
		select {
		case b, ok := <-batches:
			if !ok {
				return
			}
			batch = b
		case <-retry.C:
			if out.w == nil {
				_ = out.ensure()
			}
			continue
		}
		peers := make(map[netip.Addr]peerName)
		var handed []Event
		if l.cfg.OnLines != nil {
			handed = make([]Event, 0, len(batch))
		}
		for i := range batch {
			ev := l.enrich(&batch[i], peers)
			if handed != nil {
				handed = append(handed, ev)
			}
			b, err := json.Marshal(ev)
			if err != nil {
				l.losses.add(LostWrite, 1)
				l.log.Error(err, "Encoding audit log line failed")
				continue
			}
			buf.Write(b)
			buf.WriteByte('\n')
			evs = append(evs, ev)
			if buf.Len() >= writeChunk {
				l.write(out, &buf, evs)
				evs = evs[:0]
			}
		}
		l.write(out, &buf, evs)
		evs = evs[:0]
		if len(handed) > 0 {
			l.cfg.OnLines(handed)
		}
	}
}

// write writes buf, which holds the lines of evs, and counts them as
// written or lost.
func (l *Logger) write(out io.Writer, buf *bytes.Buffer, evs []Event) {
	if buf.Len() == 0 {
		return
	}
	_, err := out.Write(buf.Bytes())
	buf.Reset()
	if err != nil {
		l.losses.add(LostWrite, uint64(len(evs)))
		if !l.writeFailing {
			l.log.Error(err, "Writing audit log failed, counting lines as lost until it recovers", "path", l.cfg.Output)
		}
		l.writeFailing = true
		return
	}
	if l.writeFailing {
		l.log.Info("Writing audit log recovered", "path", l.cfg.Output)
		l.writeFailing = false
	}
	for _, ev := range evs {
		l.account(ev)
	}
}

// enrich names the pods of a flow and its policies.
func (l *Logger) enrich(fl *flow, peers map[netip.Addr]peerName) Event {
	ev := fl.ev
	r := l.cfg.Resolver
	if ev.Action == ActionLost || r == nil {
		return ev
	}
	local, remote := &ev.Dst, &ev.Src
	if ev.Direction == Egress {
		local, remote = &ev.Src, &ev.Dst
	}
	if fl.local != nil {
		local.Namespace, local.Pod = fl.local.namespace, fl.local.name
		ev.Policies = slices.Clone(fl.local.policies)
	} else {
		l.peer(local, peers)
	}
	l.peer(remote, peers)
	return ev
}

func (l *Logger) peer(e *Endpoint, peers map[netip.Addr]peerName) {
	if !e.IP.IsValid() {
		return
	}
	p, seen := peers[e.IP]
	if !seen {
		p.namespace, p.name, p.ok = l.cfg.Resolver.Peer(e.IP)
		peers[e.IP] = p
	}
	if p.ok {
		e.Namespace, e.Pod = p.namespace, p.name
	}
}

// account counts a written line in metrics, totals and recent lines.
func (l *Logger) account(ev Event) {
	if ev.Action != ActionLost {
		l.metrics.observe(&ev)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch ev.Action {
	case ActionDrop:
		l.totals.Drops += ev.Count
	case ActionAudit:
		l.totals.AuditEvents += ev.Count
	case ActionLost:
		l.totals.Lost += ev.Count
	}
	if len(l.recent) < l.cfg.RecentSize {
		l.recent = append(l.recent, ev)
		return
	}
	l.recent[l.recentNext] = ev
	l.recentNext = (l.recentNext + 1) % len(l.recent)
}
