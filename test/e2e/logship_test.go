package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nftguard/nftguard/test/localcluster"
)

// TestLogShipping runs Debian's rsyslog as a node's log shipper would run
// it (docs/audit-log.md): imfile tails the agent's real drop log file,
// mmjsonparse parses each line, and the fields a SIEM indexes come out the
// other side, for a drop that happens while it runs.
func TestLogShipping(t *testing.T) {
	needCluster(t)
	root := filepath.Join(localcluster.RepoRoot(), "bin", "rsyslog")
	rsyslogd := filepath.Join(root, "usr", "sbin", "rsyslogd")
	if _, err := os.Stat(rsyslogd); err != nil {
		t.Fatalf("%v: run `make log-shipper` first", err)
	}
	resetPolicies(t)
	t.Cleanup(func() { resetPolicies(t) })
	create(t, policy("x", "logship-deny", nil, ingress))
	waitConverged(t)

	node, _ := cl.Pod("x/a")
	var file string
	for _, n := range cl.Nodes() {
		if n.Name == node.Node {
			file = n.AuditLog
		}
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "shipped.log")
	modules := filepath.Join(root, "usr", "lib", "x86_64-linux-gnu", "rsyslog")
	conf := fmt.Sprintf(`global(workDirectory=%q)
module(load="imfile" mode="polling" pollingInterval="1")
module(load="mmjsonparse")
template(name="drop" type="string"
  string="%%$!action%% %%$!direction%% %%$!src!namespace%%/%%$!src!pod%% > %%$!dst!namespace%%/%%$!dst!pod%%:%%$!dst!port%% %%$!policies%% %%$!node%%\n")
input(type="imfile" file=%q tag="nftguard-drops" ruleset="drops")
ruleset(name="drops") {
  action(type="mmjsonparse" cookie="" useRawMsg="on")
  if $parsesuccess == "OK" then action(type="omfile" file=%q template="drop")
}
`, dir, file, out)
	confPath := filepath.Join(dir, "rsyslog.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(rsyslogd, "-n", "-M", modules, "-f", confPath, "-i", filepath.Join(dir, "rsyslogd.pid"))
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+filepath.Join(root, "usr", "lib", "x86_64-linux-gnu"))
	logf, err := os.Create(filepath.Join(dir, "rsyslogd.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM) // its own pid
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})

	// y/a's probes are dropped by x's policy and logged on x/a's node (the
	// file names y/a only when it runs on that node).
	want := "drop ingress "
	policyName := `NetworkPolicy\/x\/logship-deny`
	deadline := time.Now().Add(30 * time.Second)
	for {
		if probeOne(t, "y/a", "x/a", tcp80) {
			t.Fatal("y/a reached x/a through the deny")
		}
		b, _ := os.ReadFile(out)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, want) && strings.Contains(l, " > x/a:80 ") && strings.Contains(l, policyName) && strings.HasSuffix(l, " "+node.Node) {
				return
			}
		}
		if time.Now().After(deadline) {
			diag, _ := os.ReadFile(filepath.Join(dir, "rsyslogd.out"))
			t.Fatalf("rsyslog shipped no line %q ... %s from %s:\n%s\nrsyslogd:\n%s", want, policyName, file, b, diag)
		}
		time.Sleep(time.Second)
	}
}
