// Package apiretry keeps the controller's and the agents' API clients close
// behind an API server that goes away and comes back.
//
// client-go's reflectors back off exponentially (0.8 s doubling, capped at
// 30 s, with full jitter) whenever listing or starting a watch fails, so
// after a 30 s outage an informer may wait most of a minute more before it
// watches again; neither client-go's shared informers nor controller-runtime
// expose that backoff. Wrap retries transport failures and overload answers
// (429, 502, 503, 504) inside List and Watch themselves, every at most Cap
// (or after the Retry-After an overloaded server asks for, up to 30 s), so
// the reflector never sees them and never backs off: once the server
// answers again the informer lists or watches within Cap. A watch stream
// that breaks is reopened by the reflector at once from its last resource
// version; only that reopening goes through this retry. Other errors (410
// Gone, 403, 404, a cancelled context) reach the reflector as before.
//
// Tune and SetHTTP2HealthCheck make a dead connection (a blackholed server:
// packets dropped, no reset) fail fast instead of hanging: a dial timeout
// of 5 s, and an HTTP/2 health check that pings after 5 s without a frame
// and gives up 3 s later (client-go's defaults are 30 s and 15 s, so a
// blackhole was noticed only after about 45 s).
package apiretry

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

const (
	// DefaultCap is the longest pause between two attempts.
	DefaultCap = time.Second
	// maxServerDelay bounds the pause an overloaded server asks for.
	maxServerDelay = 30 * time.Second
	// DialTimeout bounds one TCP connect to the API server.
	DialTimeout = 5 * time.Second
	// HTTP/2 health check: a ping after this long without a frame...
	http2ReadIdleSeconds = "5"
	// ...and the connection closed when its answer is this late.
	http2PingTimeoutSeconds = "3"
)

// Tune sets cfg's dialer: connects time out after DialTimeout, with TCP
// keepalives. Without it a connect to a blackholed server waits for
// client-go's 30 s dial timeout, and may miss the server's return by the
// SYN retransmission backoff.
func Tune(cfg *rest.Config) {
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{Timeout: DialTimeout, KeepAlive: 15 * time.Second}).DialContext
	}
}

// SetHTTP2HealthCheck sets the HTTP/2 health check of every client the
// process builds afterwards (client-go reads HTTP2_READ_IDLE_TIMEOUT_SECONDS
// and HTTP2_PING_TIMEOUT_SECONDS when it builds a transport), unless the
// environment sets them already.
func SetHTTP2HealthCheck() {
	for k, v := range map[string]string{
		"HTTP2_READ_IDLE_TIMEOUT_SECONDS": http2ReadIdleSeconds,
		"HTTP2_PING_TIMEOUT_SECONDS":      http2PingTimeoutSeconds,
	} {
		if _, set := os.LookupEnv(k); !set {
			_ = os.Setenv(k, v)
		}
	}
}

// NewInformer is a controller-runtime cache.Options.NewInformer: client-go's
// shared index informer over Wrap(lw).
func NewInformer(lw toolscache.ListerWatcher, obj runtime.Object, resync time.Duration, indexers toolscache.Indexers) toolscache.SharedIndexInformer {
	return toolscache.NewSharedIndexInformer(Wrap(lw, DefaultCap, ctrllog.Log.WithName("api-retry")), obj, resync, indexers)
}

// Wrap returns lw with List and Watch retrying transient failures every at
// most pause (see the package comment), until they succeed, fail otherwise
// or their context ends.
func Wrap(lw toolscache.ListerWatcher, pause time.Duration, log logr.Logger) *ListerWatcher {
	return &ListerWatcher{inner: lw, lw: toolscache.ToListerWatcherWithContext(lw), cap: pause, log: log}
}

// ListerWatcher is a ListerWatcher whose calls retry transient failures.
type ListerWatcher struct {
	inner toolscache.ListerWatcher
	lw    toolscache.ListerWatcherWithContext
	cap   time.Duration
	log   logr.Logger
}

var _ toolscache.ListerWatcherWithContext = &ListerWatcher{}

func (w *ListerWatcher) ListWithContext(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	return retry(ctx, w, "list", func() (runtime.Object, error) { return w.lw.ListWithContext(ctx, opts) })
}

func (w *ListerWatcher) WatchWithContext(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return retry(ctx, w, "watch", func() (watch.Interface, error) { return w.lw.WatchWithContext(ctx, opts) })
}

// IsWatchListSemanticsUnSupported passes on what the wrapped ListerWatcher
// says about streaming lists (the reflector asks it).
func (w *ListerWatcher) IsWatchListSemanticsUnSupported() bool {
	u, ok := w.inner.(interface{ IsWatchListSemanticsUnSupported() bool })
	return ok && u.IsWatchListSemanticsUnSupported()
}

// List and Watch serve callers without a context.
func (w *ListerWatcher) List(opts metav1.ListOptions) (runtime.Object, error) {
	return w.ListWithContext(context.Background(), opts)
}

func (w *ListerWatcher) Watch(opts metav1.ListOptions) (watch.Interface, error) {
	return w.WatchWithContext(context.Background(), opts)
}

// retry calls fn until it succeeds or fails with an error that is not
// transient, pausing 100 ms, doubling to w.cap, between attempts.
func retry[T any](ctx context.Context, w *ListerWatcher, what string, fn func() (T, error)) (T, error) {
	pause := min(100*time.Millisecond, w.cap)
	var failedAt time.Time
	attempts := 0
	for {
		v, err := fn()
		if ctx.Err() != nil {
			var zero T
			return zero, ctx.Err()
		}
		if err == nil || !Transient(err) {
			if err == nil && attempts > 0 {
				w.log.Info("API server answers again", "call", what, "failedFor", time.Since(failedAt).Round(time.Millisecond), "attempts", attempts+1)
			}
			return v, err
		}
		if attempts == 0 {
			failedAt = time.Now()
			w.log.Info("API server unreachable; retrying", "call", what, "every", w.cap, "err", err.Error())
		}
		attempts++
		// Up to a tenth of jitter, so that many clients do not retry in
		// step; an overloaded server that asks for a longer pause
		// (Retry-After on a 429 or 503) gets it.
		wait := pause + rand.N(pause/10+1)
		if secs, ok := apierrors.SuggestsClientDelay(err); ok {
			wait = max(wait, min(time.Duration(secs)*time.Second, maxServerDelay))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			var zero T
			return zero, ctx.Err()
		case <-t.C:
		}
		pause = min(2*pause, w.cap)
	}
}

// Transient reports whether err says the API server could not be reached
// or was overloaded or unavailable, rather than that it refused the call.
func Transient(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		switch status.Status().Code {
		case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
		return false
	}
	// No answer from the server: a transport error (refused, reset,
	// timed out, EOF, a closed connection). Anything else (a response
	// that does not decode) is not retried.
	var urlErr *url.Error
	var netErr net.Error
	return errors.As(err, &urlErr) || errors.As(err, &netErr) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || utilnet.IsProbableEOF(err) || utilnet.IsConnectionReset(err)
}
