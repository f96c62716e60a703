package nftnl

import (
	"errors"
	"fmt"
	"sync"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// Limits of what is sent at once.
const (
	// maxMessageBytes bounds the element list of one netlink message: its
	// attribute length is 16 bits, and a longer list is silently cut.
	maxMessageBytes = 48 << 10
	// defaultMaxBatchBytes bounds one transaction (about 1.3 million IPv4
	// elements). The socket buffers are sized for it, so the kernel never
	// answers EMSGSIZE or ENOBUFS.
	defaultMaxBatchBytes = 32 << 20
	// receiveBufferBytes holds the kernel's answers to a batch: its
	// acknowledgement and the errors of failing messages. Were it ever too
	// small, the kernel would have committed the batch before the ENOBUFS,
	// and the full reconcile that follows any failure would find the table
	// already current.
	receiveBufferBytes = 64 << 20
)

// Stats describes the table after an Apply and what the Apply changed.
type Stats struct {
	// Chains, Rules and SetElements count the table as applied (an
	// interval counts as one element).
	Chains, Rules, SetElements int
	// Changes counts what was sent.
	Changes model.Changes
	// Full is set when the Apply reconciled against the table read from
	// the kernel (first Apply, or after a failure or detected drift)
	// rather than against the last applied model.
	Full bool
	// Rebuild is set when objects of the wrong shape, or a shared set
	// that had to be replaced by a larger one, forced every rule to be
	// rewritten (still in one transaction).
	Rebuild bool
	// Transactions is the number of netlink transactions sent: 0 when
	// nothing changed, 1 normally (see Programmer).
	Transactions int
}

// Programmer writes table inet nftguard in one network namespace, and
// touches no other table.
//
// Every Apply is one netlink transaction: packets see the old table or the
// new one, never a mix. The one exception is a delta bigger than the batch
// budget (32 MiB, over a million elements) that rewrites no object of the
// wrong shape: then additions to address and endpoint sets are committed
// first, in as many transactions as needed, then one transaction carries
// everything else (chains, rules, maps, interval and port sets, set
// creation and deletion), then removals from address and endpoint sets
// follow. Until the last one commits, those sets hold the union of the old
// and new members; no chain, rule or verdict map is ever half updated.
//
// The first Apply adopts whatever table the kernel holds: it reads it and
// sends only the difference, so a restarted agent never leaves pods
// unprotected and never drops established flows. Later Applies diff against
// the last applied model and read only the chains whose rules change (for
// their handles). A failed Apply retries at once as a full reconcile
// against the kernel; if that fails too, the next Apply starts from the
// kernel again.
type Programmer struct {
	mu    sync.Mutex
	netns int // our duplicate of the namespace fd; -1 once closed
	conn  sender
	rd    *reader
	// newConn opens the write connection; replaced in unit tests.
	newConn func() (sender, error)
	// seq numbers the messages of the next batch.
	seq uint32

	applied *model.Table
	// capacities are the declared sizes of the sized sets in the kernel,
	// read back on every full reconcile.
	capacities    map[string]uint32
	lastPlan      *model.Plan
	maxBatchBytes int
	closed        bool
	// ports are the port ids of the open write sockets (see Owns).
	ports portSet
}

var errClosed = errors.New("dataplane: programmer is closed")

// NewProgrammer returns a Programmer for the process's own network
// namespace. Its sockets are opened where the process is, without setns:
// entering a namespace needs CAP_SYS_ADMIN, which the agent's container
// does not have (it has NET_ADMIN only).
func NewProgrammer() (*Programmer, error) {
	return newProgrammer(0)
}

// NewProgrammerInNetNS returns a Programmer for the network namespace fd
// refers to (entering it needs CAP_SYS_ADMIN). The Programmer keeps its own
// duplicate of fd.
func NewProgrammerInNetNS(fd int) (*Programmer, error) {
	own, err := unix.Dup(fd)
	if err != nil {
		return nil, fmt.Errorf("duplicating network namespace fd: %w", err)
	}
	unix.CloseOnExec(own)
	return newProgrammer(own)
}

// newProgrammer: own is the namespace fd the Programmer owns, or 0 for the
// process's own namespace (netlink.Config.NetNS 0 enters nothing).
func newProgrammer(own int) (*Programmer, error) {
	var err error
	p := &Programmer{netns: own, rd: &reader{netns: own}, maxBatchBytes: defaultMaxBatchBytes}
	p.newConn = func() (sender, error) {
		return newBatchSocket(own, socketOptions(2*p.maxBatchBytes+(1<<20), receiveBufferBytes), &p.ports)
	}
	if p.conn, err = p.newConn(); err != nil {
		if own > 0 {
			unix.Close(own)
		}
		return nil, fmt.Errorf("opening nftables connection: %w", err)
	}
	return p, nil
}

// socketOptions sizes the socket buffers for whole batches (forcing past
// the sysctl limits, which needs CAP_NET_ADMIN, as nft does) and asks the
// kernel for error messages with its errors. (Not for capped errors:
// github.com/mdlayher/netlink misreads a capped error carrying a message,
// and the error lost its errno.)
func socketOptions(sndbuf, rcvbuf int) func(*netlink.Conn) error {
	return func(c *netlink.Conn) error {
		_ = c.SetOption(netlink.ExtendedAcknowledge, true)
		rc, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sndbuf)
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf)
			}
		}); err != nil {
			return err
		}
		if serr != nil {
			// Without CAP_NET_ADMIN: take what the sysctls allow.
			_ = c.SetWriteBuffer(sndbuf)
			_ = c.SetReadBuffer(rcvbuf)
		}
		return nil
	}
}

