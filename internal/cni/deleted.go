package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nftguard/nftguard/internal/cni/atomicfile"
)

// DeletedDir is the directory, in the agent's state directory, where the
// plugin records the DELs the agent could not take (it was down): the
// agent replays them when it runs again, so that an address whose pod went
// meanwhile is not left ready for that pod until GC.
func DeletedDir(stateDir string) string { return filepath.Join(stateDir, "deleted") }

// deletedVersion is the format of a recorded DEL.
const deletedVersion = 1

// deleted is one recorded DEL.
type deleted struct {
	Version     int       `json:"version"`
	ContainerID string    `json:"containerID"`
	IfName      string    `json:"ifName"`
	Time        time.Time `json:"time"`
}

// RecordDeleted records a DEL of key at time now in stateDir, for the agent
// to replay.
func RecordDeleted(stateDir string, key AttachmentKey, now time.Time) error {
	dir := DeletedDir(stateDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("recording the DEL of %s: %w", key, err)
	}
	b, err := json.Marshal(deleted{Version: deletedVersion, ContainerID: key.ContainerID, IfName: key.IfName, Time: now})
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, recordFile(key)), b, 0o600); err != nil {
		return fmt.Errorf("recording the DEL of %s: %w", key, err)
	}
	return nil
}

// ReplayDeleted applies the DELs the plugin recorded while the agent could
// not take them, and removes their files: each forgets its attachment if
// that attachment's ADD came before the DEL (a later ADD of the same key is
// a new attachment). It returns the attachments forgotten. A file that
// cannot be read is logged and removed: a DEL is retried by the runtime,
// and GC removes what is left.
func (r *Registry) ReplayDeleted() ([]Attachment, error) {
	dir := DeletedDir(r.dir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the recorded DELs: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Attachment
	var errs []error
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, name)
		switch {
		case atomicfile.IsTemp(name):
			_, _ = atomicfile.Remove(path) // a write the plugin did not finish
			continue
		case !strings.HasSuffix(name, ".json"):
			continue
		}
		var d deleted
		b, err := os.ReadFile(path)
		if err == nil {
			err = json.Unmarshal(b, &d)
		}
		if err == nil && d.Version != deletedVersion {
			err = fmt.Errorf("format version %d, want %d", d.Version, deletedVersion)
		}
		key := AttachmentKey{ContainerID: d.ContainerID, IfName: d.IfName}
		if err == nil && recordFile(key) != name {
			err = fmt.Errorf("holds the DEL of %s, whose file is %s", key, recordFile(key))
		}
		if err != nil {
			r.log.Error(err, "Removing a recorded DEL that cannot be read", "path", path)
		} else if rec, ok := r.records[key]; ok && rec.Added.Before(d.Time) {
			a := rec.Attachment
			if _, err := r.del(key); err != nil {
				errs = append(errs, err)
				continue // kept: the next replay tries again
			}
			out = append(out, a)
		}
		if _, err := atomicfile.Remove(path); err != nil {
			errs = append(errs, fmt.Errorf("removing the recorded DEL %s: %w", path, err))
		}
	}
	return out, errors.Join(errs...)
}
