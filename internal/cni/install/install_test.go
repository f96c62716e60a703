package install

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/go-logr/logr/testr"
	"github.com/google/go-cmp/cmp"
)

const testSocket = "/run/nftguard-test/cni.sock"

// ptpConflist is a pod network configuration as an installer writes it,
// with list-level options and a second plugin.
const ptpConflist = `{
  "cniVersion": "1.0.0",
  "name": "pods",
  "disableCheck": true,
  "plugins": [
    {
      "type": "ptp",
      "mtu": 1500,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "198.18.0.0/24"}], [{"subnet": "fd00:198:18::/64"}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
  ],
  "x-vendor": {"written-by": "the pod network", "big": 12345678901234567890}
}
`

// ptpConf is the same network as a single-plugin .conf.
const ptpConf = `{
  "cniVersion": "1.0.0",
  "name": "pods",
  "type": "ptp",
  "mtu": 1500,
  "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.18.0.0/24"}]]}
}
`

func newInstaller(t *testing.T) *Installer {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "image", "nftguard")
	writeFile(t, src, "plugin binary v1")
	return &Installer{
		ConfDir: filepath.Join(dir, "etc", "cni", "net.d"),
		BinDir:  filepath.Join(dir, "opt", "cni", "bin"),
		Source:  src,
		Socket:  testSocket,
		Log:     testr.New(t),
	}
}

// fresh returns an installer with i's settings and none of its state.
func fresh(i *Installer) *Installer {
	return &Installer{ConfDir: i.ConfDir, BinDir: i.BinDir, Source: i.Source, Socket: i.Socket, Log: i.Log}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// compact returns s without insignificant whitespace.
func compact(t *testing.T, s string) string {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		t.Fatalf("compacting %s: %v", s, err)
	}
	return b.String()
}

// members returns a file's top-level keys in order and their compact values.
func members(t *testing.T, content string) ([]string, map[string]string) {
	t.Helper()
	o, err := parseObject([]byte(content))
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	values := map[string]string{}
	for _, m := range o {
		keys = append(keys, m.key)
		values[m.key] = compact(t, string(m.value))
	}
	return keys, values
}

// plugins returns the compact plugin objects of a conflist.
func plugins(t *testing.T, content string) []string {
	t.Helper()
	var list struct {
		Plugins []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(content), &list); err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(list.Plugins))
	for i, p := range list.Plugins {
		out[i] = compact(t, string(p))
	}
	return out
}

func entry(socket string) string { return `{"type":"nftguard","socket":"` + socket + `"}` }

// mustChain installs the binary and chains the entry.
func mustChain(t *testing.T, i *Installer) Result {
	t.Helper()
	res, err := i.Install()
	if err != nil {
		t.Fatalf("Install: %v", err)
	}
	return res
}

func TestChainAppendsTheEntryAndKeepsEverythingElse(t *testing.T) {
	i := newInstaller(t)
	path := filepath.Join(i.ConfDir, "10-ptp.conflist")
	writeFile(t, path, ptpConflist)

	res := mustChain(t, i)
	if !res.Changed || res.Path != path {
		t.Errorf("Chain = %+v, want a change of %s", res, path)
	}
	got := readFile(t, path)
	wantKeys, wantValues := members(t, ptpConflist)
	gotKeys, gotValues := members(t, got)
	if !slices.Equal(gotKeys, wantKeys) {
		t.Errorf("keys %v, want the original order %v", gotKeys, wantKeys)
	}
	for k, v := range wantValues {
		if k != "plugins" && gotValues[k] != v {
			t.Errorf("member %q = %s, want %s", k, gotValues[k], v)
		}
	}
	want := append(plugins(t, ptpConflist), entry(testSocket))
	if diff := cmp.Diff(want, plugins(t, got)); diff != "" {
		t.Errorf("plugins (-want +got):\n%s", diff)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want the original 0644", fi.Mode().Perm())
	}
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		t.Fatalf("libcni cannot load the chained file: %v", err)
	}
	if n := len(list.Plugins); n != 3 || list.Plugins[2].Network.Type != "nftguard" || !list.DisableCheck {
		t.Errorf("libcni loads %d plugins, last %q, disableCheck %v", n, list.Plugins[n-1].Network.Type, list.DisableCheck)
	}
}

