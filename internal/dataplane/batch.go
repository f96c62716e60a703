package dataplane

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// batchConn is an nftables connection whose batches go out on a netlink
// socket of its own, with one acknowledgement per batch instead of one per
// message.
//
// google/nftables (v0.3.0) asks the kernel to acknowledge every message
// and to echo every rule back, then reads each reply with two system
// calls: a table of 20,000 rules came back as 40,000 messages, and reading
// them took a fifth of a cold start (see docs/benchmarks.md). The library
// builds the messages as before; batchConn receives them through the
// library's dial hook, clears the acknowledge and echo flags, asks for an
// acknowledgement of the batch's last message only, sends the batch, and
// reads until that acknowledgement or an error. The kernel reports every
// failing message whatever its flags, and acknowledges after it has
// committed or aborted the whole batch, so the outcome is the same as
// before; this is also how nft itself talks to the kernel.
type batchConn struct {
	*nftables.Conn
	out *batchSocket
}

// dialBatchConn opens a batch connection in the network namespace fd
// refers to, with the given socket options.
func dialBatchConn(netnsFD int, opts ...nftables.SockOption) (*batchConn, error) {
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFD})
	if err != nil {
		return nil, fmt.Errorf("opening netlink socket: %w", err)
	}
	for _, opt := range opts {
		if err := opt(nl); err != nil {
			nl.Close()
			return nil, fmt.Errorf("setting socket options: %w", err)
		}
	}
	out := &batchSocket{nl: nl, netns: netnsFD, opts: opts}
	c, err := nftables.New(nftables.AsLasting(), nftables.WithTestDial(out.exchange))
	if err != nil {
		nl.Close()
		return nil, err
	}
	return &batchConn{Conn: c, out: out}, nil
}

// Flush sends the queued messages as one batch and reports its outcome.
func (c *batchConn) Flush() error {
	if err := c.Conn.Flush(); err != nil {
		return err
	}
	return c.out.result()
}

// CloseLasting closes the connection and its socket.
func (c *batchConn) CloseLasting() error {
	return errors.Join(c.Conn.CloseLasting(), c.out.close())
}

// batchSocket sends the batches handed to exchange and keeps the outcome
// of the last one for Flush.
type batchSocket struct {
	mu     sync.Mutex
	nl     *netlink.Conn // nil once closed
	netns  int
	opts   []nftables.SockOption
	closed bool
	// stale is set after a failed batch: replies to it may still be on
	// their way, so the next batch goes out on a new socket.
	stale bool
	err   error
}

// batchTimeout bounds the wait for the kernel's answer to one batch.
const batchTimeout = 2 * time.Minute

// ack is what the library reads for each message it sent: the outcome is
// reported by Flush, not through the library.
var ack = []netlink.Message{{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 4)}}

// exchange is the library's dial hook: called with a batch when it sends,
// and with nil when it reads a reply.
func (s *batchSocket) exchange(req []netlink.Message) ([]netlink.Message, error) {
	if req == nil {
		return ack, nil
	}
	err := s.send(req)
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
	return nil, nil
}

func (s *batchSocket) result() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.err
	s.err = nil
	return err
}

func (s *batchSocket) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.nl == nil {
		return nil
	}
	err := s.nl.Close()
	s.nl = nil
	return err
}

// socket returns the socket to send the next batch on, opening a new one
// after a failed batch.
func (s *batchSocket) socket() (*netlink.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errClosed
	}
	if s.stale && s.nl != nil {
		_ = s.nl.Close()
		s.nl = nil
	}
	if s.nl == nil {
		nl, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: s.netns})
		if err != nil {
			return nil, fmt.Errorf("opening netlink socket: %w", err)
		}
		for _, opt := range s.opts {
			if err := opt(nl); err != nil {
				nl.Close()
				return nil, fmt.Errorf("setting socket options: %w", err)
			}
		}
		s.nl, s.stale = nl, false
	}
	return s.nl, nil
}

// send sends one batch (batch begin, messages, batch end) and waits for
// the acknowledgement of its last message, or the first error.
func (s *batchSocket) send(req []netlink.Message) (err error) {
	nl, err := s.socket()
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			s.mu.Lock()
			s.stale = true
			s.mu.Unlock()
		}
	}()
	if len(req) < 3 {
		return fmt.Errorf("batch of %d messages: want begin, messages and end", len(req))
	}
	msgs := make([]netlink.Message, len(req))
	copy(msgs, req)
	last := len(msgs) - 2
	for i := 1; i <= last; i++ {
		msgs[i].Header.Flags &^= netlink.Acknowledge | unix.NLM_F_ECHO
	}
	msgs[last].Header.Flags |= netlink.Acknowledge
	sent, err := nl.SendMessages(msgs)
	if err != nil {
		return fmt.Errorf("sending batch: %w", err)
	}
	want := sent[last].Header.Sequence
	// The kernel answers once it has committed or aborted the batch, in
	// well under a second for a million elements; a socket that stays
	// silent far longer is reported rather than waited on forever.
	if err := nl.SetReadDeadline(time.Now().Add(batchTimeout)); err != nil {
		return fmt.Errorf("setting a deadline on the netlink socket: %w", err)
	}
	for {
		replies, err := nl.Receive()
		if err != nil {
			// The kernel reported a failing message (the batch was
			// aborted), or the socket failed.
			return err
		}
		for _, m := range replies {
			if m.Header.Type == netlink.Error && m.Header.Sequence == want {
				return nil
			}
		}
	}
}
