package localcluster

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The node role is PID 1 of a real node: the harness starts it inside the
// node's network namespace with new mount and PID namespaces. It gives the
// node its own root filesystem view (below), starts containerd, imports the
// images, starts kubelet and kube-proxy, reaps orphans, and on SIGTERM ends
// everything in the node. Killing it ends the node: the kernel kills every
// process of a PID namespace whose init exits.
//
// The node's view of the filesystem, so that nothing a node or an installer
// on it writes reaches the machine's own files:
//
//	/etc, /opt       overlays on the machine's, upper layers in <dir>/root
//	/var/lib, /var/log  <dir>/var/lib, <dir>/var/log (containerd's and kubelet's state, pod logs)
//	/run             a tmpfs of its own (sockets, the pods' network namespaces)
//	/proc            the node's PID namespace; kubelet's global sysctls shown the
//	                 values it wants (bind-mounted files), so that it never writes them
const roleNode = "node"

// nodeSysctlValues are the global (not per network namespace) sysctls that
// kubelet checks and would set: each is bind-mounted over with its value.
var nodeSysctlValues = [][2]string{
	{"vm/overcommit_memory", "1"},
	{"vm/panic_on_oom", "0"},
	{"kernel/panic", "10"},
	{"kernel/panic_on_oops", "1"},
	{"kernel/keys/root_maxkeys", "1000000"},
	{"kernel/keys/root_maxbytes", "25000000"},
}

// nodeComponent is a long-running process of a node.
type nodeComponent struct {
	name string
	pid  int
	log  string
}

func runNode(args []string) int {
	fs := flag.NewFlagSet(roleNode, flag.ContinueOnError)
	name := fs.String("name", "", "node name")
	dir := fs.String("dir", "", "the node's directory (config/, root/, var/)")
	bin := fs.String("bin", "", "directory of kube, containerd, ctr, the shim and cni/")
	logDir := fs.String("log-dir", "", "directory for the components' logs")
	images := fs.String("images", "", "comma-separated OCI archives to import")
	var kubeletArgs argList
	fs.Var(&kubeletArgs, "kubelet-arg", "an extra kubelet argument (repeatable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	logger := log.New(os.Stderr, *name+": ", log.LstdFlags|log.Lmicroseconds)
	fail := func(format string, a ...any) int {
		logger.Printf("FAILED: "+format, a...)
		killNode(logger)
		return 1
	}
	if os.Getpid() != 1 {
		return fail("must run as PID 1 of a new PID namespace (pid %d)", os.Getpid())
	}
	if err := nodeMounts(*dir); err != nil {
		return fail("filesystem: %v", err)
	}
	if err := nodeFiles(*dir, *bin); err != nil {
		return fail("files: %v", err)
	}
	env := []string{
		"PATH=" + *bin + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root",
	}
	var comps []*nodeComponent
	start := func(comp, path string, argv ...string) (*nodeComponent, error) {
		lp := filepath.Join(*logDir, *name+"-"+comp+".log")
		f, err := os.OpenFile(lp, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		fmt.Fprintf(f, "--- %s starting %s %s\n", time.Now().Format(time.RFC3339), path, strings.Join(argv, " "))
		devnull, err := os.Open(os.DevNull)
		if err != nil {
			return nil, err
		}
		defer devnull.Close()
		// os.StartProcess, not exec.Cmd: this process reaps every child
		// itself (wait4(-1)), which would race exec.Cmd.Wait.
		p, err := os.StartProcess(path, argv, &os.ProcAttr{
			Env: env, Files: []*os.File{devnull, f, f},
			Sys: &unix.SysProcAttr{Setpgid: true},
		})
		if err != nil {
			return nil, fmt.Errorf("starting %s: %w (log %s)", comp, err, lp)
		}
		c := &nodeComponent{name: comp, pid: p.Pid, log: lp}
		comps = append(comps, c)
		logger.Printf("%s started, pid %d, log %s", comp, p.Pid, lp)
		return c, nil
	}
	cfg := filepath.Join(*dir, "config")
	ctrd, err := start("containerd", filepath.Join(*bin, "containerd"), "containerd", "--config", filepath.Join(cfg, "containerd.toml"))
	if err != nil {
		return fail("%v", err)
	}
	ctr := func(ctx context.Context, a ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, filepath.Join(*bin, "ctr"), append([]string{"--address", containerdSocket, "--namespace", "k8s.io"}, a...)...)
		cmd.Env = env
		return cmd.CombinedOutput()
	}
	if err := waitContainerd(ctr, ctrd); err != nil {
		return fail("containerd: %v (log %s)", err, ctrd.log)
	}
	for _, img := range strings.Split(*images, ",") {
		if img == "" {
			continue
		}
		// As `kind load image-archive` imports: every platform, by digest.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		out, err := ctr(ctx, "images", "import", "--all-platforms", "--digests", img)
		cancel()
		if err != nil {
			return fail("importing image %s: %v: %s", img, err, strings.TrimSpace(string(out)))
		}
		logger.Printf("imported %s", img)
	}
	if _, err := start("kubelet", filepath.Join(*bin, "kube"), append([]string{"kubelet",
		"--config=" + filepath.Join(cfg, "kubelet.yaml"),
		"--kubeconfig=" + filepath.Join(cfg, "kubelet.kubeconfig"),
		"--hostname-override=" + *name,
		"--node-ip=" + readFileString(filepath.Join(cfg, "node-ip")),
		"--v=1",
	}, kubeletArgs...)...); err != nil {
		return fail("%v", err)
	}
	if _, err := start("kube-proxy", filepath.Join(*bin, "kube"), "kube-proxy",
		"--config="+filepath.Join(cfg, "kube-proxy.yaml"),
		"--hostname-override="+*name,
		"--v=1",
	); err != nil {
		return fail("%v", err)
	}
	signalReady()
	return superviseNode(logger, comps)
}

const containerdSocket = "/run/containerd/containerd.sock"

func readFileString(p string) string {
	b, _ := os.ReadFile(p)
	return strings.TrimSpace(string(b))
}

func waitContainerd(ctr func(context.Context, ...string) ([]byte, error), c *nodeComponent) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err := ctr(ctx, "version")
		cancel()
		if err == nil {
			return nil
		}
		var ws unix.WaitStatus
		if pid, _ := unix.Wait4(c.pid, &ws, unix.WNOHANG, nil); pid == c.pid {
			return fmt.Errorf("exited (%s)", describeWait(ws))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not answering on %s after 60s: %s", containerdSocket, strings.TrimSpace(string(out)))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func describeWait(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + ws.Signal().String()
	}
	return fmt.Sprintf("exit status %d", ws.ExitStatus())
}

