package localcluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// Config configures a local cluster.
type Config struct {
	// Name prefixes the cluster's network namespaces ("ngd-<name>-"): a
	// lowercase letter then up to 11 lowercase letters or digits.
	Name string
	// StateDir holds the state file, kubeconfigs, certificates, etcd's
	// data, logs and the agents' drop logs. Required.
	StateDir string
	// Topology is the cluster's nodes, namespaces and pods (default: the
	// shop, ShopTopology).
	Topology *Topology
	// BinDir holds etcd and kube-apiserver (default: <repo>/bin).
	BinDir string
	// ManifestsDir is the repository's config/ directory: CRDs, RBAC.
	ManifestsDir string
	// Controller is the controller binary; empty runs no controller.
	Controller string
	// Agent is the agent binary; empty runs no agents. Otherwise one agent
	// runs inside each node's network namespace.
	Agent string
	// CNIPlugin is the nftguard CNI plugin binary; when set (with Agent),
	// the agents run with the plugin and the cluster runs its ADD and DEL
	// for every pod, as a container runtime would.
	CNIPlugin string
	// ControllerArgs and AgentArgs are appended to their command lines.
	ControllerArgs []string
	AgentArgs      []string
	// Helper is an executable that calls MaybeRunChild first thing (the
	// pod servers and API forwarders run as it). Default: this executable.
	Helper string
	// Detach starts every process in its own session so that the cluster
	// outlives the process that started it (nftguard-dev up).
	Detach bool
	// Owned records this process as the cluster's owner: once it is gone,
	// SweepStale removes the cluster (test binaries that crashed).
	Owned bool
	// RealNodes, when set, makes the nodes real (kubelet, containerd,
	// kube-proxy) and installs nftguard from its manifests and images;
	// Controller and Agent must then be empty.
	RealNodes *RealNodes
	// Logf reports progress; nil is silent.
	Logf func(format string, args ...any)
}

// Timeouts of the steps of Up.
const (
	readyTimeout      = 30 * time.Second
	programmedTimeout = 90 * time.Second
)

// Cluster is a running local cluster.
type Cluster struct {
	cfg   Config
	state *stateStore
	pki   *pki

	apiURL string
	// dropsAddress is where the controller serves the drops API ("": none).
	dropsAddress string
	restCfg      *rest.Config
	clientset    kubernetes.Interface
	client       client.Client

	mu    sync.Mutex
	procs map[int]*proc // processes started by this process
	podMu sync.Mutex    // serialises AddPod and DeletePod
}

// RepoRoot is the repository's top directory, from this file's location.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func (cfg *Config) setDefaults() error {
	if cfg.Name == "" {
		cfg.Name = "dev"
	}
	if err := validClusterName(cfg.Name); err != nil {
		return err
	}
	if cfg.StateDir == "" {
		return errors.New("a state directory is required")
	}
	abs, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return err
	}
	cfg.StateDir = abs
	if cfg.Topology == nil {
		cfg.Topology = ShopTopology()
	} else {
		cfg.Topology = cfg.Topology.DeepCopy()
		if err := cfg.Topology.Normalize(); err != nil {
			return err
		}
	}
	if cfg.BinDir == "" {
		cfg.BinDir = filepath.Join(RepoRoot(), "bin")
	}
	if cfg.ManifestsDir == "" {
		cfg.ManifestsDir = filepath.Join(RepoRoot(), "config")
	}
	if cfg.Helper == "" {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		cfg.Helper = self
	}
	if cfg.RealNodes != nil {
		if cfg.Controller != "" || cfg.Agent != "" || cfg.CNIPlugin != "" {
			return errors.New("a cluster of real nodes runs the controller and the agent from their images: leave Controller, Agent and CNIPlugin empty")
		}
		rn := *cfg.RealNodes
		if err := rn.setDefaults(cfg); err != nil {
			return err
		}
		cfg.RealNodes = &rn
	}
	for _, b := range []string{filepath.Join(cfg.BinDir, "etcd"), filepath.Join(cfg.BinDir, "kube-apiserver"), cfg.Controller, cfg.Agent, cfg.Helper, cfg.CNIPlugin} {
		if b == "" {
			continue
		}
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("%w (run `make test-binaries build`)", err)
		}
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	return nil
}

