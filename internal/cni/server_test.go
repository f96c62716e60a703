package cni

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	"github.com/google/go-cmp/cmp"
)

// recorder is a Handler that records its calls and fails with err.
type recorder struct {
	mu     sync.Mutex
	calls  []string
	last   Attachment
	valid  []AttachmentKey
	err    error
	status error
	block  chan struct{}
	logged bool
}

func (h *recorder) record(ctx context.Context, cmd string, a Attachment) error {
	if h.block != nil {
		<-h.block
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, cmd)
	h.last = a
	h.logged = logr.FromContextOrDiscard(ctx).GetSink() != nil
	return h.err
}

func (h *recorder) Add(ctx context.Context, a Attachment) error   { return h.record(ctx, "add", a) }
func (h *recorder) Del(ctx context.Context, a Attachment) error   { return h.record(ctx, "del", a) }
func (h *recorder) Check(ctx context.Context, a Attachment) error { return h.record(ctx, "check", a) }
func (h *recorder) GC(ctx context.Context, valid []AttachmentKey) error {
	h.mu.Lock()
	h.valid = valid
	h.mu.Unlock()
	return h.record(ctx, "gc", Attachment{})
}
func (h *recorder) Status(context.Context) error { return h.status }

func (h *recorder) seen() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.calls...)
}

// serve starts a server for h on a socket in a fresh directory and returns
// the socket's path; the server stops when the test ends.
func serve(t *testing.T, h Handler) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "cni.sock")
	srv, err := Listen(path, h, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return path
}

func TestServerClientRoundTrip(t *testing.T) {
	h := &recorder{}
	path := serve(t, h)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode(); mode.Type() != os.ModeSocket || mode.Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", mode)
	}

	c := NewClient(path, 5*time.Second)
	ctx := context.Background()
	a := attachment("c1", "uid-1", "198.18.0.5", "fd00::5")
	if err := c.Add(ctx, a); err != nil {
		t.Fatalf("Add: %v", err)
	}
	if diff := cmp.Diff(a, h.last, addrCmp); diff != "" {
		t.Errorf("handler got (-sent +got):\n%s", diff)
	}
	if !h.logged {
		t.Error("handler's context carries no logger")
	}
	if err := c.Check(ctx, a); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if err := c.Del(ctx, Attachment{ContainerID: "c1", IfName: "eth0"}); err != nil {
		t.Fatalf("Del with only the key: %v", err)
	}
	valid := []AttachmentKey{{"c1", "eth0"}, {"c2", "net1"}}
	if err := c.GC(ctx, valid); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if !cmp.Equal(h.valid, valid) {
		t.Errorf("handler's GC got %v, want %v", h.valid, valid)
	}
	if err := c.GC(ctx, nil); err != nil {
		t.Fatalf("GC with no valid attachment: %v", err)
	}
	if h.valid == nil || len(h.valid) != 0 {
		t.Errorf("handler's GC got %#v, want an empty list", h.valid)
	}
	if err := c.Status(ctx); err != nil {
		t.Fatalf("Status: %v", err)
	}
	if want := []string{"add", "check", "del", "gc", "gc"}; !cmp.Equal(h.seen(), want) {
		t.Errorf("calls %v, want %v", h.seen(), want)
	}
}

func TestServerPassesHandlerErrors(t *testing.T) {
	h := &recorder{err: errors.New("pod uid-1 is not scheduled on this node"), status: errors.New("rule set not programmed yet")}
	c := NewClient(serve(t, h), 5*time.Second)
	ctx := context.Background()
	err := c.Add(ctx, attachment("c1", "uid-1", "198.18.0.5"))
	if err == nil || !strings.Contains(err.Error(), "pod uid-1 is not scheduled on this node") {
		t.Errorf("Add = %v, want the handler's message", err)
	}
	if errors.Is(err, ErrUnavailable) {
		t.Errorf("a refusal is reported as the agent being unavailable: %v", err)
	}
	if err := c.Status(ctx); err == nil || !strings.Contains(err.Error(), "rule set not programmed yet") {
		t.Errorf("Status = %v, want the handler's message", err)
	}
}

func TestServerRejectsIncompleteRequests(t *testing.T) {
	h := &recorder{}
	c := NewClient(serve(t, h), 5*time.Second)
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"add without pod UID": func() error { return c.Add(ctx, attachment("c1", "", "198.18.0.5")) },
		"add without ifname":  func() error { return c.Add(ctx, Attachment{ContainerID: "c1", PodUID: "u"}) },
		"del without id":      func() error { return c.Del(ctx, Attachment{IfName: "eth0"}) },
		"gc with a bad key":   func() error { return c.GC(ctx, []AttachmentKey{{IfName: "eth0"}}) },
	} {
		if err := call(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if calls := h.seen(); len(calls) != 0 {
		t.Errorf("handler called for invalid requests: %v", calls)
	}
}

func TestServerBoundsRequestSize(t *testing.T) {
	h := &recorder{}
	path := serve(t, h)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	body := `{"containerID":"c1","ifName":"eth0","podUID":"u","name":"` + strings.Repeat("x", MaxRequestBytes) + `"}`
	resp, err := hc.Post("http://nftguard"+PathAdd, "application/json", bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("status %d for an oversized request, want 413", resp.StatusCode)
	}
	if calls := h.seen(); len(calls) != 0 {
		t.Errorf("handler called for an oversized request: %v", calls)
	}
}

func TestServeRemovesSocketWhenDone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cni.sock")
	srv, err := Listen(path, &recorder{}, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	c := NewClient(path, 5*time.Second)
	if err := c.Status(context.Background()); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve = %v after its context ended", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after Serve returned: %v", err)
	}
	err = c.Add(context.Background(), attachment("c1", "u", "198.18.0.5"))
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), path) {
		t.Errorf("Add with the agent gone = %v, want ErrUnavailable naming %s", err, path)
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cni.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // an agent that died: the file stays, nobody answers
	if _, err := os.Lstat(path); err != nil {
		t.Fatal(err)
	}
	srv, err := Listen(path, &recorder{}, testr.New(t))
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	if err := NewClient(path, 5*time.Second).Status(context.Background()); err != nil {
		t.Errorf("Status through the new socket: %v", err)
	}
}

func TestListenRefusesLiveSocketOrOtherFile(t *testing.T) {
	path := serve(t, &recorder{})
	if _, err := Listen(path, &recorder{}, testr.New(t)); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("Listen on a socket another server answers = %v, want a refusal", err)
	}
	if err := NewClient(path, 5*time.Second).Status(context.Background()); err != nil {
		t.Errorf("first server no longer answers after the refused Listen: %v", err)
	}

	file := filepath.Join(t.TempDir(), "cni.sock")
	if err := os.WriteFile(file, []byte("not a socket"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(file, &recorder{}, testr.New(t)); err == nil {
		t.Error("Listen over a regular file: no error")
	}
	if b, _ := os.ReadFile(file); string(b) != "not a socket" {
		t.Error("Listen changed the regular file in its way")
	}
}

func TestClientTimesOut(t *testing.T) {
	h := &recorder{block: make(chan struct{})}
	path := serve(t, h)
	defer close(h.block)
	err := NewClient(path, 200*time.Millisecond).Add(context.Background(), attachment("c1", "u", "198.18.0.5"))
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("Add to a stuck agent = %v, want ErrUnavailable", err)
	}
}
