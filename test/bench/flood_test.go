package bench

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The benchmarks send and serve traffic from child processes (this test
// binary, started with nsenter inside a pod namespace and roleEnv set), so
// that their CPU time is not counted as the agent's and each side has a
// whole process in its namespace.
const roleEnv = "NFTGUARD_BENCH_ROLE"

// runRole runs a child role, "<name>:<comma-separated arguments>", and
// returns the exit code. Results are printed on standard output.
func runRole(spec string) int {
	name, args, _ := strings.Cut(spec, ":")
	f := strings.Split(args, ",")
	var err error
	switch name {
	case "serve": // serve:<port>
		err = serveRole(f)
	case "crr": // crr:<dst>,<port>,<conns>,<duration>
		err = crrRole(f)
	case "bulk": // bulk:<dst>,<port>,<duration>
		err = bulkRole(f)
	case "flood": // flood:<dst>,<ports>,<duration>
		err = floodRole(f)
	default:
		err = fmt.Errorf("unknown role %q", name)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// child is a role process running in a namespace.
type child struct {
	cmd *exec.Cmd
	out bytes.Buffer
}

// startRole starts a role in ns; the process is killed (by its pid) when
// the benchmark ends if it is still running.
func startRole(b testing.TB, ns netns.NsHandle, role string) *child {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	c := &child{cmd: exec.Command("nsenter", "--net="+nsPath(ns), exe)}
	c.cmd.Env = append(os.Environ(), roleEnv+"="+role)
	c.cmd.Stdout = &c.out
	c.cmd.Stderr = os.Stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		b.Fatalf("starting %s: %v", role, err)
	}
	b.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			_ = c.cmd.Process.Kill()
			_ = c.cmd.Wait()
		}
	})
	return c
}

// result waits for the role to exit and returns the number it printed.
func (c *child) result(b testing.TB) float64 {
	b.Helper()
	if err := c.cmd.Wait(); err != nil {
		b.Fatalf("%v: %v", c.cmd.Env[len(c.cmd.Env)-1], err)
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(c.out.String()), 64)
	if err != nil {
		b.Fatalf("role printed %q", c.out.String())
	}
	return v
}

// runRoleIn runs a role to completion in ns and returns its number.
func runRoleIn(b testing.TB, ns netns.NsHandle, role string) float64 {
	return startRole(b, ns, role).result(b)
}

const reqSize = 64

// serveRole answers each request of reqSize bytes with as many bytes, and
// discards what a bulk sender (first byte 'b') sends.
func serveRole(f []string) error {
	if len(f) != 1 {
		return fmt.Errorf("serve: want <port>")
	}
	l, err := net.Listen("tcp4", "0.0.0.0:"+f[0])
	if err != nil {
		return err
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 128<<10)
			if _, err := io.ReadFull(c, buf[:1]); err != nil {
				return
			}
			if buf[0] == 'b' {
				_, _ = io.CopyBuffer(io.Discard, c, buf)
				return
			}
			if _, err := io.ReadFull(c, buf[1:reqSize]); err != nil {
				return
			}
			for {
				if _, err := c.Write(buf[:reqSize]); err != nil {
					return
				}
				if _, err := io.ReadFull(c, buf[:reqSize]); err != nil {
					return
				}
			}
		}()
	}
}

// crrRole opens connections, one request and response each, from conns
// workers for the duration, and prints transactions per second. Connections
// are closed with a reset so that no TIME_WAIT piles up.
func crrRole(f []string) error {
	if len(f) != 4 {
		return fmt.Errorf("crr: want <dst>,<port>,<conns>,<duration>")
	}
	conns, err1 := strconv.Atoi(f[2])
	d, err2 := time.ParseDuration(f[3])
	if err1 != nil || err2 != nil {
		return fmt.Errorf("crr: bad arguments %v", f)
	}
	addr := net.JoinHostPort(f[0], f[1])
	var done atomic.Int64
	var failed atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	start := time.Now()
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, reqSize)
			for time.Now().Before(deadline) {
				c, err := net.DialTimeout("tcp4", addr, time.Second)
				if err != nil {
					failed.Add(1)
					continue
				}
				_ = c.(*net.TCPConn).SetLinger(0)
				_, err = c.Write(buf)
				if err == nil {
					_, err = io.ReadFull(c, buf)
				}
				c.Close()
				if err != nil {
					failed.Add(1)
					continue
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > done.Load()/100 {
		return fmt.Errorf("crr: %d of %d connections failed", n, n+done.Load())
	}
	fmt.Println(float64(done.Load()) / time.Since(start).Seconds())
	return nil
}

// bulkRole sends as fast as it can on one connection for the duration and
// prints bits per second.
func bulkRole(f []string) error {
	if len(f) != 3 {
		return fmt.Errorf("bulk: want <dst>,<port>,<duration>")
	}
	d, err := time.ParseDuration(f[2])
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp4", net.JoinHostPort(f[0], f[1]), time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 128<<10)
	buf[0] = 'b'
	var sent int64
	start := time.Now()
	for time.Since(start) < d {
		n, err := c.Write(buf)
		sent += int64(n)
		if err != nil {
			return err
		}
	}
	fmt.Println(float64(sent*8) / time.Since(start).Seconds())
	return nil
}

// floodRole sends 64-byte UDP datagrams to dst, cycling over destination
// ports 20000..20000+ports-1, as fast as it can for the duration, and
// prints how many it sent.
func floodRole(f []string) error {
	if len(f) != 3 {
		return fmt.Errorf("flood: want <dst>,<ports>,<duration>")
	}
	dst, err1 := netip.ParseAddr(f[0])
	ports, err2 := strconv.Atoi(f[1])
	d, err3 := time.ParseDuration(f[2])
	if err1 != nil || err2 != nil || err3 != nil || ports <= 0 {
		return fmt.Errorf("flood: bad arguments %v", f)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	payload := make([]byte, 64)
	sa := &unix.SockaddrInet4{Addr: dst.As4()}
	sent := 0
	start := time.Now()
	for time.Since(start) < d {
		sa.Port = 20000 + sent%ports
		// A drop at the node comes back as EPERM on the sender only for
		// locally generated packets; here the node forwards, so errors are
		// rare and ignored.
		_ = unix.Sendto(fd, payload, 0, sa)
		sent++
	}
	fmt.Println(sent)
	return nil
}