// Fingerprint identifies a configuration: the topology, the options and the
// binaries (path, size, modification time). A cluster is reused only when
// its fingerprint matches.
func Fingerprint(cfg Config) (string, error) {
	if err := cfg.setDefaults(); err != nil {
		return "", err
	}
	type bin struct {
		Path string
		Size int64
		Mod  time.Time
	}
	stat := func(p string) bin {
		if p == "" {
			return bin{}
		}
		fi, err := os.Stat(p)
		if err != nil {
			return bin{Path: p}
		}
		return bin{p, fi.Size(), fi.ModTime()}
	}
	var real []bin
	if rn := cfg.RealNodes; rn != nil {
		for _, p := range append([]string{filepath.Join(cfg.BinDir, "kube"), filepath.Join(cfg.BinDir, "containerd")}, rn.Images...) {
			real = append(real, stat(p))
		}
	}
	b, err := json.Marshal(struct {
		Name, StateDir, Manifests string
		Topology                  *Topology
		Bins                      []bin
		ControllerArgs, AgentArgs []string
		RealNodes                 *RealNodes
		Images                    []bin
	}{
		cfg.Name, cfg.StateDir, cfg.ManifestsDir, cfg.Topology,
		[]bin{stat(filepath.Join(cfg.BinDir, "etcd")), stat(filepath.Join(cfg.BinDir, "kube-apiserver")),
			stat(cfg.Controller), stat(cfg.Agent), stat(cfg.Helper), stat(cfg.CNIPlugin)},
		cfg.ControllerArgs, cfg.AgentArgs, cfg.RealNodes, real,
	})
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12]), nil
}

// Up starts a cluster. A cluster already recorded in cfg.StateDir is torn
// down first. On failure everything started so far is removed again.
func Up(ctx context.Context, cfg Config) (c *Cluster, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the local cluster needs root (network namespaces)")
	}
	fp, err := Fingerprint(cfg)
	if err != nil {
		return nil, err
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if Exists(cfg.StateDir) {
		cfg.Logf("Removing the previous cluster in %s", cfg.StateDir)
		if err := Cleanup(cfg.StateDir); err != nil {
			return nil, fmt.Errorf("removing the previous cluster: %w", err)
		}
	}
	if left := listNetNS(netnsPrefix(cfg.Name)); len(left) > 0 {
		return nil, fmt.Errorf("network namespaces %s exist but %s records no cluster: another cluster named %q is running "+
			"(choose another name) or one was lost (remove them with `nftguard-dev down --name %s --sweep`)",
			strings.Join(left, ", "), cfg.StateDir, cfg.Name, cfg.Name)
	}
	for _, d := range []string{cfg.StateDir, filepath.Join(cfg.StateDir, "logs"), filepath.Join(cfg.StateDir, "audit")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	st := &State{
		Version: stateVersion, Name: cfg.Name, Dir: cfg.StateDir, Created: time.Now().UTC(),
		Fingerprint: fp, Agents: cfg.Agent != "" || (cfg.RealNodes != nil && cfg.RealNodes.Install != ""), Topology: cfg.Topology,
	}
	if cfg.Owned {
		start, err := processStartTime(os.Getpid())
		if err != nil {
			return nil, err
		}
		st.Owner = &ProcessRef{Role: "owner", PID: os.Getpid(), StartTime: start}
	}
	c = &Cluster{cfg: cfg, procs: map[int]*proc{}}
	c.state = &stateStore{path: filepath.Join(cfg.StateDir, StateFile), state: st}
	if err := c.state.update(nil); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			// Everything started is removed; the logs the error points
			// to stay (only the state file goes, so nothing thinks a
			// cluster is there).
			st := c.state.snapshot()
			c.mu.Lock()
			live := maps.Clone(c.procs)
			c.mu.Unlock()
			if derr := teardown(&st, live, true); derr != nil {
				err = errors.Join(err, fmt.Errorf("cleaning up: %w", derr))
			} else {
				err = fmt.Errorf("%w\n(everything the cluster started is removed; its logs are kept in %s)", err, filepath.Join(cfg.StateDir, "logs"))
			}
			c = nil
		}
	}()
	up := c.up
	if cfg.RealNodes != nil {
		up = c.upReal
	}
	if err := up(ctx); err != nil {
		return c, err
	}
	return c, nil
}