// TestChainWritesTheStateDir: an installer with a state directory writes
// it into the entry (the plugin records there the DELs the agent cannot
// take), and sets it in an entry that names another.
func TestChainWritesTheStateDir(t *testing.T) {
	i := newInstaller(t)
	i.StateDir = "/var/lib/nftguard/cni"
	path := filepath.Join(i.ConfDir, "10-ptp.conflist")
	writeFile(t, path, ptpConflist)
	mustChain(t, i)
	want := `{"type":"nftguard","socket":"` + testSocket + `","stateDir":"/var/lib/nftguard/cni"}`
	if got := plugins(t, readFile(t, path)); got[len(got)-1] != want {
		t.Errorf("entry %s, want %s", got[len(got)-1], want)
	}
	i.StateDir = "/elsewhere"
	if res := mustChain(t, i); !res.Changed {
		t.Error("a new state directory left the entry as it was")
	}
	if got := plugins(t, readFile(t, path)); !strings.Contains(got[len(got)-1], `"stateDir":"/elsewhere"`) {
		t.Errorf("entry %s, want the new state directory", got[len(got)-1])
	}
}

func TestChainIsIdempotent(t *testing.T) {
	i := newInstaller(t)
	path := filepath.Join(i.ConfDir, "10-ptp.conflist")
	writeFile(t, path, ptpConflist)
	mustChain(t, i)
	before := readFile(t, path)
	fi, _ := os.Stat(path)
	if res := mustChain(t, i); res.Changed {
		t.Errorf("second Chain changed %s", res.Path)
	}
	if after := readFile(t, path); after != before {
		t.Errorf("second Chain rewrote the file:\n%s\nto\n%s", before, after)
	}
	if fi2, _ := os.Stat(path); !os.SameFile(fi, fi2) {
		t.Error("second Chain replaced the file")
	}
}

func TestChainMovesTheEntryToTheEndAndKeepsOne(t *testing.T) {
	i := newInstaller(t)
	path := filepath.Join(i.ConfDir, "10-ptp.conflist")
	writeFile(t, path, `{"cniVersion": "1.1.0", "name": "pods", "plugins": [
	  {"type": "nftguard", "socket": "/old.sock"},
	  {"type": "ptp", "ipam": {"type": "host-local", "subnet": "198.18.0.0/24"}},
	  {"type": "nftguard", "timeout": "5s", "socket": "/old.sock"},
	  {"type": "bandwidth", "capabilities": {"bandwidth": true}}
	]}`)
	mustChain(t, i)
	want := []string{
		`{"type":"ptp","ipam":{"type":"host-local","subnet":"198.18.0.0/24"}}`,
		`{"type":"bandwidth","capabilities":{"bandwidth":true}}`,
		`{"type":"nftguard","timeout":"5s","socket":"` + testSocket + `"}`,
	}
	if diff := cmp.Diff(want, plugins(t, readFile(t, path))); diff != "" {
		t.Errorf("plugins (-want +got):\n%s", diff)
	}
}

func TestChainUsesTheLexicallyFirstConfiguration(t *testing.T) {
	i := newInstaller(t)
	first := filepath.Join(i.ConfDir, "05-calico.conflist")
	later := filepath.Join(i.ConfDir, "10-ptp.conflist")
	writeFile(t, first, strings.Replace(ptpConflist, `"pods"`, `"k8s-pod-network"`, 1))
	writeFile(t, later, ptpConflist)
	writeFile(t, filepath.Join(i.ConfDir, "20-other.conf"), ptpConf)
	writeFile(t, filepath.Join(i.ConfDir, "00-readme.txt"), "not a configuration")
	writeFile(t, filepath.Join(i.ConfDir, "01-backup.conflist.bak"), "not a configuration")
	if err := os.MkdirAll(filepath.Join(i.ConfDir, "02-dir.conflist"), 0o755); err != nil {
		t.Fatal(err)
	}

	if res := mustChain(t, i); res.Path != first {
		t.Errorf("Chain chained %s, want %s", res.Path, first)
	}
	if !strings.Contains(readFile(t, first), "nftguard") {
		t.Errorf("%s not chained", first)
	}
	if readFile(t, later) != ptpConflist {
		t.Errorf("Chain changed %s, which the runtime does not use", later)
	}
	if st := i.Check(); !st.Chained || st.Path != first {
		t.Errorf("Check = %+v, want Chained at %s", st, first)
	}
}

