package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// nobody is the unprivileged user the package's test binary is run as.
const nobody = 65534

// TestWithoutRootEveryTestSkips runs this package's test binary as an
// unprivileged user and reads its events as `go test -json` reports them:
// every test of the package must be reported skipped, none passed or
// failed. (Run without root, this test skips too.)
func TestWithoutRootEveryTestSkips(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running the suite as another user needs root")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	list, err := exec.Command(self, "-test.list", "^Test").Output()
	if err != nil {
		t.Fatalf("listing the tests: %v", err)
	}
	tests := strings.Fields(string(list))
	if !slices.Contains(tests, "TestConformance") || !slices.Contains(tests, t.Name()) {
		t.Fatalf("the test list %v lacks TestConformance or %s: the check would prove nothing", tests, t.Name())
	}

	// A copy of the binary the unprivileged user can run, in a directory
	// it can enter.
	dir, err := os.MkdirTemp("", "nftguard-e2e-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "e2e.test")
	copyFile(t, self, bin, 0o755)

	run := exec.Command(bin, "-test.v=test2json", "-test.count=1")
	run.Dir = dir
	run.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
	run.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{}}}
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("the suite as uid %d: %v\n%s", nobody, err, out)
	}
	conv := exec.Command("go", "tool", "test2json")
	conv.Stdin = bytes.NewReader(out)
	events, err := conv.Output()
	if err != nil {
		t.Fatalf("go tool test2json: %v", err)
	}

	actions := map[string][]string{} // top-level test -> its final actions
	sc := bufio.NewScanner(bytes.NewReader(events))
	for sc.Scan() {
		var ev struct{ Action, Test string }
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("test2json line %q: %v", sc.Text(), err)
		}
		switch ev.Action {
		case "pass", "fail", "skip":
			if ev.Test != "" && !strings.Contains(ev.Test, "/") {
				actions[ev.Test] = append(actions[ev.Test], ev.Action)
			}
		}
	}
	for _, name := range tests {
		if got := actions[name]; !slices.Equal(got, []string{"skip"}) {
			t.Errorf("%s run as uid %d: actions %v, want [skip]", name, nobody, got)
		}
	}
	if t.Failed() {
		t.Logf("output of the unprivileged run:\n%s", out)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
