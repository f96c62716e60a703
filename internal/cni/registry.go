package cni

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/nftguard/nftguard/internal/cni/atomicfile"
)

// recordVersion is the format of a registry file.
const recordVersion = 1

// Registry is the agent's durable record of the attachments it has heard
// of: one JSON file per attachment in its directory, replaced atomically, so
// that after a restart or a reboot the agent knows which pod each address
// of the node's pod ranges belongs to before the runtime says anything
// again. It is safe for concurrent use.
//
// An address belongs to the attachment whose ADD claimed it last: when an
// ADD claims an address another attachment holds, that other attachment
// loses it for good (its file is rewritten without it), even if the newer
// attachment is deleted later. A DEL the agent never saw (it was down, and
// DEL then succeeds without it) thus never lets a reused address run under
// the old pod's identity. Every ADD takes the next number of a counter
// stored in its file, so that the order of claims survives a restart; if
// the agent died between writing a new attachment and rewriting the one it
// took an address from, loading settles the conflict by that number.
type Registry struct {
	dir string
	log logr.Logger
	// writeFile is atomicfile.Write (tests make it fail).
	writeFile func(path string, data []byte, mode os.FileMode) error

	mu      sync.Mutex
	seq     uint64
	records map[AttachmentKey]*record
	owners  map[netip.Addr]AttachmentKey
	// unsaved are records that lost addresses and whose files still list
	// them: no record is removed while one is left (see del).
	unsaved map[AttachmentKey]bool
	skipped []*RecordError
}

// record is the content of one registry file.
type record struct {
	Version int `json:"version"`
	// Seq orders ADDs: a higher Seq claimed its addresses later.
	Seq   uint64    `json:"seq"`
	Added time.Time `json:"added"`
	// Attachment holds the addresses the attachment still owns.
	Attachment Attachment `json:"attachment"`
}

// RecordError is a registry file that could not be loaded; it is skipped
// and left in place for inspection.
type RecordError struct {
	Path string
	Err  error
}

func (e *RecordError) Error() string { return fmt.Sprintf("attachment record %s: %v", e.Path, e.Err) }

func (e *RecordError) Unwrap() error { return e.Err }

// OpenRegistry loads the registry kept in dir, creating dir (mode 0700) if
// missing. A file that cannot be read or decoded is logged with its path,
// skipped (see Skipped) and left in place; only an unusable directory is an
// error. Temporary files of writes that a crash interrupted are removed.
func OpenRegistry(dir string, log logr.Logger) (*Registry, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the attachment registry %s: %w", dir, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading the attachment registry %s: %w", dir, err)
	}
	r := &Registry{
		dir:       dir,
		log:       log,
		writeFile: atomicfile.Write,
		records:   map[AttachmentKey]*record{},
		owners:    map[netip.Addr]AttachmentKey{},
		unsaved:   map[AttachmentKey]bool{},
	}
	var loaded []*record
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, name)
		switch {
		case atomicfile.IsTemp(name):
			if _, err := atomicfile.Remove(path); err != nil {
				log.Error(err, "Removing an interrupted attachment record write", "path", path)
			}
			continue
		case !e.Type().IsRegular() || !strings.HasSuffix(name, ".json"):
			continue
		}
		rec, err := readRecord(path)
		if err != nil {
			rerr := &RecordError{Path: path, Err: err}
			log.Error(err, "Skipping an attachment record that cannot be loaded", "path", path)
			r.skipped = append(r.skipped, rerr)
			continue
		}
		loaded = append(loaded, rec)
	}
	// Replay the claims in the order they were made.
	slices.SortFunc(loaded, func(a, b *record) int {
		return cmp.Or(cmp.Compare(a.Seq, b.Seq), compareKeys(a.Attachment.Key(), b.Attachment.Key()))
	})
	for _, rec := range loaded {
		r.seq = max(r.seq, rec.Seq)
		r.records[rec.Attachment.Key()] = rec
	}
	for _, rec := range loaded {
		r.claim(rec)
	}
	if err := r.flush(AttachmentKey{}); err != nil {
		// Memory holds the settled claims, and the files settle the same
		// way on the next load; the next change retries.
		log.Error(err, "Rewriting attachment records that lost addresses")
	}
	log.Info("Loaded the attachment registry", "dir", dir, "attachments", len(r.records), "skipped", len(r.skipped))
	return r, nil
}

