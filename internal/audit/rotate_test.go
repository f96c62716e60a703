package audit

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// readLines reads the lines of the files, in order, failing on a line that
// lacks its newline.
func readLines(t *testing.T, files ...string) []string {
	t.Helper()
	var lines []string
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 0 && b[len(b)-1] != '\n' {
			t.Fatalf("%s ends inside a line", name)
		}
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
	}
	return lines
}

func TestRotatingFileConcurrentWritesLoseNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	const writers, perWriter, maxSize = 8, 200, 1024
	w, err := openRotatingFile(path, maxSize, 100) // more than the rotations: keeps every line
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range perWriter {
				if _, err := fmt.Fprintf(w, "{\"writer\":%d,\"seq\":%04d}\n", g, i); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	files := []string{path}
	for i := 1; ; i++ {
		name := path + "." + strconv.Itoa(i)
		if _, err := os.Stat(name); err != nil {
			break
		}
		files = append(files, name)
	}
	if len(files) < 2 {
		t.Fatalf("no rotation happened: %v", files)
	}
	for _, name := range files {
		if st, _ := os.Stat(name); st.Size() > maxSize {
			t.Errorf("%s has %d bytes, more than %d", name, st.Size(), maxSize)
		}
	}
	seen := make(map[string]int)
	for _, l := range readLines(t, files...) {
		seen[l]++
	}
	for g := range writers {
		for i := range perWriter {
			l := fmt.Sprintf("{\"writer\":%d,\"seq\":%04d}", g, i)
			if seen[l] != 1 {
				t.Errorf("line %s written %d times", l, seen[l])
			}
			delete(seen, l)
		}
	}
	if len(seen) != 0 {
		t.Errorf("unexpected lines: %v", seen)
	}
}

func TestRotatingFileKeepsBoundedFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	const lines, maxSize, maxFiles = 500, 512, 3
	w, err := openRotatingFile(path, maxSize, maxFiles)
	if err != nil {
		t.Fatal(err)
	}
	for i := range lines {
		if _, err := fmt.Fprintf(w, "line %06d\n", i); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"audit.log", "audit.log.1", "audit.log.2", "audit.log.3"}; strings.Join(names, ",") != strings.Join(want, ",") {
		t.Fatalf("files %v, want %v", names, want)
	}
	// Oldest to newest, the kept lines are the last ones written, in order
	// and without a gap.
	got := readLines(t, path+".3", path+".2", path+".1", path)
	if len(got) == 0 || len(got) >= lines {
		t.Fatalf("%d lines kept", len(got))
	}
	first := lines - len(got)
	for i, l := range got {
		if want := fmt.Sprintf("line %06d", first+i); l != want {
			t.Fatalf("kept line %d = %q, want %q", i, l, want)
		}
	}
}

func TestRotatingFileAppendsAndOversizedWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(path, []byte("old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := openRotatingFile(path, 10, 2)
	if err != nil {
		t.Fatal(err)
	}
	// Fits after the 4 existing bytes.
	if _, err := w.Write([]byte("abcde\n")); err != nil {
		t.Fatal(err)
	}
	// Larger than the maximum: rotated into a file of its own.
	long := strings.Repeat("x", 25) + "\n"
	if _, err := w.Write([]byte(long)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("next\n")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		path + ".2": "old\nabcde\n",
		path + ".1": long,
		path:        "next\n",
	} {
		b, err := os.ReadFile(name)
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
	}
	if _, err := w.Write([]byte("late\n")); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("write after close: %v", err)
	}
}

func TestOpenRotatingFileRejectsNoFiles(t *testing.T) {
	if _, err := openRotatingFile(filepath.Join(t.TempDir(), "a"), 10, 0); err == nil {
		t.Error("maxFiles 0 accepted")
	}
}