func (c *Cluster) up(ctx context.Context) error {
	cfg := c.cfg
	start := time.Now()
	var err error
	if c.pki, err = newPKI(filepath.Join(cfg.StateDir, "pki")); err != nil {
		return err
	}
	nodes, pods := plan(cfg.Name, cfg.Topology)
	for i := range nodes {
		nodes[i].APIAddress = apiForwardAddress
		if cfg.Agent != "" {
			nodes[i].AuditLog = filepath.Join(cfg.StateDir, "audit", nodes[i].Name+".log")
		}
	}
	if err := c.state.update(func(s *State) { s.Nodes, s.Pods = nodes, pods }); err != nil {
		return err
	}

	// The network and the control plane come up side by side.
	netErr := make(chan error, 1)
	go func() { netErr <- c.buildNetwork(nodes, pods) }()
	cfg.Logf("Starting etcd and kube-apiserver")
	cpErr := func() error {
		etcdURL, err := c.startEtcd(ctx, "")
		if err != nil {
			return err
		}
		return c.startAPIServer(ctx, etcdURL)
	}()
	if err := errors.Join(cpErr, <-netErr); err != nil {
		return err
	}
	cfg.Logf("Network ready: %d nodes, %d pods (%s)", len(nodes), len(pods), time.Since(start).Round(time.Millisecond))

	if err := c.connect(); err != nil {
		return err
	}
	kubeconfig := filepath.Join(cfg.StateDir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, c.apiURL, c.pki.caCert, "admin", c.pki.admin.cert, c.pki.admin.key, ""); err != nil {
		return err
	}
	if err := c.state.update(func(s *State) { s.Kubeconfig = kubeconfig }); err != nil {
		return err
	}
	cfg.Logf("API server ready at %s (%s)", c.apiURL, time.Since(start).Round(time.Millisecond))
	if err := c.installCRDs(ctx); err != nil {
		return fmt.Errorf("installing CRDs: %w", err)
	}
	agentRole, err := c.installRBAC(ctx)
	if err != nil {
		return fmt.Errorf("installing RBAC: %w", err)
	}
	if err := c.registerNamespaces(ctx); err != nil {
		return err
	}
	if err := c.registerNodes(ctx, nodes); err != nil {
		return err
	}
	if err := c.createPods(ctx, pods); err != nil {
		return err
	}
	if err := c.startPodServers(pods); err != nil {
		return err
	}
	if err := c.markPodsRunning(ctx, nodes, pods); err != nil {
		return err
	}
	cfg.Logf("Registered %d nodes and %d running pods (%s)", len(nodes), len(pods), time.Since(start).Round(time.Millisecond))

	if cfg.Controller != "" {
		if err := c.startController(ctx); err != nil {
			return err
		}
		cfg.Logf("Controller ready (%s)", time.Since(start).Round(time.Millisecond))
	}
	if cfg.Agent != "" {
		if !agentRole {
			cfg.Logf("WARNING: %s is missing (run `make manifests`): the agents use the admin's credentials",
				filepath.Join(cfg.ManifestsDir, "agent", "role.yaml"))
		}
		if err := c.startAgents(ctx, nodes, agentRole); err != nil {
			return err
		}
		for _, p := range c.state.snapshot().Pods {
			if err := c.cniAdd(ctx, p); err != nil {
				return err
			}
		}
		what := "every node's rule set programmed"
		if cfg.Controller == "" {
			what = "healthy (no controller writes their rule sets)"
		}
		cfg.Logf("Agents running on %d nodes, %s (%s)", len(nodes), what, time.Since(start).Round(time.Millisecond))
	}
	return c.state.update(func(s *State) { s.Ready = true })
}

// buildNetwork creates the underlay, the nodes and the pods.
func (c *Cluster) buildNetwork(nodes []Node, pods []Pod) error {
	if err := c.buildUnderlay(); err != nil {
		return err
	}
	byName := map[string]Node{}
	for _, n := range nodes {
		if err := c.buildNode(n); err != nil {
			return err
		}
		byName[n.Name] = n
	}
	if err := c.routeNodes(nodes); err != nil {
		return err
	}
	for _, p := range pods {
		if err := c.buildPod(byName[p.Node], p); err != nil {
			return err
		}
	}
	return nil
}

// addNetNS records a network namespace, then creates it.
func (c *Cluster) addNetNS(name string) error {
	if err := c.state.update(func(s *State) { s.NetNS = append(s.NetNS, name) }); err != nil {
		return err
	}
	return createNetNS(name)
}

func (c *Cluster) logPath(name string) string {
	return filepath.Join(c.cfg.StateDir, "logs", name+".log")
}

