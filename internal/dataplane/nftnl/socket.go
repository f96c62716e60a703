package nftnl

import (
	"fmt"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// sender sends encoded batches to the kernel.
type sender interface {
	// send writes one batch and waits for the acknowledgement of the
	// message numbered ackSeq, or for the kernel's first error.
	send(buf []byte, ackSeq uint32) error
	close() error
}

// batchSocket sends batches on a netfilter netlink socket of its own.
// After a failed batch, replies to it may still be on their way, so the
// next batch goes out on a new socket.
type batchSocket struct {
	nl     *netlink.Conn // nil until the first batch, and after a failure
	netns  int
	opts   func(*netlink.Conn) error
	closed bool
	// ports, when set, holds the netlink port id of the open socket: the
	// kernel names it in the notifications of the batches sent on it.
	ports *portSet
}

// portSet is the netlink port ids of a Programmer's open write sockets.
type portSet struct{ m sync.Map }

func (s *portSet) add(id uint32)      { s.m.Store(id, struct{}{}) }
func (s *portSet) remove(id uint32)   { s.m.Delete(id) }
func (s *portSet) has(id uint32) bool { _, ok := s.m.Load(id); return ok }

// closeConn closes the socket and forgets its port id.
func (s *batchSocket) closeConn() error {
	if s.ports != nil {
		s.ports.remove(s.nl.PID())
	}
	err := s.nl.Close()
	s.nl = nil
	return err
}

// batchTimeout bounds the wait for the kernel's answer to one batch.
const batchTimeout = 2 * time.Minute

func newBatchSocket(netnsFD int, opts func(*netlink.Conn) error, ports *portSet) (*batchSocket, error) {
	s := &batchSocket{netns: netnsFD, opts: opts, ports: ports}
	if _, err := s.socket(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *batchSocket) close() error {
	s.closed = true
	if s.nl == nil {
		return nil
	}
	return s.closeConn()
}

// socket returns the socket to send the next batch on.
func (s *batchSocket) socket() (*netlink.Conn, error) {
	if s.closed {
		return nil, errClosed
	}
	if s.nl == nil {
		nl, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: s.netns})
		if err != nil {
			return nil, fmt.Errorf("opening netlink socket: %w", err)
		}
		if s.opts != nil {
			if err := s.opts(nl); err != nil {
				nl.Close()
				return nil, fmt.Errorf("setting socket options: %w", err)
			}
		}
		s.nl = nl
		if s.ports != nil {
			s.ports.add(nl.PID())
		}
	}
	return s.nl, nil
}

func (s *batchSocket) send(buf []byte, ackSeq uint32) (err error) {
	nl, err := s.socket()
	if err != nil {
		return err
	}
	defer func() {
		if err != nil && s.nl != nil {
			_ = s.closeConn()
		}
	}()
	rc, err := nl.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	}); err != nil {
		return fmt.Errorf("sending batch: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("sending batch of %d bytes: %w", len(buf), serr)
	}
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
			if m.Header.Type == netlink.Error && m.Header.Sequence == ackSeq {
				return nil
			}
		}
	}
}
