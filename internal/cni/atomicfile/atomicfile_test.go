package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteReplacesAndLeavesNoTemporaryFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "10-ptp.conflist")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "new" {
		t.Fatalf("content %q, %v; want new", b, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want the file alone", len(entries))
	}
}

func TestWriteFailureKeepsTheOldFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "target")
	if err := os.Mkdir(path, 0o755); err != nil { // a directory cannot be renamed over
		t.Fatal(err)
	}
	if err := Write(path, []byte("new"), 0o644); err == nil {
		t.Fatal("Write over a directory: no error")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("a failed Write left %d entries, want only the target", len(entries))
	}
}

func TestIsTemp(t *testing.T) {
	for name, want := range map[string]bool{
		".10-ptp.conflist.nftguard-tmp123": true,
		"10-ptp.conflist":                  false,
		"nftguard-tmp":                     false,
		".hidden.conflist":                 false,
	} {
		if IsTemp(name) != want {
			t.Errorf("IsTemp(%q) = %v, want %v", name, !want, want)
		}
	}
	// A temporary file's extension is none a CNI runtime reads.
	if ext := filepath.Ext(".10-ptp.conflist" + tempMarker + "123"); ext == ".conflist" || ext == ".conf" || ext == ".json" {
		t.Errorf("temporary file extension %q", ext)
	}
}

func TestRemove(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, err := Remove(path); !ok || err != nil {
		t.Errorf("Remove = %v, %v; want true, nil", ok, err)
	}
	if ok, err := Remove(path); ok || err != nil {
		t.Errorf("second Remove = %v, %v; want false, nil", ok, err)
	}
}