// readRecord reads and checks one registry file.
func readRecord(path string) (*record, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	rec := &record{}
	if err := json.Unmarshal(b, rec); err != nil {
		return nil, fmt.Errorf("decoding: %w", err)
	}
	if rec.Version != recordVersion {
		return nil, fmt.Errorf("format version %d, want %d", rec.Version, recordVersion)
	}
	if err := rec.Attachment.validate(); err != nil {
		return nil, err
	}
	if want := recordFile(rec.Attachment.Key()); filepath.Base(path) != want {
		return nil, fmt.Errorf("holds attachment %s, whose file is %s", rec.Attachment.Key(), want)
	}
	rec.Attachment.IPs = normalizeIPs(rec.Attachment.IPs)
	return rec, nil
}

// recordFile is the name of an attachment's file: a hash, since container
// IDs and interface names are not guaranteed to be file-name safe.
func recordFile(k AttachmentKey) string {
	sum := sha256.Sum256([]byte(k.ContainerID + "\x00" + k.IfName))
	return hex.EncodeToString(sum[:16]) + ".json"
}

// Skipped returns the files OpenRegistry could not load.
func (r *Registry) Skipped() []*RecordError {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.skipped)
}

// Add records the attachment (replacing the one with its key, if any) as
// the latest claim of its addresses: attachments that held any of them lose
// them. When it returns an error the attachment may or may not be
// recorded; the runtime retries ADD.
func (r *Registry) Add(a Attachment) error {
	if err := a.validate(); err != nil {
		return err
	}
	a.IPs = normalizeIPs(a.IPs)
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := &record{Version: recordVersion, Seq: r.seq + 1, Added: time.Now().UTC(), Attachment: a}
	if err := r.write(rec); err != nil {
		return err
	}
	r.seq = rec.Seq
	r.forget(a.Key())
	r.records[a.Key()] = rec
	r.claim(rec)
	return r.flush(AttachmentKey{})
}

// claim makes rec the owner of its addresses; the records that lose some
// become unsaved.
func (r *Registry) claim(rec *record) {
	key := rec.Attachment.Key()
	for _, ip := range rec.Attachment.IPs {
		prev, ok := r.owners[ip]
		r.owners[ip] = key
		if !ok || prev == key {
			continue
		}
		loser := r.records[prev]
		loser.Attachment.IPs = slices.DeleteFunc(loser.Attachment.IPs, func(x netip.Addr) bool { return x == ip })
		r.unsaved[prev] = true
		r.log.Info("Address claimed by a newer attachment; the older one loses it", "ip", ip,
			"from", prev.String(), "fromPodUID", loser.Attachment.PodUID, "to", key.String(), "toPodUID", rec.Attachment.PodUID)
	}
}

// flush writes every unsaved record except skip's.
func (r *Registry) flush(skip AttachmentKey) error {
	var errs []error
	for key := range r.unsaved {
		if key == skip {
			continue
		}
		if err := r.write(r.records[key]); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(r.unsaved, key)
	}
	return errors.Join(errs...)
}

// forget drops the record of key from memory, with the addresses it owns.
func (r *Registry) forget(key AttachmentKey) {
	rec, ok := r.records[key]
	if !ok {
		return
	}
	for _, ip := range rec.Attachment.IPs {
		if r.owners[ip] == key {
			delete(r.owners, ip)
		}
	}
	delete(r.records, key)
}

// write stores rec in its file.
func (r *Registry) write(rec *record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding attachment %s: %w", rec.Attachment.Key(), err)
	}
	if err := r.writeFile(filepath.Join(r.dir, recordFile(rec.Attachment.Key())), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("recording attachment %s: %w", rec.Attachment.Key(), err)
	}
	return nil
}

// Del forgets the attachment with key; it reports whether there was one.
// Forgetting an unknown attachment is not an error.
func (r *Registry) Del(key AttachmentKey) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.del(key)
}

func (r *Registry) del(key AttachmentKey) (bool, error) {
	// While a record that lost addresses still lists them on disk, the
	// files of the records that took them must stay: without them, the
	// next load would give the addresses back.
	if err := r.flush(key); err != nil {
		return false, fmt.Errorf("forgetting attachment %s: %w", key, err)
	}
	// The file goes even if memory has no record: it may be one that
	// failed to load.
	if _, err := atomicfile.Remove(filepath.Join(r.dir, recordFile(key))); err != nil {
		return false, fmt.Errorf("forgetting attachment %s: %w", key, err)
	}
	_, had := r.records[key]
	r.forget(key)
	delete(r.unsaved, key)
	return had, nil
}