func TestChainRepairsARewrittenConflist(t *testing.T) {
	i := newInstaller(t)
	path := filepath.Join(i.ConfDir, "10-ptp.conflist")
	writeFile(t, path, ptpConflist)
	mustChain(t, i)

	// The pod network's installer writes its file again, without the entry.
	writeFile(t, path, ptpConflist)
	if st := i.Check(); st.Chained || st.Reason != ReasonNotChained {
		t.Fatalf("Check after the rewrite = %+v, want NotChained", st)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reports := make(chan Result, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		i.Watch(ctx, 10*time.Millisecond, func(r Result, err error) {
			if err != nil {
				t.Errorf("Watch reported %v", err)
			}
			reports <- r
		})
	}()
	select {
	case r := <-reports:
		if r.Path != path || !r.Changed || r.BinaryChanged {
			t.Errorf("first report %+v, want %s chained again", r, path)
		}
	case <-time.After(time.Minute):
		t.Fatal("Watch reported no repair")
	}
	if st := i.Check(); !st.Chained {
		t.Errorf("Check after the repair = %+v", st)
	}

	// Once more, and the binary goes too: Watch may repair them in one
	// round or two.
	writeFile(t, path, ptpConflist)
	if err := os.Remove(i.BinaryPath()); err != nil {
		t.Fatal(err)
	}
	var conf, binary bool
	for !conf || !binary {
		select {
		case r := <-reports:
			if r.Path != path {
				t.Errorf("report %+v names another file", r)
			}
			conf, binary = conf || r.Changed, binary || r.BinaryChanged
		case <-time.After(time.Minute):
			t.Fatalf("Watch repaired the conflist: %v, the binary: %v", conf, binary)
		}
	}
	cancel()
	<-done
	if len(reports) != 0 {
		t.Errorf("Watch reported %d times with nothing to repair", len(reports))
	}
	if want := append(plugins(t, ptpConflist), entry(testSocket)); !slices.Equal(plugins(t, readFile(t, path)), want) {
		t.Errorf("plugins after the repairs: %v", plugins(t, readFile(t, path)))
	}
}

func TestWatchReportsALastingFailureOnce(t *testing.T) {
	i := newInstaller(t) // no configuration at all
	ctx, cancel := context.WithCancel(context.Background())
	var errs []error
	calls := 0
	i.Watch(ctx, time.Millisecond, func(_ Result, err error) {
		errs = append(errs, err)
		calls++
		if calls == 1 {
			// Let a few more rounds fail the same way, then stop.
			go func() { time.Sleep(50 * time.Millisecond); cancel() }()
		}
	})
	if len(errs) != 1 || !errors.Is(errs[0], ErrNoConfList) {
		t.Errorf("reports %v, want one ErrNoConfList", errs)
	}
}

func TestChainGeneratesAConflistForASingleConf(t *testing.T) {
	i := newInstaller(t)
	conf := filepath.Join(i.ConfDir, "10-ptp.conf")
	generated := filepath.Join(i.ConfDir, "10-ptp-nftguard.conflist")
	writeFile(t, conf, ptpConf)
	writeFile(t, filepath.Join(i.ConfDir, "20-later.conflist"), ptpConflist)

	if res := mustChain(t, i); res.Path != generated || !res.Changed {
		t.Fatalf("Chain = %+v, want %s generated", res, generated)
	}
	if readFile(t, conf) != ptpConf {
		t.Error("Chain changed the pod network's .conf")
	}
	files, _ := i.confFiles()
	if files[0] != generated {
		t.Errorf("the runtime's first configuration is %s, want the generated %s", files[0], generated)
	}
	list, err := load(files[0])
	if err != nil {
		t.Fatalf("the generated file does not load: %v", err)
	}
	if list.Name != "pods" || list.CNIVersion != "1.0.0" || len(list.Plugins) != 2 || list.Plugins[1].Network.Type != "nftguard" {
		t.Errorf("generated list %q %q with %d plugins", list.Name, list.CNIVersion, len(list.Plugins))
	}
	if got := plugins(t, readFile(t, generated)); !slices.Equal(got, []string{compact(t, ptpConf), entry(testSocket)}) {
		t.Errorf("generated list's plugins %s, want the .conf's object as it is, then nftguard", got)
	}
	if st := i.Check(); !st.Chained || st.Path != generated {
		t.Errorf("Check = %+v, want Chained at %s", st, generated)
	}
	if res := mustChain(t, i); res.Changed {
		t.Error("second Chain changed the generated file")
	}

	// The pod network's installer changes its .conf: the generated file follows.
	writeFile(t, conf, strings.Replace(ptpConf, `"mtu": 1500`, `"mtu": 1400`, 1))
	if res := mustChain(t, i); !res.Changed {
		t.Error("Chain did not regenerate after the .conf changed")
	}
	if !strings.Contains(readFile(t, generated), `"mtu": 1400`) {
		t.Errorf("generated file does not carry the new mtu:\n%s", readFile(t, generated))
	}

	// It replaces its .conf by a .conflist: the generated file goes.
	if err := os.Remove(conf); err != nil {
		t.Fatal(err)
	}
	list1 := filepath.Join(i.ConfDir, "10-ptp.conflist")
	writeFile(t, list1, ptpConflist)
	if res := mustChain(t, i); res.Path != list1 || !res.Changed {
		t.Errorf("Chain = %+v, want %s chained", res, list1)
	}
	if _, err := os.Stat(generated); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale generated file still there: %v", err)
	}
	if st := i.Check(); !st.Chained || st.Path != list1 {
		t.Errorf("Check = %+v, want Chained at %s", st, list1)
	}
}

