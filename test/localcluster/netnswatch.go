package localcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// NetNSWatch sees the network namespaces containerd makes on a real node:
// each pod sandbox's, in the node's /run/netns, before the CNI ADD that
// gives it an interface.
type NetNSWatch struct {
	fd     int
	dir    string
	before map[string]bool
	queue  []string
}

// WatchNetNS starts watching a real node's network namespaces: Next returns
// those made from now on.
func (c *Cluster) WatchNetNS(node string) (*NetNSWatch, error) {
	root, err := c.NodeRoot(node)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(root, "run", "netns")
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watching %s: %w", dir, err)
	}
	// Listed after the watch began: a name made in between is both listed
	// and reported, and counts as one that was there.
	entries, err := os.ReadDir(dir)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	w := &NetNSWatch{fd: fd, dir: dir, before: map[string]bool{}}
	for _, e := range entries {
		w.before[e.Name()] = true
	}
	return w, nil
}

// Next waits for the next network namespace made on the node and returns
// its path as soon as it is one (containerd creates the file, then binds
// the new namespace on it), and when its file appeared.
func (w *NetNSWatch) Next(ctx context.Context) (string, time.Time, error) {
	for {
		name, appeared, err := w.nextName(ctx)
		if err != nil {
			return "", time.Time{}, err
		}
		path := filepath.Join(w.dir, name)
		// The bind follows the file's creation at once; spin for it.
		for deadline := time.Now().Add(5 * time.Second); ; {
			var fs unix.Statfs_t
			err := unix.Statfs(path, &fs)
			if err == nil && fs.Type == unix.NSFS_MAGIC {
				return path, appeared, nil
			}
			if errors.Is(err, unix.ENOENT) {
				break // made and removed again (a failed sandbox)
			}
			if err != nil && !errors.Is(err, unix.EINTR) {
				return "", time.Time{}, fmt.Errorf("network namespace %s: %w", path, err)
			}
			if time.Now().After(deadline) {
				return "", time.Time{}, fmt.Errorf("%s appeared %s ago and is still no network namespace", path, time.Since(appeared).Round(time.Millisecond))
			}
		}
	}
}

// nextName reads the watch's events until a new name appears.
func (w *NetNSWatch) nextName(ctx context.Context) (string, time.Time, error) {
	buf := make([]byte, 4096)
	for {
		for len(w.queue) > 0 {
			name := w.queue[0]
			w.queue = w.queue[1:]
			if !w.before[name] {
				w.before[name] = true
				return name, time.Now(), nil
			}
		}
		if err := ctx.Err(); err != nil {
			return "", time.Time{}, fmt.Errorf("no new network namespace in %s: %w", w.dir, err)
		}
		fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, 20); err != nil && !errors.Is(err, unix.EINTR) {
			return "", time.Time{}, fmt.Errorf("poll: %w", err)
		}
		n, err := unix.Read(w.fd, buf)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return "", time.Time{}, fmt.Errorf("reading the watch of %s: %w", w.dir, err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
				return "", time.Time{}, fmt.Errorf("the watch of %s overflowed", w.dir)
			}
			if name := strings.TrimRight(string(nameBytes), "\x00"); name != "" {
				w.queue = append(w.queue, name)
			}
		}
	}
}

// Close ends the watch.
func (w *NetNSWatch) Close() error { return unix.Close(w.fd) }
