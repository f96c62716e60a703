package audit

import (
	"errors"
	"io"
	"sync"
	"time"
)

// Reasons Ready gives when the audit log is not working.
const (
	// ReasonNFLOGUnavailable: the NFLOG group cannot be bound or read
	// (another process holds it, say); drops are still dropped, but not
	// logged, until it can.
	ReasonNFLOGUnavailable = "NFLOGUnavailable"
	// ReasonWriteFailed: the log cannot be opened or written (a full
	// disk, say); lines are counted as lost (reason write) until it can.
	ReasonWriteFailed = "WriteFailed"
)

// health is what the audit log's parts last reported.
type health struct {
	mu       sync.Mutex
	source   error // the NFLOG group could not be bound or read
	output   error // the log could not be opened or written
	onChange func()
	ready    func(bool)
}

func (h *health) set(field *error, err error) {
	h.mu.Lock()
	was := h.source == nil && h.output == nil
	changed := (*field == nil) != (err == nil) || (err != nil && (*field).Error() != err.Error())
	*field = err
	now := h.source == nil && h.output == nil
	onChange, ready := h.onChange, h.ready
	h.mu.Unlock()
	if ready != nil && was != now {
		ready(now)
	}
	if changed && onChange != nil {
		onChange()
	}
}

func (h *health) setSource(err error) { h.set(&h.source, err) }
func (h *health) setOutput(err error) { h.set(&h.output, err) }

// Ready reports whether the audit log is reading NFLOG and writing lines;
// when not, a reason (ReasonNFLOGUnavailable, ReasonWriteFailed) and the
// error.
func (l *Logger) Ready() (ok bool, reason, message string) {
	h := &l.health
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.source != nil:
		return false, ReasonNFLOGUnavailable, h.source.Error()
	case h.output != nil:
		return false, ReasonWriteFailed, h.output.Error()
	}
	return true, "", ""
}

// lazyOutput opens the log output on the first write, and again after a
// failure, at most every retry: a log that cannot be opened or written
// (a full disk) costs the lines written meanwhile, never the agent.
type lazyOutput struct {
	open  func() (io.WriteCloser, error)
	retry time.Duration
	// report is told each write's outcome.
	report func(error)

	w          io.WriteCloser
	lastOpen   time.Time
	openFailed bool
}

// errNotOpen is what a write returns while the output waits to be opened
// again.
var errNotOpen = errors.New("audit log not open; opening it again shortly")

// ensure opens the output unless it is open or was tried less than retry
// ago.
func (o *lazyOutput) ensure() error {
	if o.w != nil {
		return nil
	}
	if !o.lastOpen.IsZero() && time.Since(o.lastOpen) < o.retry {
		return errNotOpen
	}
	o.lastOpen = time.Now()
	w, err := o.open()
	if err != nil {
		o.openFailed = true
		o.report(err)
		return err
	}
	o.w = w
	// A failed open is over; a failed write is over only once a write
	// succeeds (a full disk opens fine).
	if o.openFailed {
		o.openFailed = false
		o.report(nil)
	}
	return nil
}

func (o *lazyOutput) Write(p []byte) (int, error) {
	if err := o.ensure(); err != nil {
		return 0, err
	}
	n, err := o.w.Write(p)
	o.report(err)
	if err != nil {
		// Open it again (after retry): the next file may be writable.
		_ = o.w.Close()
		o.w = nil
	}
	return n, err
}

func (o *lazyOutput) Close() error {
	if o.w == nil {
		return nil
	}
	return o.w.Close()
}
