// Command nftguard-dev runs nftguard on a local cluster made of network
// namespaces: a real kube-apiserver and etcd, the controller, one agent per
// node, and pods that answer on their ports. See docs/local-cluster.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftguard/nftguard/test/localcluster"
)

const usage = `nftguard-dev runs nftguard on a local cluster of network namespaces (root).

Usage: nftguard-dev <command> [flags] [args]

Commands:
  up        start a cluster, or keep the running one if nothing changed
  down      stop every process and remove every namespace of the cluster
  status    show the cluster's nodes, pods and processes
  probe     FROM TO PORT[/PROTO]: connect from one pod to another (pods as ns/name,
            PORT a number or a name the target declares)
  matrix    probe from every pod to every pod
  wait      wait until the policies in the API are in force on every node
  drops     print the agents' drop logs
  env       print the shell command that points kubectl at the cluster

Every command takes --state-dir (default $NFTGUARD_DEV_STATE_DIR, else .demo).
Run 'nftguard-dev <command> -h' for a command's flags.
`

func main() {
	localcluster.MaybeRunChild()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A closed output (`up | head`) must not kill a half-started cluster
	// mid-way: writes fail instead, and the command finishes its work.
	signal.Ignore(syscall.SIGPIPE)
	cmds := map[string]func(context.Context, []string, io.Writer) error{
		"up": cmdUp, "down": cmdDown, "status": cmdStatus, "probe": cmdProbe,
		"matrix": cmdMatrix, "wait": cmdWait, "drops": cmdDrops, "env": cmdEnv,
	}
	fn, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err := fn(ctx, args[1:], stdout); err != nil {
		var ex exitError
		if errors.As(err, &ex) {
			return int(ex)
		}
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "nftguard-dev %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// exitError ends the command with a status and no message.
type exitError int

func (e exitError) Error() string { return "exit status " + strconv.Itoa(int(e)) }

func defaultStateDir() string {
	if d := os.Getenv("NFTGUARD_DEV_STATE_DIR"); d != "" {
		return d
	}
	return ".demo"
}

func newFlags(name string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("nftguard-dev "+name, flag.ContinueOnError)
	dir := fs.String("state-dir", defaultStateDir(), "directory of the cluster's state, kubeconfig and logs")
	return fs, dir
}

// parse parses flags wherever they stand among the arguments, and returns
// the positional arguments.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func attach(dir string) (*localcluster.Cluster, error) {
	c, err := localcluster.Attach(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no cluster in %s: run `nftguard-dev up --state-dir %s` first", dir, dir)
	}
	return c, err
}

func cmdUp(ctx context.Context, args []string, out io.Writer) error {
	fs, dir := newFlags("up")
	binDefault := defaultBinDir()
	topo := fs.String("topology", "", "topology file (YAML or JSON); default: the shop of config/samples")
	nodes := fs.Int("nodes", 0, "number of nodes, named node-1..node-N (default: the topology's)")
	name := fs.String("name", "dev", "cluster name, the prefix of its network namespaces (ngd-<name>-)")
	recreate := fs.Bool("recreate", false, "start afresh even when a healthy cluster with the same configuration runs")
	binDir := fs.String("bin-dir", binDefault, "directory of etcd, kube-apiserver, controller and agent")
	manifests := fs.String("manifests", "", "the repository's config/ directory (default: <bin-dir>/../config)")
	controller := fs.String("controller", "", "controller binary, or none (default: <bin-dir>/controller if present)")
	agent := fs.String("agent", "", "agent binary, or none (default: <bin-dir>/agent if present)")
	agentArgs := fs.String("agent-args", "", "extra agent flags, space-separated")
	cniPlugin := fs.String("cni-plugin", "", "nftguard CNI plugin binary, or none (default: <bin-dir>/nftguard if present): pods start through its ADD and are held until programmed")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	real := fs.Bool("real-nodes", false, "real nodes: kubelet, containerd and kube-proxy in each node; nftguard installed from its images (make real-nodes)")
	proxyMode := fs.String("proxy-mode", "nftables", "kube-proxy's mode on real nodes: nftables or iptables")
	images := fs.String("images", "", "comma-separated OCI archives imported into every real node (default: bin/node-images/*.tar and bin/images/*.tar)")
	install := fs.String("install", "", "kustomize directory applied on real nodes, or none (default: <bin-dir>/../config/default)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	cfg := localcluster.Config{
		Name: *name, StateDir: *dir, BinDir: *binDir, ManifestsDir: *manifests,
		Controller: pickBinary(*controller, filepath.Join(*binDir, "controller")),
		Agent:      pickBinary(*agent, filepath.Join(*binDir, "agent")),
		AgentArgs:  strings.Fields(*agentArgs),
		CNIPlugin:  pickBinary(*cniPlugin, filepath.Join(*binDir, "nftguard")),
		Detach:     true,
		Logf:       func(f string, a ...any) { fmt.Fprintf(out, f+"\n", a...) },
	}
	if cfg.ManifestsDir == "" {
		cfg.ManifestsDir = filepath.Join(*binDir, "..", "config")
	}
	if *real {
		rn := &localcluster.RealNodes{ProxyMode: *proxyMode, Install: *install}
		switch rn.Install {
		case "none":
			rn.Install = ""
		case "":
			rn.Install = filepath.Join(cfg.ManifestsDir, "default")
		}
		if *images != "" {
			rn.Images = strings.Split(*images, ",")
		} else {
			rn.Images = localcluster.DefaultImages(*binDir)
		}
		cfg.RealNodes, cfg.Controller, cfg.Agent, cfg.CNIPlugin = rn, "", "", ""
	}
	t := localcluster.ShopTopology()
	if *topo != "" {
		var err error
		if t, err = localcluster.LoadTopology(*topo); err != nil {
			return err
		}
	}
	if *nodes > 0 {
		var err error
		if t, err = t.WithNodes(*nodes); err != nil {
			return err
		}
	}
	cfg.Topology = t
	if !*recreate && localcluster.Exists(*dir) {
		fp, err := localcluster.Fingerprint(cfg)
		if err != nil {
			return err
		}
		if c, err := localcluster.Attach(*dir); err == nil && c.State().Fingerprint == fp {
			if err := c.Healthy(ctx); err == nil {
				fmt.Fprintf(out, "Cluster %q already running with this configuration (use --recreate to start afresh)\n\n", c.Name())
				printStatus(out, c)
				return nil
			} else {
				fmt.Fprintf(out, "The cluster in %s is unhealthy (%v): recreating it\n", *dir, err)
			}
		}
	}
	if cfg.Controller == "" && cfg.RealNodes == nil {
		fmt.Fprintln(out, "No controller binary: the cluster runs without one (`make build` builds it)")
	}
	if cfg.Agent == "" && cfg.RealNodes == nil {
		fmt.Fprintln(out, "No agent binary: the cluster runs without agents, so no policy is enforced")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	c, err := localcluster.Up(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintln(out)
	printStatus(out, c)
	return nil
}

// defaultBinDir is the directory of this executable when it holds etcd
// (bin/nftguard-dev beside bin/etcd), else the checkout's bin/.
func defaultBinDir() string {
	if self, err := os.Executable(); err == nil {
		if _, err := os.Stat(filepath.Join(filepath.Dir(self), "etcd")); err == nil {
			return filepath.Dir(self)
		}
	}
	return filepath.Join(localcluster.RepoRoot(), "bin")
}

// pickBinary: "none" disables, a path is used as given, empty takes def if
// it exists.
func pickBinary(flagValue, def string) string {
	switch flagValue {
	case "none":
		return ""
	case "":
		if _, err := os.Stat(def); err == nil {
			abs, _ := filepath.Abs(def)
			return abs
		}
		return ""
	}
	abs, _ := filepath.Abs(flagValue)
	return abs
}

func cmdDown(ctx context.Context, args []string, out io.Writer) error {
	fs, dir := newFlags("down")
	sweep := fs.Bool("sweep", false, "also remove network namespaces named for the cluster that no state file records")
	name := fs.String("name", "", "cluster name for --sweep (default: the recorded one)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	recorded := ""
	if st, err := localcluster.ReadState(*dir); err == nil {
		recorded = st.Name
		fmt.Fprintf(out, "Stopping cluster %q (%d processes, %d network namespaces)\n", st.Name, len(st.Processes), len(st.NetNS))
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := localcluster.Cleanup(*dir); err != nil {
		return err
	}
	if *sweep {
		n := *name
		if n == "" {
			n = recorded
		}
		if n == "" {
			return errors.New("--sweep needs --name when no state file records the cluster")
		}
		if err := localcluster.SweepNetNS(n); err != nil {
			return err
		}
	}
	if recorded == "" && !*sweep {
		fmt.Fprintf(out, "No cluster recorded in %s\n", *dir)
		return nil
	}
	fmt.Fprintln(out, "Removed")
	return nil
}

func cmdStatus(ctx context.Context, args []string, out io.Writer) error {
	fs, dir := newFlags("status")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	c, err := attach(*dir)
	if err != nil {
		return err
	}
	printStatus(out, c)
	if err := c.Healthy(ctx); err != nil {
		fmt.Fprintf(out, "\nUNHEALTHY: %v\n", err)
		return exitError(1)
	}
	fmt.Fprintln(out, "\nHealthy")
	return nil
}

func printStatus(out io.Writer, c *localcluster.Cluster) {
	st := c.State()
	fmt.Fprintf(out, "Cluster %q in %s\n", st.Name, st.Dir)
	fmt.Fprintf(out, "API server  %s\nkubeconfig  %s\n\n", st.APIServer, st.Kubeconfig)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tNETNS\tUNDERLAY\tPOD CIDRS\tDROP LOG")
	for _, n := range st.Nodes {
		log := n.AuditLog
		if log == "" {
			log = "(no agent)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s %s\t%s %s\t%s\n", n.Name, n.NetNS, n.IPv4, n.IPv6, n.PodCIDRv4, n.PodCIDRv6, log)
	}
	tw.Flush()
	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tNODE\tIPS\tPORTS\tNETNS")
	for _, p := range st.Pods {
		var ports []string
		for _, pp := range p.Ports {
			ports = append(ports, pp.String())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s %s\t%s\t%s\n", p.Key(), p.Node, p.IPv4, p.IPv6, strings.Join(ports, ", "), p.NetNS)
	}
	tw.Flush()
	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROCESS\tFOR\tPID\tRUNNING\tLOG")
	for _, p := range st.Processes {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%v\t%s\n", p.Role, p.Name, p.PID, p.Alive(), p.Log)
	}
	tw.Flush()
}

// parsePort reads PORT[/PROTO]: a number or a port name, and a protocol.
func parsePort(s string) (intstr.IntOrString, corev1.Protocol, error) {
	num, proto, _ := strings.Cut(s, "/")
	protocol := corev1.Protocol(strings.ToUpper(proto))
	switch protocol {
	case "", corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
	default:
		return intstr.IntOrString{}, "", fmt.Errorf("protocol %q: want TCP, UDP or SCTP", proto)
	}
	if n, err := strconv.Atoi(num); err == nil {
		if n < 1 || n > 65535 {
			return intstr.IntOrString{}, "", fmt.Errorf("port %d is not between 1 and 65535", n)
		}
		return intstr.FromInt32(int32(n)), protocol, nil
	}
	if num == "" {
		return intstr.IntOrString{}, "", errors.New("empty port")
	}
	return intstr.FromString(num), protocol, nil
}

func cmdProbe(ctx context.Context, args []string, out io.Writer) error {
	fs, dir := newFlags("probe")
	v6 := fs.Bool("6", false, "probe the IPv6 addresses")
	timeout := fs.Duration("timeout", localcluster.DefaultProbeTimeout, "how long a probe waits for an answer")
	expect := fs.String("expect", "", "connected, blocked or refused: exit 0 only on that outcome")
	drops := fs.Bool("drops", false, "print the drop-log lines the probe caused")
	dropsWait := fs.Duration("drops-wait", 5*time.Second, "how long to wait for drop-log lines")
	service := fs.Bool("service", false, "probe the target's Service ClusterIP (real nodes)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 3 {
		return errors.New("want FROM TO PORT[/PROTO], for example storefront/web backend/api http")
	}
	port, proto, err := parsePort(pos[2])
	if err != nil {
		return err
	}
	c, err := attach(*dir)
	if err != nil {
		return err
	}
	fam := localcluster.IPv4
	if *v6 {
		fam = localcluster.IPv6
	}
	mark := c.MarkAuditLogs()
	r := c.ProbeWith(ctx, localcluster.ProbeRequest{From: pos[0], To: pos[1], Port: port, Protocol: proto, Family: fam, Timeout: *timeout, Service: *service})
	fmt.Fprintln(out, r.String())
	if r.Err != nil {
		return exitError(2)
	}
	if *drops {
		printDrops(ctx, out, c, mark, r, *dropsWait)
	}
	want := localcluster.Connected
	if *expect != "" {
		want = localcluster.Outcome(*expect)
	}
	if r.Outcome != want {
		if *expect != "" {
			fmt.Fprintf(out, "expected %s\n", *expect)
		}
		return exitError(1)
	}
	return nil
}

func printDrops(ctx context.Context, out io.Writer, c *localcluster.Cluster, mark localcluster.AuditMark, r localcluster.ProbeResult, wait time.Duration) {
	if !c.State().Agents {
		fmt.Fprintln(out, "No agents run in this cluster: there is no drop log")
		return
	}
	src, _ := c.Pod(r.From)
	dst, _ := c.Pod(r.To)
	fam := localcluster.IPv4
	if r.Dst.Addr().Is6() {
		fam = localcluster.IPv6
	}
	// The drop log names the pod's address, behind its Service's.
	match := localcluster.MatchFlow(src.IP(fam), dst.IP(fam), r.Dst.Port(), r.Protocol)
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	lines := c.WaitAuditLines(ctx, mark, match)
	if len(lines) == 0 {
		fmt.Fprintf(out, "No drop-log line for this flow within %s\n", wait)
		return
	}
	fmt.Fprintln(out, "Drop log:")
	for _, l := range lines {
		fmt.Fprintf(out, "  %s: %s\n", l.Node, l.Line)
	}
}

func cmdMatrix(ctx context.Context, args []string, out io.Writer) error {
	fs, dir := newFlags("matrix")
	portFlag := fs.String("port", "", "PORT[/PROTO] (a number or a name) probed on every target (default: each target's first port)")
	v6 := fs.Bool("6", false, "probe the IPv6 addresses")
	from := fs.String("from", "", "comma-separated source pods (default: all)")
	to := fs.String("to", "", "comma-separated target pods (default: all)")
	timeout := fs.Duration("timeout", localcluster.DefaultProbeTimeout, "how long a probe waits for an answer")
	service := fs.Bool("service", false, "probe each target's Service ClusterIP (real nodes)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	c, err := attach(*dir)
	if err != nil {
		return err
	}
	req := localcluster.MatrixRequest{Family: localcluster.IPv4, Timeout: *timeout, Service: *service}
	if *v6 {
		req.Family = localcluster.IPv6
	}
	if *portFlag != "" {
		if req.Port, req.Protocol, err = parsePort(*portFlag); err != nil {
			return err
		}
	}
	if *from != "" {
		req.From = strings.Split(*from, ",")
	}
	if *to != "" {
		req.To = strings.Split(*to, ",")
	}
	m := c.Matrix(ctx, req)
	what := "each target's first port"
	if *portFlag != "" {
		what = *portFlag
	}
	conn, blocked, refused, errs := m.Counts()
	via := ""
	if *service {
		via = " through each target's Service"
	}
	fmt.Fprintf(out, "Reachability over %s to %s%s (ok: answered, X: blocked (no answer), refused: a reset or an ICMP error, -: no such port)\n", req.Family, what, via)
	fmt.Fprint(out, m.String())
	fmt.Fprintf(out, "%d connected, %d blocked, %d refused, %d errors\n", conn, blocked, refused, errs)
	return nil
}

func cmdWait(ctx context.Context, args []string, out io.Writer) error {
	fs, dir := newFlags("wait")
	timeout := fs.Duration("timeout", 90*time.Second, "give up after this long")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	c, err := attach(*dir)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	if err := c.WaitEnforced(ctx); err != nil {
		return err
	}
	fmt.Fprintf(out, "Every policy is in force on every node (%s)\n", time.Since(start).Round(time.Millisecond))
	return nil
}

func cmdDrops(ctx context.Context, args []string, out io.Writer) error {
	fs, dir := newFlags("drops")
	n := fs.Int("tail", 20, "lines per node")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	c, err := attach(*dir)
	if err != nil {
		return err
	}
	for _, node := range c.Nodes() {
		if node.AuditLog == "" {
			continue
		}
		lines := c.AuditLinesSince(localcluster.AuditMark{}, nil)
		var mine []string
		for _, l := range lines {
			if l.Node == node.Name {
				mine = append(mine, l.Line)
			}
		}
		if len(mine) > *n {
			mine = mine[len(mine)-*n:]
		}
		fmt.Fprintf(out, "== %s (%s)\n", node.Name, node.AuditLog)
		for _, l := range mine {
			fmt.Fprintln(out, l)
		}
	}
	return nil
}

func cmdEnv(ctx context.Context, args []string, out io.Writer) error {
	fs, dir := newFlags("env")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	st, err := localcluster.ReadState(*dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "export KUBECONFIG=%s\n", st.Kubeconfig)
	return nil
}
