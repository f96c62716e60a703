package bench

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/nftguard/nftguard/internal/netnstest"
)

// nsPath names ns for other processes while this process holds it.
func nsPath(ns netns.NsHandle) string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns)) }

// nftIn runs nft with the script on standard input inside ns.
func nftIn(ns netns.NsHandle, script string, args ...string) error {
	cmd := exec.Command("nsenter", append([]string{"--net=" + nsPath(ns), "nft"}, args...)...)
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("nft %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// pair is a node namespace with two pod namespaces joined to it by veth
// pairs and host routes (like the ptp CNI plugin): packets between the pods
// are forwarded by the node, through its nftables hooks.
type pair struct {
	node, client, server netns.NsHandle
}

func newPair(b testing.TB) *pair {
	b.Helper()
	p := &pair{node: newNetNS(b), client: newNetNS(b), server: newNetNS(b)}
	netnstest.Router(b, p.node)
	for i, pod := range []struct {
		ns netns.NsHandle
		ip netip.Addr
	}{{p.client, clientAddr}, {p.server, serverAddr}} {
		netnstest.Link(b, p.node, pod.ns, fmt.Sprintf("vb%d", i), []netip.Addr{nodeAddr}, []netip.Addr{pod.ip})
	}
	// Wait until both directions work (veths come up asynchronously).
	deadline := time.Now().Add(10 * time.Second)
	for !p.reachable() {
		if time.Now().After(deadline) {
			b.Fatal("pods cannot reach each other through the node")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// reachable reports whether a TCP connection from client to server's
// discard port is refused or accepted (either proves the path works).
func (p *pair) reachable() bool {
	ok := false
	_ = inNS(p.client, func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(serverAddr, 9).String(), 200*time.Millisecond)
		if err == nil {
			c.Close()
			ok = true
		} else if strings.Contains(err.Error(), "refused") {
			ok = true
		}
		return nil
	})
	return ok
}

// writeSysctl writes a sysctl of the calling thread's network namespace.
func writeSysctl(name, value string) error {
	return os.WriteFile("/proc/sys/"+name, []byte(value), 0o644)
}

func newNetNS(b testing.TB) netns.NsHandle { return netnstest.New(b) }
