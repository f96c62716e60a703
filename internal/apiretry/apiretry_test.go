package apiretry

import (
	"context"
	"errors"
	"net"
	"net/url"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	toolscache "k8s.io/client-go/tools/cache"
)

// refused is the error client-go returns when nothing listens.
var refused = &url.Error{Op: "Get", URL: "https://198.18.0.1:6443/api", Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}

// failing is a ListerWatcher whose first calls fail with errs, one each.
type failing struct {
	errs  []error
	calls int
}

// IsWatchListSemanticsUnSupported: the fake's watch sends no initial
// events, so the reflector lists.
func (f *failing) IsWatchListSemanticsUnSupported() bool { return true }

func (f *failing) next() error {
	f.calls++
	if f.calls <= len(f.errs) {
		return f.errs[f.calls-1]
	}
	return nil
}

func (f *failing) List(metav1.ListOptions) (runtime.Object, error) {
	if err := f.next(); err != nil {
		return nil, err
	}
	return &corev1.PodList{}, nil
}

func (f *failing) Watch(metav1.ListOptions) (watch.Interface, error) {
	if err := f.next(); err != nil {
		return nil, err
	}
	return watch.NewFake(), nil
}

func repeat(err error, n int) []error {
	out := make([]error, n)
	for i := range out {
		out[i] = err
	}
	return out
}

var pods = schema.GroupResource{Resource: "pods"}

func TestRetriesTransientFailures(t *testing.T) {
	for _, tc := range []struct {
		name string
		errs []error
	}{
		{"connection refused", repeat(refused, 5)},
		{"server unavailable, then overloaded", []error{apierrors.NewServiceUnavailable("etcd not ready"), apierrors.NewTooManyRequests("slow down", 0), refused}},
		{"timed out", []error{&url.Error{Op: "Get", URL: "https://198.18.0.1:6443/api", Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ETIMEDOUT}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &failing{errs: tc.errs}
			lw := Wrap(f, time.Millisecond, logr.Discard())
			if _, err := lw.ListWithContext(context.Background(), metav1.ListOptions{}); err != nil {
				t.Fatalf("list: %v", err)
			}
			if f.calls != len(tc.errs)+1 {
				t.Errorf("list took %d calls, want %d", f.calls, len(tc.errs)+1)
			}
			f = &failing{errs: tc.errs}
			lw = Wrap(f, time.Millisecond, logr.Discard())
			w, err := lw.WatchWithContext(context.Background(), metav1.ListOptions{})
			if err != nil {
				t.Fatalf("watch: %v", err)
			}
			w.Stop()
			if f.calls != len(tc.errs)+1 {
				t.Errorf("watch took %d calls, want %d", f.calls, len(tc.errs)+1)
			}
		})
	}
}

func TestReturnsOtherErrorsAtOnce(t *testing.T) {
	for _, err := range []error{
		apierrors.NewForbidden(pods, "", errors.New("no RBAC")),
		apierrors.NewResourceExpired("too old resource version"),
		apierrors.NewNotFound(pods, "x"),
		errors.New("unable to decode the response"),
	} {
		f := &failing{errs: []error{err}}
		lw := Wrap(f, time.Millisecond, logr.Discard())
		if _, got := lw.ListWithContext(context.Background(), metav1.ListOptions{}); !errors.Is(got, err) {
			t.Errorf("list: got %v, want %v", got, err)
		}
		if f.calls != 1 {
			t.Errorf("%v: %d calls, want 1", err, f.calls)
		}
	}
}

func TestStopsWithItsContext(t *testing.T) {
	f := &failing{errs: repeat(refused, 1_000_000)}
	lw := Wrap(f, time.Millisecond, logr.Discard())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := lw.WatchWithContext(ctx, metav1.ListOptions{})
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

// An informer over the wrapper syncs through the failures without its
// reflector ever seeing one (each one it saw would cost a backoff of up to
// 30 s and go to its error handler).
func TestInformerSyncsThroughFailures(t *testing.T) {
	f := &failing{errs: repeat(refused, 4)}
	inf := toolscache.NewSharedIndexInformer(Wrap(f, time.Millisecond, logr.Discard()), &corev1.Pod{}, 0, toolscache.Indexers{})
	var seen atomic.Int32
	if err := inf.SetWatchErrorHandlerWithContext(func(context.Context, *toolscache.Reflector, error) { seen.Add(1) }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go inf.RunWithContext(ctx)
	if !toolscache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("no sync")
	}
	if n := seen.Load(); n != 0 {
		t.Errorf("the reflector saw %d failures, want 0", n)
	}
	// One list (after 4 failures); the watch may have started too.
	if f.calls < 5 || f.calls > 6 {
		t.Errorf("%d calls, want 5 (or 6 with the watch)", f.calls)
	}
}

// An overloaded server's Retry-After is honoured: a wrapper whose own pause
// is a millisecond waits the second the server asked for.
func TestHonoursRetryAfter(t *testing.T) {
	f := &failing{errs: []error{apierrors.NewTooManyRequests("slow down", 1)}}
	lw := Wrap(f, time.Millisecond, logr.Discard())
	start := time.Now()
	if _, err := lw.ListWithContext(context.Background(), metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Errorf("retried after %s, before the server's Retry-After of 1s", waited)
	}
}
