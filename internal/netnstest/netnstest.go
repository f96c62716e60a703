// Package netnstest gives kernel tests and benchmarks throwaway network
// namespaces: New makes one (skipping the test without root), Do runs code
// inside one. The machine's own namespace is never changed.
package netnstest

import (
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// New returns a new, unnamed network namespace with IPv6 duplicate address
// detection off (addresses are usable at once), closed when the test ends.
// It skips the test when not root or when namespaces are unavailable.
func New(t testing.TB) netns.NsHandle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces and nftables)")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Skipf("no network namespaces: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		t.Skipf("cannot create a network namespace: %v", err)
	}
	var sysctlErr error
	for _, f := range []string{"/proc/sys/net/ipv6/conf/default/accept_dad", "/proc/sys/net/ipv6/conf/all/accept_dad",
		"/proc/sys/net/ipv6/conf/default/dad_transmits"} {
		if err := os.WriteFile(f, []byte("0"), 0o644); err != nil && sysctlErr == nil {
			sysctlErr = err
		}
	}
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the new namespace: leave it locked so
		// that the runtime discards it with this goroutine.
		t.Fatalf("restoring network namespace: %v", err)
	}
	runtime.UnlockOSThread()
	t.Cleanup(func() { ns.Close() })
	if sysctlErr != nil {
		t.Fatalf("disabling DAD: %v", sysctlErr)
	}
	return ns
}

// Do runs fn on a thread switched to ns, and switches back. If switching
// back fails the thread stays locked, so the runtime discards it.
func Do(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer func() {
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return fn()
}
