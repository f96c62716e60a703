package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/florianl/go-nflog/v2"
	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
)

const (
	// copyRange is how much of each packet the kernel copies to us: the IP
	// header, IPv6 extension headers and the start of the transport header.
	copyRange = 256
	// kernelFlushTimeout is how long (in 1/100 s) the kernel may hold logged
	// packets to send them in one batch: it bounds how late a record is read
	// (lines are timed by when their first packet was read, as the kernel
	// timestamps only some packets).
	kernelFlushTimeout = 1
)

// record is one logged packet as read from NFLOG.
type record struct {
	prefix  string
	payload []byte
	// seen is when the record was read, by the pipeline's clock.
	seen time.Time
}

// source delivers records to an intake until ctx is done.
type source interface {
	run(ctx context.Context, in *intake) error
}

// losses counts lost records by reason: a running total for metrics and a
// pending count for the next lost lines. It is safe for concurrent use.
type losses struct {
	pending [len(lostReasons)]atomic.Uint64 // indexed like lostReasons
	metrics *metrics
}

func (l *losses) add(r LostReason, n uint64) {
	if n == 0 {
		return
	}
	for i, rr := range lostReasons {
		if rr == r {
			l.pending[i].Add(n)
			l.metrics.lost.WithLabelValues(string(r)).Add(float64(n))
			return
		}
	}
}

// take returns and resets the pending counts, indexed like lostReasons.
func (l *losses) take() [len(lostReasons)]uint64 {
	var out [len(lostReasons)]uint64
	for i := range lostReasons {
		out[i] = l.pending[i].Swap(0)
	}
	return out
}

// intake is the NFLOG read loop's side of the pipeline: it copies each
// record, checks the sequence numbers and hands the record on without ever
// blocking. Its methods other than close run on the read loop's goroutine.
type intake struct {
	clock  Clock
	out    chan<- record
	losses *losses
	log    logr.Logger
	closed atomic.Bool

	// Sequence numbers are per group, start at 0 when the group is bound and
	// count every packet the kernel logged, including those it then failed
	// to deliver: a gap is a count of records lost on the socket.
	seqSeen bool
	nextSeq uint32
	// bound, when set, is called once the source reads its group.
	bound func()
}

// deliver takes one record from the read loop.
func (in *intake) deliver(rec record, seq *uint32) {
	if seq != nil {
		in.checkSeq(*seq)
	}
	select {
	case in.out <- rec:
	default:
		in.losses.add(LostQueue, 1)
	}
}

func (in *intake) checkSeq(seq uint32) {
	in.seqSeen = true
	gap := seq - in.nextSeq // modulo 2^32
	if gap >= 1<<31 {
		return // behind what we expected: a duplicate or reordering, not a loss
	}
	in.losses.add(LostBuffer, uint64(gap))
	in.nextSeq = seq + 1
}

// overrun notes an ENOBUFS on the socket. The records it lost show up as a
// sequence gap at the next record; without sequence numbers it counts as
// one lost record, a lower bound.
func (in *intake) overrun() {
	in.losses.metrics.overruns.Inc()
	if !in.seqSeen {
		in.losses.add(LostBuffer, 1)
	}
	in.log.V(1).Info("NFLOG socket receive buffer overrun")
}

// hook adapts go-nflog's callback to deliver.
func (in *intake) hook(a nflog.Attribute) int {
	if in.closed.Load() {
		return 1
	}
	rec := record{seen: in.clock.Now()}
	if a.Prefix != nil {
		rec.prefix = *a.Prefix
	}
	if a.Payload != nil {
		rec.payload = bytes.Clone(*a.Payload)
	}
	in.deliver(rec, a.Seq)
	return 0
}

func (in *intake) close() { in.closed.Store(true) }

// nflogSource reads an NFLOG group.
type nflogSource struct {
	group      uint16
	netNS      int
	readBuffer int
	log        logr.Logger
}

func (s *nflogSource) run(ctx context.Context, in *intake) error {
	s.log.V(1).Info("Opening NFLOG group", "group", s.group, "readBuffer", s.readBuffer)
	nf, err := nflog.Open(&nflog.Config{
		NetNS:    s.netNS,
		Group:    s.group,
		Copymode: nflog.CopyPacket,
		Bufsize:  copyRange,
		Flags:    nflog.FlagSeq,
		Timeout:  kernelFlushTimeout,
		Logger:   nflogLogger{s.log},
	})
	if err != nil {
		return fmt.Errorf("opening NFLOG group %d: %w", s.group, err)
	}
	defer func() { _ = nf.Close() }()
	if s.readBuffer > 0 {
		// The kernel caps this at net.core.rmem_max.
		if err := nf.Con.SetReadBuffer(s.readBuffer); err != nil {
			return fmt.Errorf("setting NFLOG receive buffer: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	failed := make(chan error, 1)
	onError := func(err error) int {
		switch {
		case ctx.Err() != nil:
			return 1
		case errors.Is(err, unix.ENOBUFS):
			in.overrun()
			return 0
		case isTimeout(err):
			return 0
		}
		select {
		case failed <- err:
		default:
		}
		return 1
	}
	if err := nf.RegisterWithErrorFunc(ctx, in.hook, onError); err != nil {
		return fmt.Errorf("binding NFLOG group %d: %w", s.group, err)
	}
	if in.bound != nil {
		in.bound()
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-failed:
		return fmt.Errorf("reading NFLOG group %d: %w", s.group, err)
	}
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// nflogLogger gives go-nflog's own messages to logr at debug verbosity:
// the errors it reports are also returned to us.
type nflogLogger struct{ log logr.Logger }

func (l nflogLogger) Debugf(format string, args ...any) {
	l.log.V(2).Info("NFLOG library message", "message", fmt.Sprintf(format, args...))
}

func (l nflogLogger) Errorf(format string, args ...any) {
	l.log.V(1).Info("NFLOG library error", "message", fmt.Sprintf(format, args...))
}