// superviseNode reaps children until SIGTERM, or until a component exits:
// a node whose kubelet, kube-proxy or containerd is gone is a failed node,
// and says which component and where its log is.
func superviseNode(logger *log.Logger, comps []*nodeComponent) int {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT)
	for sig := range sigs {
		if sig != unix.SIGCHLD {
			logger.Printf("stopping on %s", sig)
			killNode(logger)
			return 0
		}
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
			for _, c := range comps {
				if c.pid == pid {
					logger.Printf("FAILED: %s exited (%s); its log: %s", c.name, describeWait(ws), c.log)
					killNode(logger)
					return 1
				}
			}
		}
	}
	return 0
}

// killNode ends every other process of the node's PID namespace: SIGTERM,
// then SIGKILL for what is left after a grace period.
func killNode(logger *log.Logger) {
	_ = unix.Kill(-1, unix.SIGTERM)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.ECHILD) {
			return
		}
		if pid <= 0 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	logger.Printf("killing what is left")
	_ = unix.Kill(-1, unix.SIGKILL)
	for {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(-1, &ws, 0, nil); err != nil {
			return
		}
	}
}

// nodeMounts builds the node's view of the filesystem (see roleNode).
func nodeMounts(dir string) error {
	// Mounts made here stay here; the machine's unmounts still reach us
	// (a network namespace deleted there is released here too).
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("making / a slave mount: %w", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mounting /proc: %w", err)
	}
	sysctlDir := filepath.Join(dir, "sysctl")
	if err := os.MkdirAll(sysctlDir, 0o755); err != nil {
		return err
	}
	for _, s := range nodeSysctlValues {
		f := filepath.Join(sysctlDir, strings.ReplaceAll(s[0], "/", "."))
		if err := os.WriteFile(f, []byte(s[1]+"\n"), 0o444); err != nil {
			return err
		}
		if err := unix.Mount(f, filepath.Join("/proc/sys", s[0]), "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("showing kubelet sysctl %s=%s: %w", s[0], s[1], err)
		}
		if err := unix.Mount("", filepath.Join("/proc/sys", s[0]), "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("making sysctl %s read-only: %w", s[0], err)
		}
	}
	for _, top := range []string{"/etc", "/opt"} {
		upper := filepath.Join(dir, "root", top, "upper")
		work := filepath.Join(dir, "root", top, "work")
		for _, d := range []string{upper, work} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		opts := "lowerdir=" + top + ",upperdir=" + upper + ",workdir=" + work
		if err := unix.Mount("overlay", top, "overlay", 0, opts); err != nil {
			return fmt.Errorf("overlay on %s: %w", top, err)
		}
	}
	for _, top := range []string{"/var/lib", "/var/log"} {
		src := filepath.Join(dir, "var", filepath.Base(top))
		if err := os.MkdirAll(src, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(src, top, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mounting %s on %s: %w", src, top, err)
		}
	}
	if err := unix.Mount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=755"); err != nil {
		return fmt.Errorf("tmpfs on /run: %w", err)
	}
	return nil
}

// nodeFiles installs the node's files into its own /etc and /opt: the
// resolver and hosts files, the CNI configuration and plugins.
func nodeFiles(dir, bin string) error {
	cfg := filepath.Join(dir, "config")
	copies := [][2]string{
		{filepath.Join(cfg, "resolv.conf"), "/etc/resolv.conf"},
		{filepath.Join(cfg, "hosts"), "/etc/hosts"},
		{filepath.Join(cfg, "10-ptp.conflist"), "/etc/cni/net.d/10-ptp.conflist"},
	}
	for _, p := range []string{"ptp", "host-local", "loopback"} {
		copies = append(copies, [2]string{filepath.Join(bin, "cni", p), filepath.Join("/opt/cni/bin", p)})
	}
	for _, c := range copies {
		if c[1] == "/etc/cni/net.d/10-ptp.conflist" {
			if _, err := os.Stat(c[1]); err == nil {
				// A reboot: the configuration stays as it was (with the
				// entry nftguard's agent chained into it).
				continue
			}
		}
		if err := copyFile(c[0], c[1]); err != nil {
			return err
		}
	}
	return os.MkdirAll("/run/containerd", 0o711)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	// Replace, never write through: /etc/resolv.conf may be a link.
	_ = os.Remove(dst)
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// argList is a repeatable string flag.
type argList []string

func (l *argList) String() string     { return strings.Join(*l, " ") }
func (l *argList) Set(s string) error { *l = append(*l, s); return nil }