func TestChainTreatsJSONAsASinglePlugin(t *testing.T) {
	i := newInstaller(t)
	writeFile(t, filepath.Join(i.ConfDir, "10-ptp.json"), ptpConf)
	if res := mustChain(t, i); res.Path != filepath.Join(i.ConfDir, "10-ptp-nftguard.conflist") {
		t.Errorf("Chain = %+v, want the generated conflist", res)
	}

	// A list in a .json file: containerd refuses it, and so does Chain.
	j := newInstaller(t)
	path := filepath.Join(j.ConfDir, "10-ptp.json")
	writeFile(t, path, ptpConflist)
	if _, err := j.Chain(); err == nil {
		t.Error("Chain accepted a list in a .json file")
	}
	if readFile(t, path) != ptpConflist {
		t.Error("Chain changed the .json file")
	}
	if st := j.Check(); st.Reason != ReasonInvalidConfig {
		t.Errorf("Check = %+v, want InvalidConfig", st)
	}
}

func TestChainRefusesWhatItCannotChain(t *testing.T) {
	for name, tc := range map[string]struct {
		file, content, pluginDir string
	}{
		"not JSON":            {"10-ptp.conflist", `{"name": "pods", "plugins": [`, ""},
		"no plugins":          {"10-ptp.conflist", `{"cniVersion": "1.0.0", "name": "pods", "plugins": []}`, ""},
		"plugin without type": {"10-ptp.conflist", `{"cniVersion": "1.0.0", "name": "pods", "plugins": [{"mtu": 1}]}`, ""},
		"old CNI version":     {"10-ptp.conflist", strings.Replace(ptpConflist, `"1.0.0"`, `"0.3.1"`, 1), ""},
		"old .conf version":   {"10-ptp.conf", strings.Replace(ptpConf, `"1.0.0"`, `"0.3.1"`, 1), ""},
		"plugin directory":    {"10-ptp.conflist", ptpConflist, "pods"},
	} {
		t.Run(name, func(t *testing.T) {
			i := newInstaller(t)
			path := filepath.Join(i.ConfDir, tc.file)
			writeFile(t, path, tc.content)
			if tc.pluginDir != "" {
				writeFile(t, filepath.Join(i.ConfDir, tc.pluginDir, "50-tuning.conf"), `{"type": "tuning"}`)
			}
			if _, err := i.Chain(); err == nil {
				t.Error("Chain: no error")
			}
			if readFile(t, path) != tc.content {
				t.Error("Chain changed the file")
			}
			if files, _ := i.confFiles(); len(files) != 1 {
				t.Errorf("configuration files after Chain: %v", files)
			}
			if st := i.Check(); st.Chained {
				t.Errorf("Check = %+v", st)
			}
		})
	}
}

func TestNoConfList(t *testing.T) {
	i := newInstaller(t) // ConfDir does not even exist
	if _, err := i.Chain(); !errors.Is(err, ErrNoConfList) {
		t.Errorf("Chain = %v, want ErrNoConfList", err)
	}
	if st := i.Check(); st.Reason != ReasonNoConfList {
		t.Errorf("Check = %+v, want NoConfList", st)
	}
	writeFile(t, filepath.Join(i.ConfDir, "README"), "no configuration here")
	if st := i.Check(); st.Reason != ReasonNoConfList {
		t.Errorf("Check with only a README = %+v, want NoConfList", st)
	}
}

