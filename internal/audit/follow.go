package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// Follow copies the drop log at path to w, line by line, from the start of
// the current file and then as lines are appended, across rotations (the
// file renamed to path.1 and a new one created), until ctx ends: `tail -n +1
// -F` for an image that has no tail. It waits for a file that does not exist
// yet. Only whole lines are written.
func Follow(ctx context.Context, path string, w io.Writer, poll time.Duration) error {
	var (
		f       *os.File
		pending []byte
		buf     = make([]byte, 64<<10)
	)
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	// drain copies what f holds now; it returns at the end of the file.
	drain := func() error {
		for {
			n, err := f.Read(buf)
			if n > 0 {
				pending = append(pending, buf[:n]...)
				if i := bytes.LastIndexByte(pending, '\n'); i >= 0 {
					if _, werr := w.Write(pending[:i+1]); werr != nil {
						return werr
					}
					pending = append(pending[:0], pending[i+1:]...)
				}
			}
			if errors.Is(err, io.EOF) || (err == nil && n == 0) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("reading %s: %w", path, err)
			}
		}
	}
	for {
		if f == nil {
			var err error
			if f, err = os.Open(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		if f != nil {
			if err := drain(); err != nil {
				return err
			}
			// Rotated (another file at path now) or truncated?
			cur, err1 := f.Stat()
			now, err2 := os.Stat(path)
			switch {
			case err1 != nil:
				return err1
			case err2 != nil || !sameFile(cur, now):
				// Renamed: the writer may have appended to it
				// since the last drain; once it has a new file the
				// old one is complete. Go on with the new one.
				if err2 == nil || errors.Is(err2, os.ErrNotExist) {
					if err := drain(); err != nil {
						return err
					}
					f.Close()
					f, pending = nil, pending[:0]
					continue
				}
				return err2
			default:
				if off, err := f.Seek(0, io.SeekCurrent); err == nil && now.Size() < off {
					if _, err := f.Seek(0, io.SeekStart); err != nil {
						return err
					}
					pending = pending[:0]
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(poll):
		}
	}
}

func sameFile(a, b os.FileInfo) bool {
	sa, ok1 := a.Sys().(*syscall.Stat_t)
	sb, ok2 := b.Sys().(*syscall.Stat_t)
	if !ok1 || !ok2 {
		return os.SameFile(a, b)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}
