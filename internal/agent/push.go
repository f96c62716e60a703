package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/dropsapi/wire"
)

// Pusher sends the drop log's lines to every replica of the drops API
// (dropsapi). It keeps the last Capacity lines, numbered within a stream
// drawn anew at each start, and what each replica has taken: a replica
// that was away, or is new, receives what it missed while the lines are
// still held. The agent listens on no port for drops, and no user's
// credential ever reaches it.
type Pusher struct {
	Node string
	// Servers returns the base URLs (https://host:port) of the replicas.
	Servers func() []string
	// TokenFile holds a service-account token for the audience
	// wire.Audience, bound to this agent's pod (and so to its node); it
	// is read again for every push, as the kubelet renews it.
	TokenFile string
	// CAFile holds the CA bundle the replicas' certificate is verified
	// with, as ServerName; it is read again when it changes.
	CAFile     string
	ServerName string
	// Capacity is the number of lines held (default 4096); Interval how
	// often lines are pushed (default 1 s, sooner once MaxBatch lines
	// wait); MaxBatch the most lines in one push (default 1000).
	Capacity int
	Interval time.Duration
	MaxBatch int
	// OnChange is called when the condition changes.
	OnChange func()
	Log      logr.Logger
	// Transport, when set, replaces the TLS transport built from CAFile.
	Transport http.RoundTripper

	mu      sync.Mutex
	stream  string
	base    uint64        // sequence number of lines[0]
	lines   []audit.Event // the held lines
	acked   map[string]uint64
	failed  map[string]string // replica -> why its last push failed
	known   bool              // whether a replica was known at the last push
	wake    chan struct{}
	caPEM   []byte
	client  *http.Client
	started bool
}

const (
	defaultPushCapacity = 4096
	defaultPushMaxBatch = 1000
)

func (p *Pusher) init() {
	if p.wake != nil {
		return
	}
	if p.Capacity <= 0 {
		p.Capacity = defaultPushCapacity
	}
	if p.MaxBatch <= 0 {
		p.MaxBatch = defaultPushMaxBatch
	}
	if p.Interval <= 0 {
		p.Interval = time.Second
	}
	p.stream = rand.String(16)
	p.acked = map[string]uint64{}
	p.failed = map[string]string{}
	p.wake = make(chan struct{}, 1)
}