func TestCheck(t *testing.T) {
	i := newInstaller(t)
	path := filepath.Join(i.ConfDir, "10-ptp.conflist")
	writeFile(t, path, ptpConflist)
	if st := i.Check(); st.Reason != ReasonNotChained || !strings.Contains(st.Message, "portmap") {
		t.Errorf("Check before Chain = %+v, want NotChained naming the last plugin", st)
	}
	if _, err := i.Chain(); err != nil {
		t.Fatal(err)
	}
	if st := i.Check(); st.Reason != ReasonBinaryMissing {
		t.Errorf("Check with the entry but no binary = %+v, want BinaryMissing", st)
	}
	if _, err := i.Install(); err != nil {
		t.Fatal(err)
	}
	if st := i.Check(); !st.Chained || st.Reason != ReasonChained || st.Path != path {
		t.Errorf("Check after Install = %+v, want Chained", st)
	}
	other := fresh(i)
	other.Socket = "/run/elsewhere.sock"
	if st := other.Check(); st.Reason != ReasonNotChained || !strings.Contains(st.Message, "/run/elsewhere.sock") {
		t.Errorf("Check for another socket = %+v, want NotChained naming it", st)
	}
}

func TestInstallBinary(t *testing.T) {
	i := newInstaller(t)
	dst := i.BinaryPath()
	changed, err := i.InstallBinary()
	if err != nil || !changed {
		t.Fatalf("InstallBinary = %v, %v; want a write", changed, err)
	}
	fi, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o755 || readFile(t, dst) != "plugin binary v1" {
		t.Errorf("installed %v %q", fi.Mode(), readFile(t, dst))
	}
	if changed, err := i.InstallBinary(); err != nil || changed {
		t.Errorf("second InstallBinary = %v, %v; want no write", changed, err)
	}
	// A fresh installer (the agent restarted) finds the same content.
	if changed, err := fresh(i).InstallBinary(); err != nil || changed {
		t.Errorf("InstallBinary of a fresh installer = %v, %v; want no write", changed, err)
	}

	writeFile(t, dst, "tampered")
	if changed, _ := i.InstallBinary(); !changed || readFile(t, dst) != "plugin binary v1" {
		t.Errorf("InstallBinary over a changed binary: changed %v, content %q", changed, readFile(t, dst))
	}
	writeFile(t, i.Source, "plugin binary v2") // a new image
	if changed, _ := fresh(i).InstallBinary(); !changed || readFile(t, dst) != "plugin binary v2" {
		t.Errorf("InstallBinary of a new source: changed %v, content %q", changed, readFile(t, dst))
	}
	entries, _ := os.ReadDir(i.BinDir)
	if len(entries) != 1 {
		t.Errorf("bin directory holds %d files, want only the plugin", len(entries))
	}
}

func TestUninstallRemovesTheEntryBeforeTheBinary(t *testing.T) {
	for name, file := range map[string]string{"conflist": "10-ptp.conflist", "conf": "10-ptp.conf"} {
		t.Run(name, func(t *testing.T) {
			i := newInstaller(t)
			path := filepath.Join(i.ConfDir, file)
			original := map[string]string{"conflist": ptpConflist, "conf": ptpConf}[name]
			writeFile(t, path, original)
			// Another conflist the runtime does not use, with an entry of an
			// earlier install.
			stale := filepath.Join(i.ConfDir, "90-old.conflist")
			writeFile(t, stale, `{"cniVersion": "1.0.0", "name": "old", "plugins": [{"type": "ptp"}, {"type": "nftguard"}]}`)
			res, err := i.Install()
			if err != nil {
				t.Fatal(err)
			}

			binaryRemoved := false
			i.removeFile = func(p string) (bool, error) {
				if p == i.BinaryPath() {
					binaryRemoved = true
					files, _ := i.confFiles()
					for _, f := range files {
						if strings.Contains(readFile(t, f), `"nftguard"`) {
							t.Errorf("binary removed while %s still chains nftguard", f)
						}
					}
				}
				return os.Remove(p) == nil, nil
			}
			changed, err := i.Uninstall()
			if err != nil {
				t.Fatal(err)
			}
			if !binaryRemoved {
				t.Error("binary not removed")
			}
			want := []string{res.Path, stale, i.BinaryPath()}
			if !slices.Equal(changed, want) {
				t.Errorf("Uninstall changed %v, want %v", changed, want)
			}
			if _, err := os.Stat(i.BinaryPath()); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("binary still there: %v", err)
			}
			if name == "conf" {
				if _, err := os.Stat(res.Path); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("generated file still there: %v", err)
				}
				if readFile(t, path) != original {
					t.Error("the .conf changed")
				}
			} else if got := plugins(t, readFile(t, path)); !slices.Equal(got, plugins(t, original)) {
				t.Errorf("plugins after Uninstall %v, want the original", got)
			}
			if got := plugins(t, readFile(t, stale)); !slices.Equal(got, []string{`{"type":"ptp"}`}) {
				t.Errorf("stale conflist's plugins after Uninstall %v", got)
			}
			if changed, err := i.Uninstall(); err != nil || len(changed) != 0 {
				t.Errorf("second Uninstall = %v, %v; want nothing to do", changed, err)
			}
		})
	}
}

