package audit

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/florianl/go-nflog/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newTestIntake(t *testing.T, queue int) (*intake, chan record, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan record, queue)
	return &intake{clock: &fakeClock{now: t0}, out: ch, losses: &losses{metrics: m}}, ch, reg
}

func pending(in *intake) map[LostReason]uint64 {
	out := make(map[LostReason]uint64)
	for i, n := range in.losses.take() {
		if n > 0 {
			out[lostReasons[i]] = n
		}
	}
	return out
}

func seqp(n uint32) *uint32 { return &n }

func TestIntakeSequenceGaps(t *testing.T) {
	in, _, reg := newTestIntake(t, 100)
	for _, s := range []uint32{0, 1, 2} {
		in.deliver(record{}, seqp(s))
	}
	if got := pending(in); len(got) != 0 {
		t.Fatalf("losses %v without a gap", got)
	}
	in.deliver(record{}, seqp(5)) // 3 and 4 lost
	in.deliver(record{}, seqp(6))
	in.deliver(record{}, seqp(4)) // late or duplicate: not a loss
	in.deliver(record{}, seqp(7))
	if got := pending(in); len(got) != 1 || got[LostBuffer] != 2 {
		t.Fatalf("losses %v, want buffer: 2", got)
	}
	if got := counterValues(t, reg, "nftguard_audit_records_lost_total", "reason"); got["buffer"] != 2 {
		t.Errorf("metric = %v", got)
	}
}

func TestIntakeFirstRecordGap(t *testing.T) {
	in, _, _ := newTestIntake(t, 100)
	in.deliver(record{}, seqp(3)) // the group's 0, 1 and 2 never arrived
	if got := pending(in); got[LostBuffer] != 3 {
		t.Fatalf("losses %v, want buffer: 3", got)
	}
}

func TestIntakeSequenceWraps(t *testing.T) {
	in, _, _ := newTestIntake(t, 100)
	in.nextSeq, in.seqSeen = 0xfffffffe, true
	for _, s := range []uint32{0xfffffffe, 0xffffffff, 0, 1} {
		in.deliver(record{}, seqp(s))
	}
	in.deliver(record{}, seqp(3))
	if got := pending(in); len(got) != 1 || got[LostBuffer] != 1 {
		t.Fatalf("losses %v, want buffer: 1", got)
	}
}

func TestIntakeQueueFullNeverBlocks(t *testing.T) {
	in, ch, _ := newTestIntake(t, 2)
	for i := range 5 {
		in.deliver(record{prefix: fmt.Sprint(i)}, seqp(uint32(i)))
	}
	if got := pending(in); len(got) != 1 || got[LostQueue] != 3 {
		t.Fatalf("losses %v, want queue: 3", got)
	}
	if len(ch) != 2 || (<-ch).prefix != "0" {
		t.Error("queue does not hold the first records")
	}
}

func TestIntakeOverrun(t *testing.T) {
	in, _, reg := newTestIntake(t, 10)
	// Without sequence numbers an overrun counts as one lost record.
	in.overrun()
	if got := pending(in); got[LostBuffer] != 1 {
		t.Fatalf("losses %v, want buffer: 1", got)
	}
	// With them, the next gap counts the records.
	in.deliver(record{}, seqp(0))
	in.overrun()
	in.deliver(record{}, seqp(10))
	if got := pending(in); got[LostBuffer] != 9 {
		t.Fatalf("losses %v, want buffer: 9", got)
	}
	if got := counterValues(t, reg, "nftguard_audit_socket_overruns_total", ""); got[""] != 2 {
		t.Errorf("overruns = %v, want 2", got)
	}
}

func TestIntakeHook(t *testing.T) {
	in, ch, _ := newTestIntake(t, 10)
	if in.hook(nflog.Attribute{}) != 0 {
		t.Fatal("hook stopped on an empty record")
	}
	if r := <-ch; r.prefix != "" || r.payload != nil || !r.seen.Equal(t0) {
		t.Errorf("empty record = %+v", r)
	}

	prefix := "nftguard:drop:in:5356176b92c3"
	payload := []byte{0x45, 1, 2}
	in.hook(nflog.Attribute{Prefix: &prefix, Payload: &payload, Seq: seqp(1)})
	payload[0] = 0 // the library may reuse its buffer
	r := <-ch
	if r.prefix != prefix || r.payload[0] != 0x45 || !r.seen.Equal(t0) {
		t.Errorf("record = %+v", r)
	}
	in.close()
	if in.hook(nflog.Attribute{}) == 0 || len(ch) != 0 {
		t.Error("hook delivered after close")
	}
}

func TestIsTimeout(t *testing.T) {
	if !isTimeout(fmt.Errorf("receive: %w", os.ErrDeadlineExceeded)) {
		t.Error("deadline not a timeout")
	}
	if isTimeout(unix.ENOBUFS) || isTimeout(errors.New("x")) {
		t.Error("timeout false positive")
	}
}
