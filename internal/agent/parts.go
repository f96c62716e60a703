package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/audit"
)

// Part is an optional part of the agent. Its failure never stops the
// agent from programming: the part retries, and its condition on the
// node's NodeRuleSet says what is wrong.
type Part interface {
	// Condition is the part's condition (type, status, reason, message).
	Condition() metav1.Condition
}

// auditPart is the drop log's condition, AuditLogReady.
type auditPart struct {
	log    *audit.Logger
	output string
	group  uint16
}

func (p auditPart) Condition() metav1.Condition {
	ok, reason, msg := p.log.Ready()
	if ok {
		return metav1.Condition{Type: v1alpha1.ConditionAuditLogReady, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonReady,
			Message: fmt.Sprintf("Logging the drops of NFLOG group %d to %s", p.group, p.output)}
	}
	switch reason {
	case audit.ReasonNFLOGUnavailable:
		reason = v1alpha1.ReasonNFLOGUnavailable
	case audit.ReasonWriteFailed:
		reason = v1alpha1.ReasonWriteFailed
	}
	return metav1.Condition{Type: v1alpha1.ConditionAuditLogReady, Status: metav1.ConditionFalse, Reason: reason,
		Message: msg + "; packets are still dropped, but their lines are lost until this recovers (retrying)"}
}

// Endpoints serves the agent's HTTP endpoints (metrics, health probes,
// drops). An address that cannot be bound (another process on the host
// network holds the port, say) is retried every Retry; meanwhile the
// agent programs as usual, and EndpointsReady names what is not served.
type Endpoints struct {
	// Listen opens a listener (default net.Listen).
	Listen func(network, address string) (net.Listener, error)
	// Retry is the wait before binding again (default 5 s).
	Retry time.Duration
	// OnChange is called when an endpoint starts or stops being served.
	OnChange func()
	Log      logr.Logger

	list []*endpoint
	mu   sync.Mutex
	up   *prometheus.GaugeVec
}

type endpoint struct {
	name, address string
	serve         func(ctx context.Context, ln net.Listener) error
	err           error // why it is not served; nil while served or starting
	serving       bool
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: every agent serves.
func (e *Endpoints) NeedLeaderElection() bool { return false }

// Add registers an endpoint; serve serves on the listener until ctx ends.
func (e *Endpoints) Add(name, address string, serve func(ctx context.Context, ln net.Listener) error) {
	e.list = append(e.list, &endpoint{name: name, address: address, serve: serve})
}

// register makes the endpoint_up metric, registered with reg.
func (e *Endpoints) register(reg prometheus.Registerer) error {
	e.up = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "nftguard_agent_endpoint_up",
		Help: "1 while the agent serves the endpoint (metrics, health, drops), 0 while its address cannot be bound (it retries).",
	}, []string{"endpoint"})
	return reg.Register(e.up)
}

// Start serves every endpoint until ctx ends; it never fails.
func (e *Endpoints) Start(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, ep := range e.list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.run(ctx, ep)
		}()
	}
	wg.Wait()
	return nil
}

func (e *Endpoints) run(ctx context.Context, ep *endpoint) {
	listen := e.Listen
	if listen == nil {
		listen = net.Listen
	}
	retry := e.Retry
	if retry <= 0 {
		retry = 5 * time.Second
	}
	var last string
	for ctx.Err() == nil {
		ln, err := listen("tcp", ep.address)
		if err == nil {
			e.set(ep, nil, true)
			last = ""
			err = ep.serve(ctx, ln)
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				err = fmt.Errorf("stopped serving")
			}
		}
		e.set(ep, err, false)
		if err.Error() != last {
			e.Log.Error(err, "Cannot serve an endpoint; the agent keeps programming, and binds again shortly", "endpoint", ep.name, "address", ep.address, "retryIn", retry)
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

func (e *Endpoints) set(ep *endpoint, err error, serving bool) {
	e.mu.Lock()
	changed := ep.serving != serving || (ep.err == nil) != (err == nil)
	ep.err, ep.serving = err, serving
	e.mu.Unlock()
	if e.up != nil {
		v := 0.0
		if serving {
			v = 1
		}
		e.up.WithLabelValues(ep.name).Set(v)
	}
	if changed && e.OnChange != nil {
		e.OnChange()
	}
}

// Condition is EndpointsReady: True when every endpoint is served.
func (e *Endpoints) Condition() metav1.Condition {
	e.mu.Lock()
	defer e.mu.Unlock()
	var served, failed []string
	for _, ep := range e.list {
		switch {
		case ep.serving:
			served = append(served, ep.name+" on "+ep.address)
		case ep.err != nil:
			failed = append(failed, fmt.Sprintf("%s on %s: %v", ep.name, ep.address, ep.err))
		default:
			failed = append(failed, ep.name+" on "+ep.address+": starting")
		}
	}
	slices.Sort(served)
	if len(failed) == 0 {
		return metav1.Condition{Type: v1alpha1.ConditionEndpointsReady, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonReady,
			Message: "Serving " + strings.Join(served, ", ")}
	}
	return metav1.Condition{Type: v1alpha1.ConditionEndpointsReady, Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonListenFailed,
		Message: "Not serving " + strings.Join(failed, "; ") + "; the agent programs as usual and binds again shortly"}
}

// serveHTTP serves h on ln until ctx ends.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	return serveUntilDone(ctx, srv, func() error { return srv.Serve(ln) })
}

// serveUntilDone runs serve (srv's Serve or ServeTLS) until it fails or
// ctx ends, then shuts srv down, giving requests 5 s to finish.
func serveUntilDone(ctx context.Context, srv *http.Server, serve func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- serve() }()
	select {
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(shutdown)
	case err := <-errc:
		return err
	}
}

// healthHandler answers /healthz and /readyz: the agent's process is up
// (kubelet restarts it otherwise). What it enforces is in its NodeRuleSet.
func healthHandler() http.Handler {
	mux := http.NewServeMux()
	ok := func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }
	mux.HandleFunc("/healthz", ok)
	mux.HandleFunc("/readyz", ok)
	return mux
}
