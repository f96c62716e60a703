package audit

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"sync"
)

// StdoutPath, as Config.Output, writes the log to standard output.
const StdoutPath = "-"

// rotatingFile appends to a file and, before a write would take it past
// maxSize, renames it to path.1 (path.1 to path.2, and so on, removing
// path.<maxFiles>) and starts a new one. Writes are serialized and each is
// kept whole in one file, so a caller writing whole lines never sees a line
// split or lost by rotation.
type rotatingFile struct {
	mu       sync.Mutex
	path     string
	maxSize  int64 // <= 0: never rotate
	maxFiles int   // rotated files kept, >= 1
	f        *os.File
	size     int64
	closed   bool
	// onRotateError, when set, hears of rotations that failed while the
	// file stayed writable.
	onRotateError func(error)
}

func openRotatingFile(path string, maxSize int64, maxFiles int) (*rotatingFile, error) {
	if maxFiles < 1 {
		return nil, fmt.Errorf("rotated files to keep must be at least 1, not %d", maxFiles)
	}
	w := &rotatingFile{path: path, maxSize: maxSize, maxFiles: maxFiles}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *rotatingFile) open() error {
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return err
	}
	w.f, w.size = f, st.Size()
	return nil
}

// Write appends p, rotating first when p would take a non-empty file past
// the maximum size. A p larger than the maximum still goes whole into a
// file of its own.
func (w *rotatingFile) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, fs.ErrClosed
	}
	if w.f == nil {
		// A previous rotation could not reopen the file: try again.
		if err := w.open(); err != nil {
			return 0, err
		}
	}
	if w.maxSize > 0 && w.size > 0 && w.size+int64(len(p)) > w.maxSize {
		if err := w.rotate(); err != nil {
			if w.f == nil {
				return 0, err
			}
			if w.onRotateError != nil {
				w.onRotateError(err)
			}
		}
	}
	n, err := w.f.Write(p)
	w.size += int64(n)
	return n, err
}

// rotate shifts the rotated files and reopens path. When a rename fails the
// current file is reopened and written on: the log grows past its maximum
// rather than losing lines.
func (w *rotatingFile) rotate() error {
	errs := []error{w.f.Close()}
	w.f = nil
	name := func(i int) string { return w.path + "." + strconv.Itoa(i) }
	if err := os.Remove(name(w.maxFiles)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	for i := w.maxFiles - 1; i >= 1; i-- {
		if err := os.Rename(name(i), name(i+1)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Rename(w.path, name(1)); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, w.open())
	return errors.Join(errs...)
}

// Close closes the file.
func (w *rotatingFile) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// stdout serializes writes to standard output and does not close it.
type stdout struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *stdout) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *stdout) Close() error { return nil }

// openOutput opens the log output: a rotating file, or standard output for
// StdoutPath.
func openOutput(path string, maxSize int64, maxFiles int, onRotateError func(error)) (io.WriteCloser, error) {
	if path == StdoutPath {
		return &stdout{w: os.Stdout}, nil
	}
	w, err := openRotatingFile(path, maxSize, maxFiles)
	if err != nil {
		return nil, err
	}
	w.onRotateError = onRotateError
	return w, nil
}
