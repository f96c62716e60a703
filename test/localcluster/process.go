package localcluster

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// procSpec is a process to start.
type procSpec struct {
	role  string // etcd, kube-apiserver, controller, agent, forward, podserver
	name  string // node or pod it serves, if any
	path  string
	args  []string
	env   []string
	netns string // named network namespace to run in; "" for the machine's own
	log   string
	// ready: the process writes a line to file descriptor 3 once it
	// serves (the harness's own helper roles).
	ready bool
	// cloneflags are namespaces the process gets of its own (a real
	// node's init: mount and PID).
	cloneflags uintptr
}

// proc is a process this harness started in this process's lifetime.
type proc struct {
	ref   ProcessRef
	cmd   *exec.Cmd
	done  chan struct{} // closed when the process has exited and been reaped
	err   error         // exit status, valid after done
	ready *os.File      // read end of the readiness pipe, if any
}

// start starts a process, inside a network namespace if spec.netns is set,
// with stdout and stderr appended to spec.log. With detach, the process gets
// its own session so that it outlives the caller and its terminal.
func (c *Cluster) start(spec procSpec) (*proc, error) {
	logf, err := os.OpenFile(spec.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	cmd := exec.Command(spec.path, spec.args...)
	cmd.Env = append(os.Environ(), spec.env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, logf, logf
	cmd.Dir = c.cfg.StateDir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: c.cfg.Detach, Cloneflags: spec.cloneflags}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	var w *os.File
	if spec.ready {
		r, wr, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		p.ready, w = r, wr
		cmd.ExtraFiles = []*os.File{w}
	}
	fmt.Fprintf(logf, "--- %s starting %s %s\n", time.Now().Format(time.RFC3339), spec.path, strings.Join(spec.args, " "))
	if spec.netns == "" {
		err = cmd.Start()
	} else {
		err = inNetNS(spec.netns, cmd.Start)
	}
	if w != nil {
		w.Close()
	}
	if err != nil {
		if p.ready != nil {
			p.ready.Close()
		}
		return nil, fmt.Errorf("starting %s: %w", spec.role, err)
	}
	st, _ := processStartTime(cmd.Process.Pid)
	p.ref = ProcessRef{
		Role: spec.role, Name: spec.name, PID: cmd.Process.Pid, StartTime: st,
		NetNS: spec.netns, Log: spec.log, Args: append([]string{spec.path}, spec.args...),
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	c.mu.Lock()
	c.procs[p.ref.PID] = p
	c.mu.Unlock()
	if err := c.state.update(func(s *State) { s.Processes = append(s.Processes, p.ref) }); err != nil {
		return p, err
	}
	return p, nil
}

// waitReady waits for the process's readiness line, its exit, or the timeout.
func (p *proc) waitReady(timeout time.Duration) error {
	if p.ready == nil {
		return nil
	}
	defer p.ready.Close()
	_ = p.ready.SetReadDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(p.ready).ReadString('\n')
	if err == nil && strings.TrimSpace(line) == "ready" {
		return nil
	}
	if errors.Is(err, io.EOF) {
		// The pipe closed without a word: the process is exiting; give
		// it a moment to be reaped, so that the error says so.
		select {
		case <-p.done:
		case <-time.After(2 * time.Second):
		}
	}
	select {
	case <-p.done:
		return fmt.Errorf("%s exited before it was ready (%v); log %s:\n%s", p.ref.Role, p.err, p.ref.Log, tail(p.ref.Log, 20))
	default:
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%s not ready after %s; log %s:\n%s", p.ref.Role, timeout, p.ref.Log, tail(p.ref.Log, 20))
	}
	return fmt.Errorf("%s readiness: %q, %v; log %s:\n%s", p.ref.Role, line, err, p.ref.Log, tail(p.ref.Log, 20))
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// processStartTime reads a process's start time (field 22 of
// /proc/<pid>/stat, in clock ticks since boot).
func processStartTime(pid int) (uint64, error) {
	st, _, err := procStat(pid)
	return st, err
}

// procStat returns a process's start time and state letter.
func procStat(pid int) (uint64, byte, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	st, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, 0, err
	}
	return st, fields[0][0], nil
}

// alive reports whether the recorded process still runs: same pid, same
// start time, not a zombie.
func (r ProcessRef) alive() bool {
	st, state, err := procStat(r.PID)
	if err != nil || st != r.StartTime {
		return false
	}
	return state != 'Z' && state != 'X'
}

// Alive reports whether the recorded process still runs.
func (r ProcessRef) Alive() bool { return r.alive() }

// stopProcess stops a recorded process: SIGTERM, then SIGKILL after grace.
// It signals only the process recorded (pid and start time), never by name.
func stopProcess(r ProcessRef, p *proc, grace time.Duration) error {
	if p != nil {
		if p.exited() {
			return nil
		}
		_ = p.cmd.Process.Signal(unix.SIGTERM)
		select {
		case <-p.done:
			return nil
		case <-time.After(grace):
		}
		_ = p.cmd.Process.Kill()
		select {
		case <-p.done:
			return nil
		case <-time.After(5 * time.Second):
			return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", r.Role, r.PID)
		}
	}
	if !r.alive() {
		return nil
	}
	if err := unix.Kill(r.PID, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signalling %s (pid %d): %w", r.Role, r.PID, err)
	}
	if waitGone(r, grace) {
		return nil
	}
	if r.alive() {
		if err := unix.Kill(r.PID, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("killing %s (pid %d): %w", r.Role, r.PID, err)
		}
	}
	if waitGone(r, 5*time.Second) {
		return nil
	}
	return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", r.Role, r.PID)
}

func waitGone(r ProcessRef, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if !r.alive() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stopAll stops processes in tiers: everything that uses the API server
// first, then the API server, then etcd. Processes within a tier stop in
// parallel. It returns every error.
func stopAll(refs []ProcessRef, live map[int]*proc) error {
	tier := func(r ProcessRef) int {
		switch r.Role {
		case roleAPIServer:
			return 1
		case roleEtcd:
			return 2
		}
		return 0
	}
	var errs []error
	for t := 0; t <= 2; t++ {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, r := range refs {
			if tier(r) != t {
				continue
			}
			grace := 5 * time.Second
			switch r.Role {
			case rolePodServer, roleForward:
				grace = time.Second
			case roleNode:
				// It stops its node's components first (killNode).
				grace = 20 * time.Second
			}
			wg.Add(1)
			go func(r ProcessRef) {
				defer wg.Done()
				if err := stopProcess(r, live[r.PID], grace); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}(r)
		}
		wg.Wait()
	}
	return errors.Join(errs...)
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// Process roles.
const (
	roleEtcd       = "etcd"
	roleAPIServer  = "kube-apiserver"
	roleController = "controller"
	roleAgent      = "agent"
	roleForward    = "forward"
	rolePodServer  = "podserver"
)
