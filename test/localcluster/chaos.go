package localcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Process roles a test can stop and start again.
const (
	RoleAPIServer  = roleAPIServer
	RoleController = roleController
	RoleAgent      = roleAgent
	// RolePodServer is a pod's server; its name is the pod's key. A pod
	// whose server is killed has nothing listening on any port.
	RolePodServer = rolePodServer
)

// Kill sends sig to the running process of a role (and, for an agent, its
// node) and waits until it is gone. It returns the process's record, which
// Restart takes to start it again with the same command line.
func (c *Cluster) Kill(role, name string, sig syscall.Signal) (ProcessRef, error) {
	var ref ProcessRef
	found := false
	for _, r := range c.state.snapshot().Processes {
		if r.Role == role && r.Name == name && r.alive() {
			ref, found = r, true
		}
	}
	if !found {
		return ProcessRef{}, fmt.Errorf("no running %s %q", role, name)
	}
	c.mu.Lock()
	p := c.procs[ref.PID]
	c.mu.Unlock()
	if p != nil {
		if err := p.cmd.Process.Signal(sig); err != nil {
			return ref, fmt.Errorf("signalling %s (pid %d): %w", role, ref.PID, err)
		}
		select {
		case <-p.done:
			return ref, nil
		case <-time.After(15 * time.Second):
			return ref, fmt.Errorf("%s (pid %d) still runs 15s after %s", role, ref.PID, sig)
		}
	}
	if err := unix.Kill(ref.PID, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return ref, fmt.Errorf("signalling %s (pid %d): %w", role, ref.PID, err)
	}
	if !waitGone(ref, 15*time.Second) {
		return ref, fmt.Errorf("%s (pid %d) still runs 15s after %s", role, ref.PID, sig)
	}
	return ref, nil
}

// Restart starts a killed process again with its recorded command line, in
// its network namespace, and waits until it serves: the API server's
// /readyz, or for the controller and agents a moment to start (callers wait
// for convergence themselves).
func (c *Cluster) Restart(ctx context.Context, ref ProcessRef) error {
	if ref.alive() {
		return fmt.Errorf("%s (pid %d) still runs", ref.Role, ref.PID)
	}
	if len(ref.Args) == 0 {
		return fmt.Errorf("%s has no recorded command line", ref.Role)
	}
	spec := procSpec{role: ref.Role, name: ref.Name, path: ref.Args[0], args: ref.Args[1:], netns: ref.NetNS, log: ref.Log}
	if ref.Role == roleAgent {
		spec.env = []string{"NODE_NAME=" + ref.Name}
	}
	p, err := c.start(spec)
	if err != nil {
		return err
	}
	if ref.Role != roleAPIServer {
		return nil
	}
	hc, err := c.adminHTTPClient()
	if err != nil {
		return err
	}
	return waitFor(ctx, p, 120*time.Second, func() (bool, error) {
		resp, err := hc.Get(c.apiURL + "/readyz")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}

// Listen opens a listener inside a pod's network namespace, for tests that
// need a long-lived connection (the pod servers answer and close).
func (c *Cluster) Listen(pod, network, address string) (net.Listener, error) {
	p, ok := c.Pod(pod)
	if !ok {
		return nil, fmt.Errorf("no pod %q", pod)
	}
	var l net.Listener
	err := inNetNS(p.NetNS, func() (err error) {
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// Dial connects from inside a pod's network namespace.
func (c *Cluster) Dial(ctx context.Context, pod, network, address string) (net.Conn, error) {
	p, ok := c.Pod(pod)
	if !ok {
		return nil, fmt.Errorf("no pod %q", pod)
	}
	var conn net.Conn
	err := inNetNS(p.NetNS, func() (err error) {
		var d net.Dialer
		conn, err = d.DialContext(ctx, network, address)
		return err
	})
	return conn, err
}