// Owns reports whether a change notification with this netlink port id
// (model.Notification.PortID) is of a transaction this Programmer sent: the
// kernel names the socket a batch came on in every notification of it. Safe
// to call from any goroutine.
func (p *Programmer) Owns(portID uint32) bool { return portID != 0 && p.ports.has(portID) }

// Close releases the netlink sockets and the namespace fd.
func (p *Programmer) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	p.rd.close()
	var err error
	if p.conn != nil {
		err = p.conn.close()
		p.conn = nil
	}
	if p.netns > 0 {
		unix.Close(p.netns)
		p.netns = -1
	}
	return err
}

// resetConn replaces the write connection after a failure: a failed Flush
// can leave unread acknowledgements on the socket.
func (p *Programmer) resetConn() {
	p.rd.close()
	if p.closed {
		return
	}
	if p.conn != nil {
		_ = p.conn.close()
	}
	c, err := p.newConn()
	if err != nil {
		p.conn = nil
		return
	}
	p.conn = c
}

// Apply makes the kernel's table equal to desired, sending only the
// difference. desired must not be modified afterwards (the Programmer keeps
// it as the applied model).
func (p *Programmer) Apply(desired *model.Table) (Stats, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return Stats{}, errClosed
	}
	if desired == nil {
		return Stats{}, errors.New("nil table")
	}
	var firstErr error
	if p.applied != nil {
		st, err := p.apply(desired, false)
		if err == nil {
			return st, nil
		}
		firstErr = err
	}
	st, err := p.apply(desired, true)
	if err != nil {
		if firstErr != nil {
			err = fmt.Errorf("%w (after incremental apply failed: %v)", err, firstErr)
		}
		return st, err
	}
	return st, nil
}

func (p *Programmer) apply(desired *model.Table, full bool) (Stats, error) {
	if p.conn == nil {
		p.resetConn()
		if p.conn == nil {
			return Stats{}, errors.New("no nftables connection")
		}
	}
	var base *model.Table
	var err error
	if full {
		base, err = p.rd.readTable()
	} else {
		base, err = p.withHandles(p.applied, desired)
	}
	if err != nil {
		p.applied = nil
		return Stats{Full: full}, err
	}
	if full {
		p.capacities = map[string]uint32{}
		if base != nil {
			for _, s := range base.Sets {
				if s.Capacity != 0 {
					p.capacities[s.Name] = s.Capacity
				}
			}
		}
	}
	pl := model.DiffSized(base, desired, func(name string) uint32 { return p.capacities[name] })
	p.lastPlan = pl
	chains, rules, elems := desired.Counts()
	st := Stats{Chains: chains, Rules: rules, SetElements: elems, Changes: pl.Changes(), Full: full, Rebuild: pl.Rebuild}
	st.Transactions, err = p.execute(pl)
	if err != nil {
		p.applied = nil
		p.resetConn()
		return st, fmt.Errorf("programming table inet %s: %w", model.TableName, err)
	}
	for _, o := range pl.Ops {
		switch o.Kind {
		case model.OpAddSet:
			if o.Capacity != 0 {
				p.capacities[o.Name] = o.Capacity
			} else {
				delete(p.capacities, o.Name)
			}
		case model.OpDelSet:
			delete(p.capacities, o.Name)
		}
	}
	p.applied = desired
	return st, nil
}

