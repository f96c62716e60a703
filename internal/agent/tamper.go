package agent

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// NotificationSource is a subscription to nf_tables change notifications
// (nftnl.Monitor).
type NotificationSource interface {
	Receive() ([]model.Notification, error)
	Close() error
}

// TamperWatch wakes the reconciler the moment anyone but the agent changes
// table inet nftguard: it subscribes to the kernel's nf_tables
// notifications and tells the agent's own transactions from others' by the
// netlink port id they came on (Owns), never by what they contain, so that
// whatever the agent writes, for the CNI plugin's pods included, is never
// taken for tampering. The reconciler then compares the kernel's table
// with the one it applied and repairs the difference; the periodic resync
// stays as a backstop for a notification the kernel could not deliver
// (ENOBUFS on a busy socket means exactly that: verify now).
type TamperWatch struct {
	// Open subscribes; it is called again after a failure.
	Open func() (NotificationSource, error)
	// Owns reports whether a port id is one of the agent's write sockets.
	Owns func(portID uint32) bool
	// Wake asks the reconciler to check the table now (Reconciler.Wake).
	Wake func()
	Log  logr.Logger
	// Retry is the wait before subscribing again after a failure (default 1s).
	Retry time.Duration

	up       prometheus.Gauge
	changes  prometheus.Counter
	overruns prometheus.Counter
}

// init makes the metrics, registered with reg.
func (w *TamperWatch) init(reg prometheus.Registerer) error {
	w.up = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "nftguard_agent_tamper_watch_up",
		Help: "1 while the agent is subscribed to nf_tables change notifications (tampering is repaired at once), 0 while only the periodic resync repairs it.",
	})
	w.changes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nftguard_agent_foreign_changes_total",
		Help: "Notifications of changes to table inet nftguard made by another process than the agent.",
	})
	w.overruns = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nftguard_agent_notification_overruns_total",
		Help: "Times the kernel dropped nf_tables notifications the agent had no room for (ENOBUFS); each one triggers a check of the table.",
	})
	for _, c := range []prometheus.Collector{w.up, w.changes, w.overruns} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Start runs until ctx ends. A failure to subscribe or receive never stops
// the agent: it is logged, the metric says so, and it subscribes again.
func (w *TamperWatch) Start(ctx context.Context) error {
	retry := w.Retry
	if retry <= 0 {
		retry = time.Second
	}
	for {
		src, err := w.Open()
		if err != nil {
			w.Log.Error(err, "Cannot subscribe to nf_tables notifications; tampering is repaired by the periodic resync only until it can", "retryIn", retry)
		} else {
			w.receive(ctx, src)
		}
		w.up.Set(0)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(retry):
		}
	}
}

// receive handles notifications until the subscription fails or ctx ends.
func (w *TamperWatch) receive(ctx context.Context, src NotificationSource) {
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
		}
		_ = src.Close()
	}()
	w.up.Set(1)
	// Changes may have been made while not subscribed.
	w.Wake()
	// The foreign changes of the transaction being received: logged once
	// its end names who committed it.
	var pending []model.Notification
	for {
		ns, err := src.Receive()
		if errors.Is(err, unix.ENOBUFS) {
			w.overruns.Inc()
			w.Wake()
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				w.Log.Error(err, "Receiving nf_tables notifications failed; subscribing again")
			}
			return
		}
		poke := false
		for _, n := range ns {
			switch {
			case n.Object == model.ObjectGeneration:
				if len(pending) > 0 {
					w.Log.Info("Table inet nftguard changed by another process; restoring it",
						"changes", len(pending), "first", describe(pending, 5), "process", n.Process, "pid", n.PID)
					pending = pending[:0]
				}
			case n.Ours() && !w.Owns(n.PortID):
				w.changes.Inc()
				pending = append(pending, n)
				poke = true
			}
		}
		if poke {
			w.Wake()
		}
	}
}

func describe(ns []model.Notification, most int) string {
	var parts []string
	for i, n := range ns {
		if i == most {
			parts = append(parts, "...")
			break
		}
		parts = append(parts, n.String())
	}
	return strings.Join(parts, "; ")
}