// DelPod forgets every attachment of the pod with uid and returns their
// keys.
func (r *Registry) DelPod(uid string) ([]AttachmentKey, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.delWhere(func(rec *record) bool { return rec.Attachment.PodUID == uid })
}

// GC forgets every attachment whose key is not in valid and returns their
// keys.
func (r *Registry) GC(valid []AttachmentKey) ([]AttachmentKey, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	keep := make(map[AttachmentKey]bool, len(valid))
	for _, k := range valid {
		keep[k] = true
	}
	return r.delWhere(func(rec *record) bool { return !keep[rec.Attachment.Key()] })
}

// delWhere forgets the attachments drop selects, in key order, going on
// past errors.
func (r *Registry) delWhere(drop func(*record) bool) ([]AttachmentKey, error) {
	var keys []AttachmentKey
	for k, rec := range r.records {
		if drop(rec) {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, compareKeys)
	var done []AttachmentKey
	var errs []error
	for _, k := range keys {
		if _, err := r.del(k); err != nil {
			errs = append(errs, err)
			continue
		}
		done = append(done, k)
	}
	return done, errors.Join(errs...)
}

// Check returns nil if the registry holds the attachment with exactly its
// addresses (and its pod UID, when set), else an error saying what
// differs.
func (r *Registry) Check(a Attachment) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, ok := r.records[a.Key()]
	if !ok {
		return fmt.Errorf("attachment %s is not registered", a.Key())
	}
	if a.PodUID != "" && a.PodUID != rec.Attachment.PodUID {
		return fmt.Errorf("attachment %s belongs to pod UID %s, not %s", a.Key(), rec.Attachment.PodUID, a.PodUID)
	}
	if want := normalizeIPs(a.IPs); !slices.Equal(want, rec.Attachment.IPs) {
		return fmt.Errorf("attachment %s holds addresses %v, not %v", a.Key(), rec.Attachment.IPs, want)
	}
	return nil
}

// Get returns the attachment with key, with the addresses it owns.
func (r *Registry) Get(key AttachmentKey) (Attachment, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, ok := r.records[key]
	if !ok {
		return Attachment{}, false
	}
	return cloneAttachment(rec.Attachment), true
}

// PodAddresses returns, for the UID of every pod with an attachment, the
// addresses its attachments own, sorted (empty if newer attachments took
// them all).
func (r *Registry) PodAddresses() map[string][]netip.Addr {
	return PodAddresses(r.Snapshot())
}

// PodAddresses groups the addresses of attachments (a Snapshot) by pod
// UID, sorted.
func PodAddresses(atts []Attachment) map[string][]netip.Addr {
	pods := map[string][]netip.Addr{}
	for _, att := range atts {
		pods[att.PodUID] = append(pods[att.PodUID], att.IPs...)
	}
	for uid, ips := range pods {
		pods[uid] = normalizeIPs(ips)
	}
	return pods
}

// HostInterfaces returns the host interfaces of every attachment of a
// Snapshot, sorted, each once; never nil.
func HostInterfaces(atts []Attachment) []string {
	out := []string{}
	for _, att := range atts {
		for _, name := range att.HostInterfaces {
			if ValidIfname(name) {
				out = append(out, name)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Snapshot returns every attachment with the addresses it owns, oldest
// claim first; no address appears twice. The caller owns the result.
func (r *Registry) Snapshot() []Attachment {
	r.mu.Lock()
	defer r.mu.Unlock()
	recs := make([]*record, 0, len(r.records))
	for _, rec := range r.records {
		recs = append(recs, rec)
	}
	slices.SortFunc(recs, func(a, b *record) int { return cmp.Compare(a.Seq, b.Seq) })
	out := make([]Attachment, len(recs))
	for i, rec := range recs {
		out[i] = cloneAttachment(rec.Attachment)
	}
	return out
}

func cloneAttachment(a Attachment) Attachment {
	a.IPs = slices.Clone(a.IPs)
	a.HostInterfaces = slices.Clone(a.HostInterfaces)
	return a
}

func compareKeys(a, b AttachmentKey) int {
	return cmp.Or(strings.Compare(a.ContainerID, b.ContainerID), strings.Compare(a.IfName, b.IfName))
}