// Add holds lines for the replicas. It never blocks: past Capacity the
// oldest lines are forgotten (a replica that had not taken them counts a
// gap).
func (p *Pusher) Add(lines []audit.Event) {
	if len(lines) == 0 {
		return
	}
	p.mu.Lock()
	p.init()
	p.lines = append(p.lines, lines...)
	if over := len(p.lines) - p.Capacity; over > 0 {
		p.lines = slices.Delete(p.lines, 0, over)
		p.base += uint64(over)
	}
	waiting := len(p.lines) >= p.MaxBatch
	p.mu.Unlock()
	if waiting {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// NeedLeaderElection implements manager.LeaderElectionRunnable.
func (p *Pusher) NeedLeaderElection() bool { return false }

// Start pushes until ctx is done.
func (p *Pusher) Start(ctx context.Context) error {
	p.mu.Lock()
	p.init()
	p.started = true
	p.mu.Unlock()
	t := time.NewTicker(p.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-p.wake:
		}
		p.pushAll(ctx)
	}
}

// pushAll brings every replica up to date, as far as it can.
func (p *Pusher) pushAll(ctx context.Context) {
	servers := p.Servers()
	p.mu.Lock()
	changed := p.known != (len(servers) > 0)
	p.known = len(servers) > 0
	for s := range p.acked {
		if !slices.Contains(servers, s) {
			delete(p.acked, s)
			delete(p.failed, s)
		}
	}
	p.mu.Unlock()
	for _, s := range servers {
		err := p.catchUp(ctx, s)
		p.mu.Lock()
		before, had := p.failed[s]
		if err != nil {
			p.failed[s] = err.Error()
			changed = changed || !had
			if !had || before != err.Error() {
				p.Log.Info("Cannot push drops to a replica of the drops API; its lines wait", "server", s, "error", err.Error())
			}
		} else {
			delete(p.failed, s)
			changed = changed || had
		}
		p.mu.Unlock()
	}
	if changed && p.OnChange != nil {
		p.OnChange()
	}
}

// catchUp pushes to s what it has not taken, a batch at a time.
func (p *Pusher) catchUp(ctx context.Context, s string) error {
	for range 16 {
		p.mu.Lock()
		from, ok := p.acked[s]
		if !ok || from < p.base {
			from = p.base
		}
		end := p.base + uint64(len(p.lines))
		if from >= end && ok {
			p.mu.Unlock()
			return nil
		}
		n := min(int(end-from), p.MaxBatch)
		batch := slices.Clone(p.lines[from-p.base : from-p.base+uint64(n)])
		req := wire.PushRequest{Node: p.Node, Stream: p.stream, First: from, Lines: batch}
		p.mu.Unlock()
		next, err := p.send(ctx, s, &req)
		if err != nil {
			return err
		}
		p.mu.Lock()
		p.acked[s] = next
		p.mu.Unlock()
		if n == 0 {
			return nil
		}
	}
	return nil
}

func (p *Pusher) send(ctx context.Context, server string, req *wire.PushRequest) (uint64, error) {
	token, err := os.ReadFile(p.TokenFile)
	if err != nil {
		return 0, fmt.Errorf("reading the token: %w", err)
	}
	c, err := p.httpClient()
	if err != nil {
		return 0, err
	}
	body, err := json.Marshal(req)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(server, "/")+wire.PushPath, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := c.Do(hr)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		var st metav1.Status
		if json.Unmarshal(b, &st) == nil && st.Message != "" {
			return 0, fmt.Errorf("%s: %s", resp.Status, st.Message)
		}
		return 0, errors.New(resp.Status)
	}
	var pr wire.PushResponse
	if err := json.Unmarshal(b, &pr); err != nil {
		return 0, fmt.Errorf("push response: %w", err)
	}
	return pr.Next, nil
}

// httpClient returns a client trusting CAFile, built again when it changes.
func (p *Pusher) httpClient() (*http.Client, error) {
	if p.Transport != nil {
		if p.client == nil {
			p.client = &http.Client{Transport: p.Transport}
		}
		return p.client, nil
	}
	ca, err := os.ReadFile(p.CAFile)
	if err != nil {
		return nil, fmt.Errorf("reading the drops API's CA: %w", err)
	}
	if p.client != nil && bytes.Equal(ca, p.caPEM) {
		return p.client, nil
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("no certificate in %s", p.CAFile)
	}
	p.caPEM = ca
	p.client = &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots, ServerName: p.ServerName, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     90 * time.Second,
	}}
	return p.client, nil
}

// Condition implements Part: DropsDelivered.
func (p *Pusher) Condition() metav1.Condition {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := metav1.Condition{Type: v1alpha1.ConditionDropsDelivered}
	switch {
	case !p.started:
		c.Status, c.Reason, c.Message = metav1.ConditionUnknown, v1alpha1.ReasonNoDropsServer, "not pushing yet"
	case !p.known:
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, v1alpha1.ReasonNoDropsServer,
			"no replica of the drops API is ready; lines wait (the newest are held) and the drop log file has them"
	case len(p.failed) > 0:
		servers := slices.Sorted(maps.Keys(p.failed))
		c.Status, c.Reason = metav1.ConditionFalse, v1alpha1.ReasonPushFailed
		c.Message = fmt.Sprintf("cannot push to %s: %s; lines wait (the newest are held) and the drop log file has them",
			servers[0], p.failed[servers[0]])
		if len(servers) > 1 {
			c.Message = fmt.Sprintf("%d replicas refuse or cannot be reached; %s", len(servers), c.Message)
		}
	default:
		c.Status, c.Reason, c.Message = metav1.ConditionTrue, v1alpha1.ReasonReady,
			fmt.Sprintf("Pushing drops to %d replica(s) of the drops API", len(p.acked))
	}
	return c
}
