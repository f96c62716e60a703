package audit

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the follower and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestFollow: the follower waits for the file, copies whole lines only, and
// goes on across a rotation (rename, new file) and a truncation, with
// every line once and in order.
func TestFollow(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "drops.log")
	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Follow(ctx, path, &out, 5*time.Millisecond) }()

	waitFor := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for out.String() != want {
			if time.Now().After(deadline) {
				t.Fatalf("followed:\n%q\nwant:\n%q", out.String(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	appendTo := func(s string) {
		t.Helper()
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(s); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	var want strings.Builder
	line := func(i int) string { return fmt.Sprintf(`{"schema":1,"n":%d}`+"\n", i) }

	// No file yet, then one with a partial line: nothing until it ends.
	time.Sleep(20 * time.Millisecond)
	appendTo(line(1) + `{"schema":1,`)
	want.WriteString(line(1))
	waitFor(want.String())
	appendTo(`"n":2}` + "\n")
	want.WriteString(line(2))
	waitFor(want.String())

	// Rotation: the writer renames the file and starts a new one.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	appendTo(line(3))
	want.WriteString(line(3))
	waitFor(want.String())

	// Truncation: start over at the top of the same file. The new line
	// is shorter than what was read, so the follower sees the file shrink
	// whenever it looks.
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	appendTo("{\"n\":4}\n")
	want.WriteString("{\"n\":4}\n")
	waitFor(want.String())

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