// withHandles returns the applied model with, for every chain whose rules
// change, the rules as the kernel holds them (with handles).
func (p *Programmer) withHandles(applied, desired *model.Table) (*model.Table, error) {
	out := &model.Table{Sets: applied.Sets, Chains: make([]*model.Chain, len(applied.Chains))}
	copy(out.Chains, applied.Chains)
	// Index the desired chains once: Table.Chain is a linear search, and
	// calling it per chain made every Apply quadratic in the chains.
	wanted := make(map[string]*model.Chain, len(desired.Chains))
	for _, c := range desired.Chains {
		wanted[c.Name] = c
	}
	for i, c := range out.Chains {
		want := wanted[c.Name]
		if want == nil || want == c || model.SameRules(c.Rules, want.Rules) {
			continue
		}
		got, err := p.rd.rules(c.Name)
		if err != nil {
			return nil, fmt.Errorf("reading chain %s: %w", c.Name, err)
		}
		cc := *c
		cc.Rules = got[c.Name]
		out.Chains[i] = &cc
	}
	return out, nil
}

// Drift lists differences between the kernel's table and the last applied
// model, as the changes that would repair them.
type Drift []string

// Verify compares the kernel's table with the last applied model. When they
// differ (a flushed chain, a deleted element or table, an added rule) it
// returns the differences, and the next Apply reconciles against the kernel
// and repairs them.
func (p *Programmer) Verify() (Drift, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errClosed
	}
	if p.applied == nil {
		return Drift{"no table applied yet, or the last apply failed"}, nil
	}
	got, err := p.rd.readTable()
	if err != nil {
		return nil, err
	}
	pl := model.Diff(got, p.applied)
	if len(pl.Ops) == 0 {
		return nil, nil
	}
	p.applied = nil
	const show = 20
	var d Drift
	for i, o := range pl.Ops {
		if i == show {
			d = append(d, fmt.Sprintf("... and %d more changes", len(pl.Ops)-show))
			break
		}
		d = append(d, o.String())
	}
	return d, nil
}

// Delete removes table inet nftguard (for uninstall). The next Apply
// creates it again.
func (p *Programmer) Delete() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errClosed
	}
	p.applied = nil
	ok, err := p.rd.tableExists()
	if err != nil || !ok {
		return err
	}
	if p.conn == nil {
		p.resetConn()
		if p.conn == nil {
			return errors.New("no nftables connection")
		}
	}
	b := newBatch(p.seq, 0)
	b.delTable()
	if err := p.flush(b); err != nil {
		p.resetConn()
		return fmt.Errorf("deleting table inet %s: %w", model.TableName, err)
	}
	return nil
}

// execute sends a plan, normally as one transaction.
func (p *Programmer) execute(pl *model.Plan) (int, error) {
	if len(pl.Ops) == 0 {
		return 0, nil
	}
	batches := splitPlan(pl, p.maxBatchBytes)
	for i, ops := range batches {
		size := 0
		for _, o := range ops {
			size += opBytes(o)
		}
		b := newBatch(p.seq, size+size/8)
		for _, o := range ops {
			encode(b, o)
		}
		if err := p.flush(b); err != nil {
			if len(batches) > 1 {
				err = fmt.Errorf("transaction %d of %d: %w", i+1, len(batches), err)
			}
			return i, err
		}
	}
	return len(batches), nil
}

// flush sends a batch and numbers the next one after it.
func (p *Programmer) flush(b *batch) error {
	buf, ackSeq, ok, err := b.finish()
	p.seq = b.seq
	if err != nil || !ok {
		return err
	}
	return p.conn.send(buf, ackSeq)
}

// encode adds the messages of one change to a batch.
func encode(b *batch, o model.Op) {
	switch o.Kind {
	case model.OpAddTable:
		b.addTable()
	case model.OpFlushTable:
		b.flushTable()
	case model.OpAddChain:
		b.addChain(o.Chain)
	case model.OpFlushChain:
		b.flushChain(o.Name)
	case model.OpDelChain:
		b.delChain(o.Name)
	case model.OpAddSet:
		id := b.addSet(o.Set, o.Capacity)
		if len(o.Set.Elements) > 0 {
			b.elements(false, o.Set, id, o.Set.Elements)
		}
	case model.OpFlushSet:
		b.flushSet(o.Name)
	case model.OpDelSet:
		b.delSet(o.Name)
	case model.OpAddElements:
		b.elements(false, o.Set, 0, o.Elems)
	case model.OpDelElements:
		b.elements(true, o.Set, 0, o.Elems)
	case model.OpAddRule:
		b.addRule(o.Name, o.Rule, false, 0)
	case model.OpInsertRule:
		b.addRule(o.Name, o.Rule, true, o.Handle)
	case model.OpDelRule:
		b.delRule(o.Name, o.Handle)
	default:
		b.fail(fmt.Errorf("unknown change %d", o.Kind))
	}
}
