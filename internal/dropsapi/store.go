package dropsapi

import (
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/dropsapi/wire"
)

// Namer names the pod that owns an address. It must answer from memory:
// the store calls it for every pushed line whose endpoint has no name.
type Namer interface {
	PodByIP(ip netip.Addr) (namespace, name string, ok bool)
}

// StoreConfig bounds a Store. Zero values take the defaults.
type StoreConfig struct {
	// PerNode is the most lines kept for one node (default 4096).
	PerNode int
	// Total is the most lines kept for all nodes together (default
	// 262,144, about 100 MiB); past it the node holding the most loses its
	// oldest.
	Total int
	// Namer names endpoints the agents could not name; nil leaves them.
	Namer Namer
	// Metrics, when set, counts what the store takes in.
	Metrics *Metrics
	// Now defaults to time.Now.
	Now func() time.Time
}

const (
	defaultPerNode = 4096
	defaultTotal   = 1 << 18
	// subscriptionBuffer is how many lines a watch may fall behind before
	// it is ended (the client then lists and watches again).
	subscriptionBuffer = 1024
)

// Store holds the recent lines of every node that pushes, the packets
// counted per policy since it started, and the watches of new lines.
type Store struct {
	cfg     StoreConfig
	started time.Time

	mu     sync.Mutex
	nodes  map[string]*nodeLog
	total  int
	counts map[countKey]uint64
	subs   map[*Subscription]struct{}
}

type nodeLog struct {
	stream string
	next   uint64
	lines  []audit.Event // oldest first from start
	start  int
	// forgotten is the time of the newest line evicted, zero if none.
	forgotten time.Time
}

func (n *nodeLog) len() int { return len(n.lines) - n.start }

func (n *nodeLog) evict(k int) {
	k = min(k, n.len())
	if k <= 0 {
		return
	}
	n.forgotten = n.lines[n.start+k-1].Time
	clear(n.lines[n.start : n.start+k])
	n.start += k
	if n.start > len(n.lines)/2 {
		n.lines = slices.Delete(n.lines, 0, n.start)
		n.start = 0
	}
}

type countKey struct {
	policy, namespace string
	direction         audit.Direction
	action            audit.Action
}

