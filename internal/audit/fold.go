package audit

import (
	"cmp"
	"net/netip"
	"slices"
	"time"
)

// flowKey identifies the packets folded into one line. The source port is
// left out on purpose: retries and scans from many ephemeral ports toward
// the same destination are one line.
type flowKey struct {
	action    Action
	direction Direction
	protocol  Protocol
	src, dst  netip.Addr
	dstPort   uint16
	podKey    string
}

// flow is a line in the making: the event (not yet enriched with names and
// policies) and the pod key that finds its local pod.
type flow struct {
	ev     Event
	podKey string
	// local is the local pod and the policies isolating it as they were
	// when the packet was read: the rule set may change before the line is
	// written, and the line must name the policies that dropped it.
	local *localPod
}

type localPod struct {
	namespace, name string
	policies        []string
}

type pendingFlow struct {
	flow
	opened time.Time // when the window opened, by the pipeline's clock
	order  uint64    // arrival order, for a stable output order
}

// folder folds repeats of a flow within a window into one flow with a count.
// A window opens at a flow's first packet and closes window later; packets
// are placed by the time they were read. folder is pure and not safe for
// concurrent use.
type folder struct {
	window  time.Duration
	maxOpen int
	open    map[flowKey]*pendingFlow
	next    uint64
}

func newFolder(window time.Duration, maxOpen int) *folder {
	return &folder{window: window, maxOpen: maxOpen, open: make(map[flowKey]*pendingFlow)}
}

func keyOf(f flow) flowKey {
	return flowKey{
		action: f.ev.Action, direction: f.ev.Direction, protocol: f.ev.Protocol,
		src: f.ev.Src.IP, dst: f.ev.Dst.IP, dstPort: f.ev.Dst.Port, podKey: f.podKey,
	}
}

// add folds a packet read at now into its flow. It returns the flows that
// closed as a result: the packet's own earlier flow when its window has
// passed, or every open flow when too many are open.
func (f *folder) add(now time.Time, fl flow) []flow {
	k := keyOf(fl)
	var closed []flow
	if p, ok := f.open[k]; ok {
		if now.Sub(p.opened) < f.window {
			p.ev.Count++
			return nil
		}
		closed = append(closed, p.flow)
		delete(f.open, k)
	}
	if len(f.open) >= f.maxOpen {
		closed = append(closed, f.closeAll()...)
	}
	fl.ev.Count = 1
	f.open[k] = &pendingFlow{flow: fl, opened: now, order: f.next}
	f.next++
	return closed
}

// expire closes the flows whose window has passed at now, oldest first.
func (f *folder) expire(now time.Time) []flow {
	return f.take(func(p *pendingFlow) bool { return now.Sub(p.opened) >= f.window })
}

// closeAll closes every open flow, oldest first.
func (f *folder) closeAll() []flow {
	return f.take(func(*pendingFlow) bool { return true })
}

func (f *folder) take(match func(*pendingFlow) bool) []flow {
	var ps []*pendingFlow
	for k, p := range f.open {
		if match(p) {
			ps = append(ps, p)
			delete(f.open, k)
		}
	}
	slices.SortFunc(ps, func(a, b *pendingFlow) int { return cmp.Compare(a.order, b.order) })
	out := make([]flow, len(ps))
	for i, p := range ps {
		out[i] = p.flow
	}
	return out
}

// len returns the number of open flows.
func (f *folder) len() int { return len(f.open) }
