package localcluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces live, as with `ip netns`, so
// that `ip netns exec <name> ...` works on the cluster's namespaces.
const netnsDir = "/run/netns"

// netnsPrefix is the prefix of every network namespace of cluster name.
func netnsPrefix(name string) string { return "ngd-" + name + "-" }

// netnsPath is a named namespace's path, or name itself when it is a path
// already (a real node's pods live in its own /run/netns, reached from the
// machine through /proc/<node init>/root).
func netnsPath(name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(netnsDir, name)
}

// NetNSPath is the path of a Node's or Pod's NetNS.
func NetNSPath(netns string) string { return netnsPath(netns) }

// ensureNetNSDir prepares /run/netns as `ip netns add` does: a shared mount,
// so that a namespace unmounted here is unmounted in every mount namespace
// that copied it (otherwise the namespace outlives its deletion).
func ensureNetNSDir() error {
	netnsDirOnce.Do(func() { netnsDirErr = prepareNetNSDir() })
	return netnsDirErr
}

var (
	netnsDirOnce sync.Once
	netnsDirErr  error
)

func prepareNetNSDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		// Not a mount point yet: make it one, then shared.
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mounting %s: %w", netnsDir, err)
		}
		err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("making %s a shared mount: %w", netnsDir, err)
	}
	return nil
}

// createNetNS creates a named network namespace, like `ip netns add`,
// without changing the namespace of any thread but a throwaway one.
func createNetNS(name string) error {
	if err := ensureNetNSDir(); err != nil {
		return err
	}
	path := netnsPath(name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it ends with this goroutine, so
		// no other code ever runs in the namespace it moved to.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		errc <- unix.Mount(self, path, "none", unix.MS_BIND, "")
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	return nil
}

// deleteNetNS removes a named network namespace; a missing one is not an
// error. The namespace itself goes away with the last process in it.
func deleteNetNS(name string) error {
	path := netnsPath(name)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", path, err)
	}
	return nil
}

// netnsExists reports whether a named network namespace is mounted.
func netnsExists(name string) bool {
	var fs unix.Statfs_t
	if unix.Statfs(netnsPath(name), &fs) != nil {
		return false
	}
	return fs.Type == unix.NSFS_MAGIC
}

// listNetNS lists the named network namespaces with a prefix.
func listNetNS(prefix string) []string {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// inNetNS runs fn on a thread that has entered the named network namespace.
// Sockets fn opens belong to that namespace for their whole life, whichever
// thread uses them later. The thread is discarded afterwards.
func inNetNS(name string, fn func() error) error {
	fd, err := unix.Open(netnsPath(name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", name, err)
	}
	defer unix.Close(fd)
	return inNetNSFd(fd, fn)
}

func inNetNSFd(fd int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine.
		runtime.LockOSThread()
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// setSysctls writes /proc/sys/net settings inside a network namespace.
// Keys are paths below /proc/sys, such as "net/ipv4/ip_forward".
func setSysctls(ns string, kv [][2]string) error {
	return inNetNS(ns, func() error {
		for _, s := range kv {
			if err := os.WriteFile(filepath.Join("/proc/sys", s[0]), []byte(s[1]), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s in %s: %w", s[0], s[1], ns, err)
			}
		}
		return nil
	})
}

// nsHandle opens a netlink handle inside a named network namespace. The
// caller closes the handle and the returned namespace file descriptor.
func nsHandle(name string) (*netlink.Handle, int, error) {
	fd, err := unix.Open(netnsPath(name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, -1, fmt.Errorf("opening network namespace %s: %w", name, err)
	}
	h, err := netlink.NewHandleAt(netns.NsHandle(fd))
	if err != nil {
		unix.Close(fd)
		return nil, -1, fmt.Errorf("netlink handle in %s: %w", name, err)
	}
	return h, fd, nil
}

func closeFD(fd int) { _ = unix.Close(fd) }
