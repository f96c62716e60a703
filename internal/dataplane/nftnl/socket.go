package nftnl

import (
	"fmt"
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
}

// batchTimeout bounds the wait for the kernel's answer to one batch.
const batchTimeout = 2 * time.Minute

func newBatchSocket(netnsFD int, opts func(*netlink.Conn) error) (*batchSocket, error) {
	s := &batchSocket{netns: netnsFD, opts: opts}
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
	err := s.nl.Close()
	s.nl = nil
	return err
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
			_ = s.nl.Close()
			s.nl = nil
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