// connect builds the admin's clients.
func (c *Cluster) connect() error {
	c.restCfg = c.adminConfig()
	cs, err := kubernetes.NewForConfig(c.restCfg)
	if err != nil {
		return err
	}
	c.clientset = cs
	scheme, err := v1alpha1.NewScheme()
	if err != nil {
		return err
	}
	cl, err := client.New(c.restCfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	c.client = cl
	return nil
}

// Attach opens the running cluster recorded in dir, to probe it or read
// its state. Down on the result tears the cluster down.
func Attach(dir string) (*Cluster, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	st, err := ReadState(abs)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		// Processes started through an attached cluster (AddPod) belong
		// to the cluster, not to the attaching process.
		cfg: Config{
			Name: st.Name, StateDir: abs, Topology: st.Topology, Helper: self, Detach: true,
			Logf: func(string, ...any) {},
		},
		state: &stateStore{path: filepath.Join(abs, StateFile), state: st},
		procs: map[int]*proc{}, apiURL: st.APIServer,
	}
	if st.APIServer != "" {
		if c.pki, err = loadPKI(filepath.Join(abs, "pki")); err != nil {
			return nil, err
		}
		if err := c.connect(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Down stops every process and removes every network namespace the cluster
// created, then its state directory. It goes on after errors and returns
// them all.
func (c *Cluster) Down() error {
	st := c.state.snapshot()
	c.mu.Lock()
	live := maps.Clone(c.procs)
	c.mu.Unlock()
	return down(&st, live)
}

// Cleanup tears down the cluster recorded in dir (a previous run, perhaps
// one that crashed). No state file: nothing to do.
func Cleanup(dir string) error {
	st, err := ReadState(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return down(st, nil)
}

func down(st *State, live map[int]*proc) error { return teardown(st, live, false) }

// teardown stops the processes and removes the namespaces and cgroups of
// st, then its directory, or with keepLogs only its state file.
func teardown(st *State, live map[int]*proc, keepLogs bool) error {
	errs := []error{stopAll(st.Processes, live)}
	for _, cg := range st.Cgroups {
		if err := removeCgroups(cg); err != nil {
			errs = append(errs, err)
		}
	}
	// Pods first, then nodes, then the underlay: the reverse of creation.
	ns := slices.Clone(st.NetNS)
	slices.Reverse(ns)
	for _, n := range ns {
		if err := deleteNetNS(n); err != nil {
			errs = append(errs, err)
		}
	}
	err := errors.Join(errs...)
	if err == nil && st.Dir != "" {
		// Keep the directory (logs, state) when something is left, so
		// that a second Cleanup can finish the job.
		if keepLogs {
			err = os.Remove(filepath.Join(st.Dir, StateFile))
		} else {
			err = os.RemoveAll(st.Dir)
		}
	}
	return err
}

// SweepNetNS removes every network namespace named for cluster name, even
// ones no state file records.
func SweepNetNS(name string) error {
	if err := validClusterName(name); err != nil {
		return err
	}
	var errs []error
	for _, n := range listNetNS(netnsPrefix(name)) {
		errs = append(errs, deleteNetNS(n))
	}
	return errors.Join(errs...)
}

// SweepStale tears down the clusters in the subdirectories of root whose
// owning process (Config.Owned) is gone: test runs that crashed.
func SweepStale(root string) error {
	entries, err := os.ReadDir(root)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var errs []error
	for _, e := range entries {
		dir := filepath.Join(root, e.Name())
		st, err := ReadState(dir)
		if err != nil || st.Owner == nil || st.Owner.alive() {
			continue
		}
		errs = append(errs, Cleanup(dir))
	}
	return errors.Join(errs...)
}

// Healthy reports the first problem of a running cluster: a process gone,
// a network namespace missing, the API server not ready.
func (c *Cluster) Healthy(ctx context.Context) error {
	st := c.state.snapshot()
	if !st.Ready {
		return errors.New("the cluster did not finish starting")
	}
	for _, p := range st.Processes {
		if !p.alive() {
			return fmt.Errorf("%s %s (pid %d) is not running", p.Role, p.Name, p.PID)
		}
	}
	for _, n := range st.NetNS {
		if !netnsExists(n) {
			return fmt.Errorf("network namespace %s is missing", n)
		}
	}
	hc, err := c.adminHTTPClient()
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.apiURL+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("API server: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("API server /readyz: %s", resp.Status)
	}
	return nil
}

// State returns a copy of the cluster's state.
func (c *Cluster) State() State { return c.state.snapshot() }

// Name is the cluster's name.
func (c *Cluster) Name() string { return c.cfg.Name }

// Kubeconfig is the path of the admin's kubeconfig.
func (c *Cluster) Kubeconfig() string { return c.state.snapshot().Kubeconfig }

// RESTConfig is the admin's client configuration.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.restCfg) }

// Clientset is a typed client with the admin's credentials.
func (c *Cluster) Clientset() kubernetes.Interface { return c.clientset }

// Client is a controller-runtime client with the admin's credentials that
// knows the Kubernetes and nftguard types.
func (c *Cluster) Client() client.Client { return c.client }

// Nodes lists the cluster's nodes.
func (c *Cluster) Nodes() []Node { return c.state.snapshot().Nodes }

// Pods lists the cluster's pods in topology order.
func (c *Cluster) Pods() []Pod { return c.state.snapshot().Pods }

// Pod finds a pod by "namespace/name".
func (c *Cluster) Pod(key string) (Pod, bool) {
	for _, p := range c.state.snapshot().Pods {
		if p.Key() == key {
			return p, true
		}
	}
	return Pod{}, false
}

// Processes lists the processes the cluster started.
func (c *Cluster) Processes() []ProcessRef { return c.state.snapshot().Processes }