func TestUninstallKeepsTheBinaryIfTheEntryStays(t *testing.T) {
	i := newInstaller(t)
	writeFile(t, filepath.Join(i.ConfDir, "10-ptp.conf"), ptpConf)
	if _, err := i.Install(); err != nil {
		t.Fatal(err)
	}
	i.removeFile = func(string) (bool, error) { return false, errors.New("read-only file system") }
	if _, err := i.Uninstall(); err == nil {
		t.Fatal("Uninstall: no error")
	}
	if _, err := os.Stat(i.BinaryPath()); err != nil {
		t.Errorf("binary removed though the entry could not be: %v", err)
	}
}

func TestObjectKeepsOrderAndValues(t *testing.T) {
	in := `{"z": 1, "a": {"nested": [1, 2.50, "x"]}, "m": 12345678901234567890, "a": "last"}`
	o, err := parseObject([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(o.marshal()), `{"z":1,"a":{"nested": [1, 2.50, "x"]},"m":12345678901234567890,"a":"last"}`; got != want {
		t.Errorf("marshal = %s, want %s", got, want)
	}
	if o.getString("a") != "last" {
		t.Errorf("get of a duplicate key = %q, want the last value", o.getString("a"))
	}
	if got := string(o.set("m", mustRaw(1)).marshal()); got != `{"z":1,"a":{"nested": [1, 2.50, "x"]},"m":1,"a":"last"}` {
		t.Errorf("set = %s", got)
	}
	for _, bad := range []string{`[1]`, `{"a": 1} {"b": 2}`, `{"a": }`, `"s"`} {
		if _, err := parseObject([]byte(bad)); err == nil {
			t.Errorf("parseObject(%s): no error", bad)
		}
	}
}

func TestWatchInstallsNothingBetweenUninstallAndResume(t *testing.T) {
	i := newInstaller(t)
	path := filepath.Join(i.ConfDir, "10-ptp.conflist")
	writeFile(t, path, ptpConflist)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reports := make(chan Result, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		i.Watch(ctx, 5*time.Millisecond, func(r Result, err error) {
			if err != nil {
				t.Errorf("Watch reported %v", err)
			}
			reports <- r
		})
	}()
	wait := func(what string) {
		t.Helper()
		select {
		case <-reports:
		case <-time.After(time.Minute):
			t.Fatalf("Watch did not %s", what)
		}
	}
	wait("chain the plugin")
	if st := i.Check(); !st.Chained {
		t.Fatalf("Check after Watch's first round = %+v", st)
	}
	if _, err := i.Uninstall(); err != nil {
		t.Fatal(err)
	}
	// Many rounds: none may chain it again.
	time.Sleep(100 * time.Millisecond)
	if st := i.Check(); st.Chained {
		t.Fatalf("Watch chained the plugin again after Uninstall: %+v", st)
	}
	if !slices.Equal(plugins(t, readFile(t, path)), plugins(t, ptpConflist)) {
		t.Errorf("conflist after Uninstall: %s", readFile(t, path))
	}
	if !i.Resume() {
		t.Error("Resume: Watch was not held")
	}
	wait("chain the plugin again after Resume")
	if st := i.Check(); !st.Chained {
		t.Errorf("Check after Resume = %+v", st)
	}
	if i.Resume() {
		t.Error("second Resume: Watch was held")
	}
	cancel()
	<-done
}
