package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/dropsapi"
	"github.com/nftguard/nftguard/internal/dropsapi/wire"
)

// replica is a drops API replica without authentication: a real store
// behind the push path, which can be taken down.
type replica struct {
	*httptest.Server
	store  *dropsapi.Store
	down   atomic.Bool
	tokens sync.Map
}

func newReplica(t *testing.T) *replica {
	r := &replica{store: dropsapi.NewStore(dropsapi.StoreConfig{})}
	r.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if r.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		r.tokens.Store(req.Header.Get("Authorization"), true)
		var pr wire.PushRequest
		if err := json.NewDecoder(req.Body).Decode(&pr); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_ = json.NewEncoder(w).Encode(wire.PushResponse{Next: r.store.Push(pr.Node, &pr)})
	}))
	r.Start()
	t.Cleanup(r.Close)
	return r
}

func (r *replica) held() int {
	n := 0
	for _, nl := range r.store.Lines(func(*audit.Event) bool { return true }) {
		n += len(nl.Lines)
	}
	return n
}

func lines(n int, from int) []audit.Event {
	out := make([]audit.Event, n)
	for i := range out {
		out[i] = audit.Event{Time: time.Unix(int64(from+i), 0), Action: audit.ActionDrop, Direction: audit.Ingress, Count: 1}
	}
	return out
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPusherDeliversToEveryReplicaAndCatchesUp(t *testing.T) {
	a, b := newReplica(t), newReplica(t)
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("first\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var servers atomic.Value
	servers.Store([]string{a.URL})
	p := &Pusher{
		Node: "n1", TokenFile: token, Transport: http.DefaultTransport, Interval: 20 * time.Millisecond,
		Capacity: 100, MaxBatch: 30, Log: testr.New(t),
		Servers: func() []string { return servers.Load().([]string) },
	}
	p.Add(lines(50, 0)) // before it starts: held
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = p.Start(ctx) }()
	eventually(t, "a takes the 50 lines", func() bool { return a.held() == 50 })
	if c := p.Condition(); c.Status != metav1.ConditionTrue {
		t.Fatalf("condition %+v", c)
	}

	// A second replica appears: it receives what is held, in batches.
	servers.Store([]string{a.URL, b.URL})
	eventually(t, "b takes the held lines", func() bool { return b.held() == 50 })

	// b goes away; lines keep coming; a takes them, b's wait.
	b.down.Store(true)
	p.Add(lines(40, 50))
	eventually(t, "a takes the new lines", func() bool { return a.held() == 90 })
	eventually(t, "b's failure shows", func() bool { return p.Condition().Reason == "PushFailed" })
	// The token is read again for each push.
	if err := os.WriteFile(token, []byte("renewed\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b.down.Store(false)
	eventually(t, "b catches up", func() bool { return b.held() == 90 })
	eventually(t, "delivered again", func() bool { return p.Condition().Status == metav1.ConditionTrue })
	if _, ok := b.tokens.Load("Bearer renewed"); !ok {
		t.Fatal("the renewed token was not used")
	}
	if a.held() != 90 {
		t.Fatalf("a holds %d lines, want 90 (none twice)", a.held())
	}

	// Past Capacity, a replica that was away misses the oldest lines.
	b.down.Store(true)
	for i := range 5 {
		p.Add(lines(30, 90+30*i))
		eventually(t, "a takes them", func() bool { return a.held() == 90+30*(i+1) })
	}
	b.down.Store(false)
	eventually(t, "b takes what is still held", func() bool { return b.held() == 90+100 })

	// No replica known.
	servers.Store([]string{})
	eventually(t, "no server condition", func() bool { return p.Condition().Reason == "NoDropsServer" })
}

func TestPusherAddNeverBlocks(t *testing.T) {
	p := &Pusher{Capacity: 10, MaxBatch: 5, Servers: func() []string { return nil }}
	for i := range 100 {
		p.Add(lines(3, i*3))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.lines) != 10 || p.base != 290 {
		t.Fatalf("held %d lines from %d, want the newest 10 from 290", len(p.lines), p.base)
	}
}
