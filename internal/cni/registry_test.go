package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/google/go-cmp/cmp"
)

// addrCmp lets go-cmp compare netip.Addr values (unexported fields).
var addrCmp = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

func ips(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

func attachment(id, uid string, addrs ...string) Attachment {
	return Attachment{ContainerID: id, IfName: "eth0", PodUID: uid, Namespace: "ns", Name: "pod-" + uid, IPs: ips(addrs...), Netns: "/var/run/netns/" + id}
}

func openRegistry(t *testing.T, dir string) *Registry {
	t.Helper()
	r, err := OpenRegistry(dir, testr.New(t))
	if err != nil {
		t.Fatalf("OpenRegistry: %v", err)
	}
	return r
}

func mustAdd(t *testing.T, r *Registry, a Attachment) {
	t.Helper()
	if err := r.Add(a); err != nil {
		t.Fatalf("Add(%s): %v", a.Key(), err)
	}
}

func readRecordFile(t *testing.T, dir string, k AttachmentKey) record {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, recordFile(k)))
	if err != nil {
		t.Fatal(err)
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestRegistryLatestClaimWins(t *testing.T) {
	dir := t.TempDir()
	r := openRegistry(t, dir)
	old := attachment("old", "uid-old", "198.18.0.5", "fd00::5")
	mustAdd(t, r, old)
	// The old pod's DEL was missed; its IPv4 address is given to a new pod.
	mustAdd(t, r, attachment("new", "uid-new", "198.18.0.5", "fd00::6"))

	want := map[string][]netip.Addr{
		"uid-old": ips("fd00::5"),
		"uid-new": ips("198.18.0.5", "fd00::6"),
	}
	if diff := cmp.Diff(want, r.PodAddresses(), addrCmp); diff != "" {
		t.Errorf("PodAddresses after the second claim (-want +got):\n%s", diff)
	}
	if err := r.Check(old); err == nil {
		t.Error("Check of the old attachment with the address it lost: no error")
	}
	if rec := readRecordFile(t, dir, old.Key()); !slices.Equal(rec.Attachment.IPs, ips("fd00::5")) {
		t.Errorf("old attachment's file lists %v, want only fd00::5", rec.Attachment.IPs)
	}

	// The new pod goes away: the address does not return to the old one,
	// neither now nor after a restart.
	if _, err := r.Del(AttachmentKey{"new", "eth0"}); err != nil {
		t.Fatal(err)
	}
	for name, reg := range map[string]*Registry{"running": r, "reopened": openRegistry(t, dir)} {
		got, ok := reg.Get(old.Key())
		if !ok {
			t.Fatalf("%s: old attachment gone", name)
		}
		if !slices.Equal(got.IPs, ips("fd00::5")) {
			t.Errorf("%s: old attachment holds %v after the newer claimant left, want only fd00::5", name, got.IPs)
		}
	}
}

func TestRegistrySnapshotHasEachAddressOnce(t *testing.T) {
	r := openRegistry(t, t.TempDir())
	mustAdd(t, r, attachment("a", "uid-a", "198.18.0.1", "198.18.0.2"))
	mustAdd(t, r, attachment("b", "uid-b", "198.18.0.2", "198.18.0.3"))
	mustAdd(t, r, attachment("c", "uid-c", "198.18.0.3", "198.18.0.1"))
	snap := r.Snapshot()
	var order []string
	seen := map[netip.Addr]string{}
	for _, a := range snap {
		order = append(order, a.ContainerID)
		for _, ip := range a.IPs {
			if other, dup := seen[ip]; dup {
				t.Errorf("%s in both %s and %s", ip, other, a.ContainerID)
			}
			seen[ip] = a.ContainerID
		}
	}
	if want := []string{"a", "b", "c"}; !cmp.Equal(order, want) {
		t.Errorf("Snapshot order %v, want oldest claim first %v", order, want)
	}
	wantOwner := map[netip.Addr]string{
		netip.MustParseAddr("198.18.0.1"): "c",
		netip.MustParseAddr("198.18.0.2"): "b",
		netip.MustParseAddr("198.18.0.3"): "c",
	}
	if diff := cmp.Diff(wantOwner, seen, addrCmp); diff != "" {
		t.Errorf("owners (-want +got):\n%s", diff)
	}
}

func TestRegistryReAddReplaces(t *testing.T) {
	r := openRegistry(t, t.TempDir())
	mustAdd(t, r, attachment("a", "uid-a", "198.18.0.1"))
	mustAdd(t, r, attachment("a", "uid-a", "198.18.0.9"))
	got, _ := r.Get(AttachmentKey{"a", "eth0"})
	if !slices.Equal(got.IPs, ips("198.18.0.9")) {
		t.Errorf("re-added attachment holds %v, want 198.18.0.9", got.IPs)
	}
	// Its former address is free: a new claim takes it from no one.
	mustAdd(t, r, attachment("b", "uid-b", "198.18.0.1"))
	if got, _ := r.Get(AttachmentKey{"a", "eth0"}); !slices.Equal(got.IPs, ips("198.18.0.9")) {
		t.Errorf("after b claimed a's former address, a holds %v", got.IPs)
	}
	if n := len(r.Snapshot()); n != 2 {
		t.Errorf("Snapshot has %d attachments, want 2", n)
	}
}

func TestRegistryNormalizesAddresses(t *testing.T) {
	r := openRegistry(t, t.TempDir())
	a := attachment("a", "uid-a")
	a.IPs = []netip.Addr{netip.MustParseAddr("::ffff:198.18.0.1"), netip.MustParseAddr("198.18.0.1")}
	mustAdd(t, r, a)
	if err := r.Check(attachment("a", "uid-a", "198.18.0.1")); err != nil {
		t.Errorf("Check with the unmapped address: %v", err)
	}
}

func TestRegistryDelIsIdempotent(t *testing.T) {
	dir := t.TempDir()
	r := openRegistry(t, dir)
	key := AttachmentKey{"a", "eth0"}
	if had, err := r.Del(key); err != nil || had {
		t.Fatalf("Del of an unknown attachment = %v, %v; want false, nil", had, err)
	}
	mustAdd(t, r, attachment("a", "uid-a", "198.18.0.1"))
	if had, err := r.Del(key); err != nil || !had {
		t.Fatalf("Del = %v, %v; want true, nil", had, err)
	}
	if had, err := r.Del(key); err != nil || had {
		t.Fatalf("second Del = %v, %v; want false, nil", had, err)
	}
	if _, err := os.Stat(filepath.Join(dir, recordFile(key))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("record file still there after Del: %v", err)
	}
	if _, ok := openRegistry(t, dir).Get(key); ok {
		t.Error("deleted attachment back after reopening")
	}
}

func TestRegistryDelPod(t *testing.T) {
	r := openRegistry(t, t.TempDir())
	mustAdd(t, r, attachment("a", "uid-a", "198.18.0.1"))
	second := attachment("a", "uid-a", "198.18.0.2")
	second.IfName = "net1"
	mustAdd(t, r, second)
	mustAdd(t, r, attachment("b", "uid-b", "198.18.0.3"))
	keys, err := r.DelPod("uid-a")
	if err != nil {
		t.Fatal(err)
	}
	if want := []AttachmentKey{{"a", "eth0"}, {"a", "net1"}}; !cmp.Equal(keys, want) {
		t.Errorf("DelPod removed %v, want %v", keys, want)
	}
	if diff := cmp.Diff(map[string][]netip.Addr{"uid-b": ips("198.18.0.3")}, r.PodAddresses(), addrCmp); diff != "" {
		t.Errorf("PodAddresses after DelPod (-want +got):\n%s", diff)
	}
	if keys, err := r.DelPod("uid-a"); err != nil || len(keys) != 0 {
		t.Errorf("second DelPod = %v, %v; want nothing", keys, err)
	}
}

func TestRegistryGC(t *testing.T) {
	dir := t.TempDir()
	r := openRegistry(t, dir)
	for _, id := range []string{"a", "b", "c"} {
		mustAdd(t, r, attachment(id, "uid-"+id, "198.18.0."+map[string]string{"a": "1", "b": "2", "c": "3"}[id]))
	}
	removed, err := r.GC([]AttachmentKey{{"b", "eth0"}, {"unknown", "eth0"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []AttachmentKey{{"a", "eth0"}, {"c", "eth0"}}; !cmp.Equal(removed, want) {
		t.Errorf("GC removed %v, want %v", removed, want)
	}
	for name, reg := range map[string]*Registry{"running": r, "reopened": openRegistry(t, dir)} {
		var got []string
		for _, a := range reg.Snapshot() {
			got = append(got, a.Key().String())
		}
		if want := []string{"b/eth0"}; !cmp.Equal(got, want) {
			t.Errorf("%s: attachments after GC %v, want %v", name, got, want)
		}
	}
}

func TestRegistryPersistsAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	r := openRegistry(t, dir)
	mustAdd(t, r, attachment("a", "uid-a", "198.18.0.1", "fd00::1"))
	mustAdd(t, r, attachment("b", "uid-b", "198.18.0.2"))
	mustAdd(t, r, attachment("c", "uid-c", "198.18.0.1"))
	before := r.Snapshot()

	r2 := openRegistry(t, dir)
	if diff := cmp.Diff(before, r2.Snapshot(), addrCmp); diff != "" {
		t.Errorf("Snapshot after reopening (-before +after):\n%s", diff)
	}
	if len(r2.Skipped()) != 0 {
		t.Errorf("Skipped = %v", r2.Skipped())
	}
	// The counter goes on from where it was: a claim after the restart is
	// later than every claim before it.
	mustAdd(t, r2, attachment("d", "uid-d", "198.18.0.2"))
	last := readRecordFile(t, dir, AttachmentKey{"c", "eth0"}).Seq
	if seq := readRecordFile(t, dir, AttachmentKey{"d", "eth0"}).Seq; seq <= last {
		t.Errorf("claim after reopening has seq %d, not after the last one before (%d)", seq, last)
	}
	if got, _ := r2.Get(AttachmentKey{"b", "eth0"}); len(got.IPs) != 0 {
		t.Errorf("b holds %v after d claimed its address", got.IPs)
	}
}

// A crash between writing a new claim and rewriting the attachment it took
// an address from leaves both files listing the address; loading settles it
// by the claims' order and rewrites the loser.
func TestRegistryLoadSettlesConflictsByOrder(t *testing.T) {
	dir := t.TempDir()
	write := func(seq uint64, a Attachment) {
		b, err := json.Marshal(record{Version: recordVersion, Seq: seq, Attachment: a})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, recordFile(a.Key())), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// File order and seq order disagree on purpose.
	write(7, attachment("newer", "uid-newer", "198.18.0.5"))
	write(3, attachment("older", "uid-older", "198.18.0.5", "198.18.0.6"))

	r := openRegistry(t, dir)
	got := r.PodAddresses()
	if !slices.Equal(got["uid-newer"], ips("198.18.0.5")) || !slices.Equal(got["uid-older"], ips("198.18.0.6")) {
		t.Errorf("PodAddresses = %v; want 198.18.0.5 with uid-newer, 198.18.0.6 with uid-older", got)
	}
	if rec := readRecordFile(t, dir, AttachmentKey{"older", "eth0"}); !slices.Equal(rec.Attachment.IPs, ips("198.18.0.6")) {
		t.Errorf("loser's file lists %v after loading, want 198.18.0.6 only", rec.Attachment.IPs)
	}
	mustAdd(t, r, attachment("next", "uid-next", "198.18.0.7"))
	if seq := readRecordFile(t, dir, AttachmentKey{"next", "eth0"}).Seq; seq != 8 {
		t.Errorf("next claim has seq %d, want 8", seq)
	}
}

func TestRegistrySkipsCorruptFiles(t *testing.T) {
	dir := t.TempDir()
	r := openRegistry(t, dir)
	mustAdd(t, r, attachment("good", "uid-good", "198.18.0.1"))

	garbage := filepath.Join(dir, "0123456789abcdef0123456789abcdef.json")
	if err := os.WriteFile(garbage, []byte(`{"version":1,"seq":`), 0o600); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(record{Version: recordVersion, Seq: 9, Attachment: attachment("misplaced", "uid-m", "198.18.0.1")})
	misplaced := filepath.Join(dir, "misplaced.json")
	if err := os.WriteFile(misplaced, b, 0o600); err != nil {
		t.Fatal(err)
	}
	future := attachment("future", "uid-f", "198.18.0.2")
	b, _ = json.Marshal(record{Version: recordVersion + 1, Seq: 10, Attachment: future})
	futurePath := filepath.Join(dir, recordFile(future.Key()))
	if err := os.WriteFile(futurePath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	temp := filepath.Join(dir, ".x.json.nftguard-tmp123")
	if err := os.WriteFile(temp, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}

	r2 := openRegistry(t, dir)
	var paths []string
	for _, e := range r2.Skipped() {
		paths = append(paths, e.Path)
		if !strings.Contains(e.Error(), e.Path) {
			t.Errorf("error %q does not name its file", e)
		}
	}
	if want := []string{garbage, futurePath, misplaced}; !cmp.Equal(slices.Sorted(slices.Values(paths)), slices.Sorted(slices.Values(want))) {
		t.Errorf("Skipped %v, want %v", paths, want)
	}
	// The misplaced record (seq 9) must not have taken the good one's address.
	got, ok := r2.Get(AttachmentKey{"good", "eth0"})
	if !ok || !slices.Equal(got.IPs, ips("198.18.0.1")) {
		t.Errorf("good attachment = %+v, %v; want it with 198.18.0.1", got, ok)
	}
	if _, err := os.Stat(garbage); err != nil {
		t.Errorf("corrupt file not left in place: %v", err)
	}
	if _, err := os.Stat(temp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("interrupted temporary file not removed: %v", err)
	}
	// Deleting the attachment a skipped file names removes that file too.
	if _, err := r2.Del(future.Key()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(futurePath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Del left the skipped file of its attachment: %v", err)
	}
}

// If the loser of an address cannot be rewritten, the winner's file must
// outlive that failure: deleting it first would hand the address back to
// the loser at the next load.
func TestRegistryKeepsWinnerUntilLoserIsSaved(t *testing.T) {
	dir := t.TempDir()
	r := openRegistry(t, dir)
	old := attachment("old", "uid-old", "198.18.0.5")
	mustAdd(t, r, old)
	failing := filepath.Join(dir, recordFile(old.Key()))
	r.writeFile = func(path string, data []byte, mode os.FileMode) error {
		if path == failing {
			return errors.New("disk full")
		}
		return os.WriteFile(path, data, mode)
	}
	if err := r.Add(attachment("new", "uid-new", "198.18.0.5")); err == nil {
		t.Fatal("Add whose loser cannot be saved: no error")
	}
	if _, err := r.Del(AttachmentKey{"new", "eth0"}); err == nil {
		t.Fatal("Del of the winner while the loser is unsaved: no error")
	}
	if _, err := os.Stat(filepath.Join(dir, recordFile(AttachmentKey{"new", "eth0"}))); err != nil {
		t.Fatalf("winner's file removed while the loser is unsaved: %v", err)
	}
	if got := openRegistry(t, dir).PodAddresses()["uid-old"]; len(got) != 0 {
		t.Errorf("a reload meanwhile gives the old attachment %v, want nothing", got)
	}

	r.writeFile = func(path string, data []byte, mode os.FileMode) error { return os.WriteFile(path, data, mode) }
	if _, err := r.Del(AttachmentKey{"new", "eth0"}); err != nil {
		t.Fatal(err)
	}
	if got := openRegistry(t, dir).PodAddresses()["uid-old"]; len(got) != 0 {
		t.Errorf("after the winner left, a reload gives the old attachment %v, want nothing", got)
	}
}

func TestRegistryCheck(t *testing.T) {
	r := openRegistry(t, t.TempDir())
	a := attachment("a", "uid-a", "198.18.0.1", "fd00::1")
	mustAdd(t, r, a)
	for name, tc := range map[string]struct {
		a  Attachment
		ok bool
	}{
		"same":            {attachment("a", "uid-a", "fd00::1", "198.18.0.1"), true},
		"no uid":          {attachment("a", "", "198.18.0.1", "fd00::1"), true},
		"unknown":         {attachment("b", "uid-a", "198.18.0.1", "fd00::1"), false},
		"other uid":       {attachment("a", "uid-b", "198.18.0.1", "fd00::1"), false},
		"missing address": {attachment("a", "uid-a", "198.18.0.1"), false},
		"extra address":   {attachment("a", "uid-a", "198.18.0.1", "fd00::1", "fd00::2"), false},
	} {
		if err := r.Check(tc.a); (err == nil) != tc.ok {
			t.Errorf("%s: Check = %v, want ok=%v", name, err, tc.ok)
		}
	}
}

func TestRegistryRejectsIncompleteAttachments(t *testing.T) {
	r := openRegistry(t, t.TempDir())
	for _, a := range []Attachment{
		{IfName: "eth0", PodUID: "u"},
		{ContainerID: "c", PodUID: "u"},
		{ContainerID: "c", IfName: "eth0"},
		{ContainerID: "c", IfName: "eth0", PodUID: "u", IPs: []netip.Addr{{}}},
	} {
		if err := r.Add(a); err == nil {
			t.Errorf("Add(%+v): no error", a)
		}
	}
	if n := len(r.Snapshot()); n != 0 {
		t.Errorf("%d attachments recorded", n)
	}
}

func TestRegistryConcurrentAdds(t *testing.T) {
	dir := t.TempDir()
	r := openRegistry(t, dir)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			// Every attachment claims the shared address and one of its own.
			a := attachment(fmt.Sprintf("c%02d", i), fmt.Sprintf("uid-%02d", i), "198.18.0.250", fmt.Sprintf("198.18.0.%d", i+1))
			if err := r.Add(a); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	owners := 0
	for _, a := range r.Snapshot() {
		for _, ip := range a.IPs {
			if ip == netip.MustParseAddr("198.18.0.250") {
				owners++
			}
		}
		if n := len(a.IPs); n < 1 || n > 2 {
			t.Errorf("%s holds %v", a.Key(), a.IPs)
		}
	}
	if owners != 1 {
		t.Errorf("shared address owned by %d attachments, want 1", owners)
	}
	if diff := cmp.Diff(r.Snapshot(), openRegistry(t, dir).Snapshot(), addrCmp); diff != "" {
		t.Errorf("reopened registry differs (-running +reopened):\n%s", diff)
	}
}

// TestReplayDeleted: a DEL recorded while the agent was down forgets its
// attachment when replayed, unless the attachment's ADD came after it;
// every recorded DEL's file goes, readable or not.
func TestReplayDeleted(t *testing.T) {
	dir := t.TempDir()
	r := openRegistry(t, dir)
	if gone, err := r.ReplayDeleted(); err != nil || gone != nil {
		t.Fatalf("nothing recorded: %v, %v", gone, err)
	}
	before := time.Now()
	mustAdd(t, r, attachment("gone", "uid-1", "198.18.0.1"))
	mustAdd(t, r, attachment("readded", "uid-2", "198.18.0.2"))
	after := time.Now()
	for _, d := range []struct {
		key AttachmentKey
		at  time.Time
	}{
		{AttachmentKey{"gone", "eth0"}, after},
		// The DEL came before this ADD of the same key.
		{AttachmentKey{"readded", "eth0"}, before.Add(-time.Second)},
		{AttachmentKey{"unknown", "eth0"}, after},
	} {
		if err := RecordDeleted(dir, d.key, d.at); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(DeletedDir(dir), "garbage.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	gone, err := r.ReplayDeleted()
	if err != nil {
		t.Fatal(err)
	}
	if len(gone) != 1 || gone[0].ContainerID != "gone" {
		t.Errorf("replayed %v, want the attachment gone only", gone)
	}
	if _, ok := r.Get(AttachmentKey{"gone", "eth0"}); ok {
		t.Error("the replayed DEL's attachment is still held")
	}
	if _, ok := r.Get(AttachmentKey{"readded", "eth0"}); !ok {
		t.Error("an attachment added after its recorded DEL was forgotten")
	}
	left, err := os.ReadDir(DeletedDir(dir))
	if err != nil || len(left) != 0 {
		t.Errorf("recorded DELs left after the replay: %v, %v", left, err)
	}
	// It is gone from disk too.
	if got := openRegistry(t, dir).Snapshot(); len(got) != 1 || got[0].ContainerID != "readded" {
		t.Errorf("reopened registry holds %v", got)
	}
}