// NewStore returns an empty store.
func NewStore(cfg StoreConfig) *Store {
	if cfg.PerNode <= 0 {
		cfg.PerNode = defaultPerNode
	}
	if cfg.Total <= 0 {
		cfg.Total = defaultTotal
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Store{
		cfg: cfg, started: cfg.Now(),
		nodes: map[string]*nodeLog{}, counts: map[countKey]uint64{}, subs: map[*Subscription]struct{}{},
	}
}

// Started is when the store began counting.
func (s *Store) Started() time.Time { return s.started }

// OwnerNamespace is the namespace a line belongs to: that of the local pod
// whose isolation logged it (the destination for ingress, the source for
// egress). It is empty for lost lines and for pods the agent could not name.
func OwnerNamespace(ev *audit.Event) string {
	switch {
	case ev.Action == audit.ActionLost:
		return ""
	case ev.Direction == audit.Egress:
		return ev.Src.Namespace
	default:
		return ev.Dst.Namespace
	}
}

// Push takes in a batch from node and returns the sequence number it
// expects next. Lines it already holds (by stream and sequence number) are
// skipped, so agents may send a batch again, and to every replica.
func (s *Store) Push(node string, req *wire.PushRequest) uint64 {
	for i := range req.Lines {
		ev := &req.Lines[i]
		ev.Node = node
		if ev.Action != audit.ActionLost {
			s.name(&ev.Src)
			s.name(&ev.Dst)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[node]
	if n == nil {
		n = &nodeLog{}
		s.nodes[node] = n
	}
	if n.stream != req.Stream {
		// The agent restarted: its sequence numbers start again.
		n.stream, n.next = req.Stream, req.First
	}
	if req.First > n.next && s.cfg.Metrics != nil {
		s.cfg.Metrics.gap(req.First - n.next)
	}
	end := req.First + uint64(len(req.Lines))
	for i := range req.Lines {
		if req.First+uint64(i) < n.next {
			continue
		}
		ev := req.Lines[i]
		n.lines = append(n.lines, ev)
		s.total++
		s.count(&ev)
		s.notify(&ev)
	}
	n.next = max(n.next, end)
	if over := n.len() - s.cfg.PerNode; over > 0 {
		n.evict(over)
		s.total -= over
	}
	for s.total > s.cfg.Total {
		s.evictLargest(s.total - s.cfg.Total)
	}
	return n.next
}

// evictLargest removes up to k of the oldest lines of the node holding the
// most, but never more than half of them at once, so that the loss spreads
// over the busiest nodes.
func (s *Store) evictLargest(k int) {
	var big *nodeLog
	for _, n := range s.nodes {
		if big == nil || n.len() > big.len() {
			big = n
		}
	}
	k = min(k, max(1, big.len()/2))
	before := big.len()
	big.evict(k)
	s.total -= before - big.len()
}

func (s *Store) name(e *audit.Endpoint) {
	if e.Namespace != "" || !e.IP.IsValid() || s.cfg.Namer == nil {
		return
	}
	ns, name, ok := s.cfg.Namer.PodByIP(e.IP)
	if !ok {
		if s.cfg.Metrics != nil {
			s.cfg.Metrics.unnamed()
		}
		return
	}
	e.Namespace, e.Pod = ns, name
}

func (s *Store) count(ev *audit.Event) {
	if ev.Action == audit.ActionLost {
		return
	}
	k := countKey{namespace: OwnerNamespace(ev), direction: ev.Direction, action: ev.Action}
	if len(ev.Policies) == 0 {
		s.counts[k] += ev.Count
	}
	for _, p := range ev.Policies {
		k.policy = p
		s.counts[k] += ev.Count
	}
	if s.cfg.Metrics != nil {
		s.cfg.Metrics.observe(ev)
	}
}

// NodeLines is what a Store holds for one node.
type NodeLines struct {
	Node string
	// Lines are those that matched, oldest first.
	Lines []audit.Event
	// Oldest is the time of the oldest line held, matched or not.
	Oldest time.Time
	// Forgotten is the time of the newest line evicted (zero: none).
	Forgotten time.Time
}

// Lines returns, per node, the lines for which keep is true.
func (s *Store) Lines(keep func(*audit.Event) bool) []NodeLines {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]NodeLines, 0, len(s.nodes))
	for node, n := range s.nodes {
		nl := NodeLines{Node: node, Forgotten: n.forgotten}
		held := n.lines[n.start:]
		if len(held) > 0 {
			nl.Oldest = held[0].Time
		}
		for i := range held {
			if keep(&held[i]) {
				ev := held[i]
				ev.Policies = slices.Clone(ev.Policies)
				nl.Lines = append(nl.Lines, ev)
			}
		}
		out = append(out, nl)
	}
	slices.SortFunc(out, func(a, b NodeLines) int {
		switch {
		case a.Node < b.Node:
			return -1
		case a.Node > b.Node:
			return 1
		}
		return 0
	})
	return out
}

// Counts returns the packets counted per policy, namespace, direction and
// action, for the counts where keep is true.
func (s *Store) Counts(keep func(*wire.DropCount) bool) []wire.DropCount {
	s.mu.Lock()
	out := make([]wire.DropCount, 0, len(s.counts))
	for k, v := range s.counts {
		c := wire.DropCount{Policy: k.policy, Namespace: k.namespace, Direction: k.direction, Action: k.action, Packets: v}
		if keep(&c) {
			out = append(out, c)
		}
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b wire.DropCount) int {
		for _, c := range [][2]string{{a.Policy, b.Policy}, {a.Namespace, b.Namespace},
			{string(a.Direction), string(b.Direction)}, {string(a.Action), string(b.Action)}} {
			if c[0] != c[1] {
				if c[0] < c[1] {
					return -1
				}
				return 1
			}
		}
		return 0
	})
	return out
}

// Subscription delivers the lines pushed after it began. C is closed when
// the subscription ends: by Close, or because the reader fell more than a
// buffer behind (then Overflowed is true).
type Subscription struct {
	C          <-chan audit.Event
	c          chan audit.Event
	overflowed bool
	store      *Store
}

// Subscribe starts a subscription to new lines.
func (s *Store) Subscribe() *Subscription {
	c := make(chan audit.Event, subscriptionBuffer)
	sub := &Subscription{C: c, c: c, store: s}
	s.mu.Lock()
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	return sub
}

// Overflowed reports whether the subscription ended because its reader fell
// behind. Call it once C is closed.
func (sub *Subscription) Overflowed() bool {
	sub.store.mu.Lock()
	defer sub.store.mu.Unlock()
	return sub.overflowed
}

// Close ends the subscription.
func (sub *Subscription) Close() {
	s := sub.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.subs[sub]; ok {
		delete(s.subs, sub)
		close(sub.c)
	}
}

func (s *Store) notify(ev *audit.Event) {
	for sub := range s.subs {
		e := *ev
		e.Policies = slices.Clone(ev.Policies)
		select {
		case sub.c <- e:
		default:
			sub.overflowed = true
			delete(s.subs, sub)
			close(sub.c)
		}
	}
}

// PolicyCounts returns the packets policy's isolation dropped and audited,
// in all namespaces and directions, and when the store began counting.
func (s *Store) PolicyCounts(policy string) (dropped, audited uint64, since time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.counts {
		if k.policy != policy {
			continue
		}
		switch k.action {
		case audit.ActionDrop:
			dropped += v
		case audit.ActionAudit:
			audited += v
		}
	}
	return dropped, audited, s.started
}
