package localcluster

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// RealNodes makes the cluster's nodes real: each node is a network, mount
// and PID namespace running containerd (with runc), kubelet and kube-proxy;
// kube-controller-manager and kube-scheduler run beside the API server in a
// control-plane namespace on the underlay; pods are containers, wired by
// the CNI plugins ptp and host-local. See docs/local-cluster.md.
type RealNodes struct {
	// ProxyMode is kube-proxy's mode: "nftables" (default) or "iptables".
	ProxyMode string
	// Images are OCI archives imported into every node's containerd: the
	// sandbox (PauseImage), CoreDNS (CoreDNSImage), the test server
	// (TestServerImage) and whatever is installed.
	Images []string
	// Install is a kustomize directory applied with kubectl once the
	// nodes are ready (config/default); empty installs nothing.
	Install string
	// Kubectl applies Install (default: <BinDir>/kubectl).
	Kubectl string
	// KubeletArgs are appended to every kubelet's command line.
	KubeletArgs []string
}

// The images every real node needs, built from this repository by
// `make node-images`; nothing is ever pulled.
const (
	PauseImage      = "nftguard.test/pause:v1"
	CoreDNSImage    = "nftguard.test/coredns:v1"
	TestServerImage = "nftguard.test/testserver:v1"
)

// The control plane's place on the underlay, and the Services' addresses.
var (
	controlPlaneIPv4 = netip.AddrFrom4([4]byte{198, 19, 0, 250})
	kubeDNSIP        = netip.AddrFrom4([4]byte{198, 19, 128, 10})
	clusterCIDRs     = "198.18.0.0/16,fd00:18::/32"
)

const (
	controlPlaneIndex = 250
	apiServerPort     = 6443
	roleKCM           = "kube-controller-manager"
	roleScheduler     = "kube-scheduler"
)

func controlPlaneNetNS(name string) string { return netnsPrefix(name) + "cp" }

func (c *Cluster) nodeDir(n Node) string { return filepath.Join(c.cfg.StateDir, "nodes", n.Name) }

// cgroupRoot is the node's own cgroup, created in every hierarchy.
func (c *Cluster) cgroupRoot(n Node) string { return "/nftguard-" + c.cfg.Name + "-" + n.Name }

func (rn *RealNodes) setDefaults(cfg *Config) error {
	switch rn.ProxyMode {
	case "":
		rn.ProxyMode = "nftables"
	case "nftables", "iptables":
	default:
		return fmt.Errorf("kube-proxy mode %q: want nftables or iptables", rn.ProxyMode)
	}
	if rn.Kubectl == "" {
		rn.Kubectl = filepath.Join(cfg.BinDir, "kubectl")
	}
	need := []string{"kube", "kubectl", "etcd", "containerd", "containerd-shim-runc-v2", "ctr", "cni/ptp", "cni/host-local", "cni/loopback"}
	for _, b := range need {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, b)); err != nil {
			return fmt.Errorf("%w (run `make node-binaries`)", err)
		}
	}
	for _, p := range []string{"/usr/sbin/runc", "/usr/sbin/nft"} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%w (run `make node-packages`: Debian's runc and nftables)", err)
		}
	}
	if rn.ProxyMode == "iptables" {
		if _, err := os.Stat("/usr/sbin/iptables"); err != nil {
			return fmt.Errorf("%w (run `make node-packages`: Debian's iptables)", err)
		}
	}
	for _, img := range rn.Images {
		if _, err := os.Stat(img); err != nil {
			return fmt.Errorf("image archive: %w (run `make images node-images`)", err)
		}
	}
	return nil
}

// upReal brings up a cluster of real nodes (Config.RealNodes).
func (c *Cluster) upReal(ctx context.Context) error {
	cfg := c.cfg
	start := time.Now()
	since := func() time.Duration { return time.Since(start).Round(time.Millisecond) }
	var err error
	if c.pki, err = newPKI(filepath.Join(cfg.StateDir, "pki")); err != nil {
		return err
	}
	nodes, _ := plan(cfg.Name, cfg.Topology)
	for i := range nodes {
		if cfg.RealNodes.Install != "" {
			// The DaemonSet's hostPath, in the node's own /var/log.
			nodes[i].AuditLog = filepath.Join(c.nodeDir(nodes[i]), "var", "log", "nftguard", "drops.log")
		}
	}
	if err := c.realPKI(nodes); err != nil {
		return err
	}
	if err := c.state.update(func(s *State) { s.Nodes, s.Pods, s.RealNodes = nodes, nil, true }); err != nil {
		return err
	}
	cfg.Logf("Building the network: underlay, control plane and %d nodes", len(nodes))
	if err := c.buildRealNetwork(nodes); err != nil {
		return err
	}
	cfg.Logf("Starting etcd, kube-apiserver, kube-controller-manager and kube-scheduler")
	if err := c.startRealControlPlane(ctx); err != nil {
		return err
	}
	cfg.Logf("API server ready at %s (%s)", c.apiURL, since())
	for _, n := range nodes {
		if err := c.startRealNode(n); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	if err := c.waitNodesReady(ctx, nodes); err != nil {
		return err
	}
	cfg.Logf("%d nodes Ready (%s)", len(nodes), since())
	if err := c.installClusterDNS(ctx); err != nil {
		return fmt.Errorf("CoreDNS: %w", err)
	}
	if rn := cfg.RealNodes; rn.Install != "" {
		cfg.Logf("Installing %s with kubectl apply -k", rn.Install)
		if err := c.kubectl(ctx, "apply", "--server-side", "-k", rn.Install); err != nil {
			return err
		}
		if err := c.waitAgentsInstalled(ctx, nodes); err != nil {
			return err
		}
		cfg.Logf("nftguard programmed on %d nodes (%s)", len(nodes), since())
	}
	if err := c.registerNamespaces(ctx); err != nil {
		return err
	}
	if err := c.createRealPods(ctx); err != nil {
		return err
	}
	if err := c.waitRealPods(ctx); err != nil {
		return err
	}
	if err := c.waitServices(ctx); err != nil {
		return err
	}
	cfg.Logf("CoreDNS and %d pods running (%s)", len(cfg.Topology.Pods), since())
	return c.state.update(func(s *State) { s.Ready = true })
}

// realPKI issues the certificates of the control plane's clients, of each
// kubelet (client and serving) and of kube-proxy.
func (c *Cluster) realPKI(nodes []Node) error {
	client := func(cn string, orgs ...string) *x509.Certificate {
		return &x509.Certificate{
			Subject:     pkix.Name{CommonName: cn, Organization: orgs},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
	}
	certs := map[string]*x509.Certificate{
		"kube-controller-manager": client("system:kube-controller-manager"),
		"kube-scheduler":          client("system:kube-scheduler"),
		"kube-proxy":              client("system:kube-proxy"),
		"apiserver-kubelet":       client("kube-apiserver-kubelet-client", "system:masters"),
		"apiserver-nodes": {
			Subject:     pkix.Name{CommonName: "kube-apiserver"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), controlPlaneIPv4.AsSlice(), serviceIP},
		},
	}
	for _, n := range nodes {
		certs["kubelet-"+n.Name] = client("system:node:"+n.Name, "system:nodes")
		certs["kubelet-serving-"+n.Name] = &x509.Certificate{
			Subject:     pkix.Name{CommonName: "system:node:" + n.Name, Organization: []string{"system:nodes"}},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			DNSNames:    []string{n.Name},
			IPAddresses: []net.IP{n.IPv4.AsSlice(), n.IPv6.AsSlice()},
		}
	}
	for name, tmpl := range certs {
		if err := c.pki.issueFiles(name, tmpl); err != nil {
			return fmt.Errorf("certificate %s: %w", name, err)
		}
	}
	return nil
}

// buildRealNetwork: the underlay bridge, the control plane's namespace on
// it, the nodes, and routes from every node and the control plane to every
// node's pod ranges.
func (c *Cluster) buildRealNetwork(nodes []Node) error {
	if err := c.buildUnderlay(); err != nil {
		return err
	}
	cp := Node{
		Name: "control-plane", Index: controlPlaneIndex, NetNS: controlPlaneNetNS(c.cfg.Name),
		IPv4: controlPlaneIPv4, IPv6: underlayIPv6(controlPlaneIndex),
	}
	for _, n := range append([]Node{cp}, nodes...) {
		if err := c.buildNode(n); err != nil {
			return err
		}
	}
	if err := c.routeNodes(append([]Node{cp}, nodes...)); err != nil {
		return err
	}
	// Like a real node's default gateway: the first routing decision of a
	// host-network process's packet to a Service address (DNAT comes after
	// it, in the output hook) needs a route. The control plane routes
	// nowhere further: nothing leaves the cluster's namespaces.
	for _, n := range nodes {
		if err := defaultRoutes(n.NetNS, cp); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	return nil
}

func defaultRoutes(ns string, via Node) error {
	h, fd, err := nsHandle(ns)
	if err != nil {
		return err
	}
	defer closeFD(fd)
	defer h.Close()
	up, err := h.LinkByName(nodeUplink)
	if err != nil {
		return err
	}
	for _, gw := range []netip.Addr{via.IPv4, via.IPv6} {
		dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if gw.Is6() {
			dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		if err := h.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index, Dst: ipNet(dst), Gw: gw.AsSlice()}); err != nil {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
	}
	return nil
}

// netnsHTTPClient dials from inside a network namespace.
func netnsHTTPClient(ns string, base *http.Transport) *http.Client {
	t := base.Clone()
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := inNetNS(ns, func() error {
			var err error
			conn, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
	return &http.Client{Transport: t, Timeout: 10 * time.Second}
}

func (c *Cluster) startRealControlPlane(ctx context.Context) error {
	cp := controlPlaneNetNS(c.cfg.Name)
	etcdURL, err := c.startEtcd(ctx, cp)
	if err != nil {
		return err
	}
	pk := c.pki
	inside := fmt.Sprintf("https://%s:%d", controlPlaneIPv4, apiServerPort)
	p, err := c.start(procSpec{
		role: roleAPIServer, path: filepath.Join(c.cfg.BinDir, "kube"), netns: cp, log: c.logPath("kube-apiserver"),
		args: append([]string{
			"kube-apiserver",
			"--etcd-servers=" + etcdURL,
			"--bind-address=0.0.0.0",
			"--advertise-address=" + controlPlaneIPv4.String(),
			"--secure-port=" + strconv.Itoa(apiServerPort),
			"--tls-cert-file=" + pk.path("apiserver-nodes.crt"),
			"--tls-private-key-file=" + pk.path("apiserver-nodes.key"),
			"--client-ca-file=" + pk.path("ca.crt"),
			"--kubelet-client-certificate=" + pk.path("apiserver-kubelet.crt"),
			"--kubelet-client-key=" + pk.path("apiserver-kubelet.key"),
			"--kubelet-certificate-authority=" + pk.path("ca.crt"),
			"--kubelet-preferred-address-types=InternalIP",
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + pk.path("sa.pub"),
			"--service-account-signing-key-file=" + pk.path("sa.key"),
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--allow-privileged=true",
			"--service-cluster-ip-range=" + serviceRange,
			"--cert-dir=" + filepath.Join(c.cfg.StateDir, "pki", "apiserver"),
			"--profiling=false",
			// Aggregated APIs (the drops API) are reached at their
			// endpoints' addresses: no kube-proxy runs beside the API server.
			"--enable-aggregator-routing=true",
		}, pk.frontProxyArgs()...),
	})
	if err != nil {
		return err
	}
	// The harness and kubectl reach it through a forwarder on loopback.
	port, err := freePort()
	if err != nil {
		return err
	}
	c.apiURL = fmt.Sprintf("https://127.0.0.1:%d", port)
	fwd, err := c.start(procSpec{
		role: roleForward, name: "api", path: c.cfg.Helper,
		args: []string{roleForward, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--dial-netns", netnsPath(cp),
			"--to", fmt.Sprintf("%s:%d", controlPlaneIPv4, apiServerPort)},
		env: []string{childRoleEnv + "=" + roleForward}, log: c.logPath("forward-api"), ready: true,
	})
	if err != nil {
		return err
	}
	if err := fwd.waitReady(10 * time.Second); err != nil {
		return fmt.Errorf("API forwarder: %w", err)
	}
	if err := c.state.update(func(s *State) { s.APIServer = c.apiURL }); err != nil {
		return err
	}
	hc, err := c.adminHTTPClient()
	if err != nil {
		return err
	}
	if err := waitFor(ctx, p, 120*time.Second, func() (bool, error) {
		resp, err := hc.Get(c.apiURL + "/readyz")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	}); err != nil {
		return fmt.Errorf("kube-apiserver: %w (log %s)", err, c.logPath("kube-apiserver"))
	}
	if err := c.connect(); err != nil {
		return err
	}
	kubeconfig := filepath.Join(c.cfg.StateDir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, c.apiURL, pk.caCert, "admin", pk.admin.cert, pk.admin.key, ""); err != nil {
		return err
	}
	if err := c.state.update(func(s *State) { s.Kubeconfig = kubeconfig }); err != nil {
		return err
	}

	for _, comp := range []struct {
		role string
		args []string
	}{
		{roleKCM, []string{
			"--use-service-account-credentials=true",
			"--service-account-private-key-file=" + pk.path("sa.key"),
			"--root-ca-file=" + pk.path("ca.crt"),
			"--allocate-node-cidrs=false",
			"--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route",
		}},
		{roleScheduler, nil},
	} {
		kc, err := c.certKubeconfig(comp.role, inside, "")
		if err != nil {
			return err
		}
		args := append([]string{comp.role,
			"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
			"--leader-elect=false", "--bind-address=127.0.0.1",
		}, comp.args...)
		if _, err := c.start(procSpec{role: comp.role, path: filepath.Join(c.cfg.BinDir, "kube"), netns: cp, log: c.logPath(comp.role), args: args}); err != nil {
			return err
		}
	}
	return nil
}

// certKubeconfig writes a kubeconfig for the client certificate name, to
// path or (empty) to <state>/pki/<name>.kubeconfig.
func (c *Cluster) certKubeconfig(name, server, path string) (string, error) {
	cert, err := os.ReadFile(c.pki.path(name + ".crt"))
	if err != nil {
		return "", err
	}
	key, err := os.ReadFile(c.pki.path(name + ".key"))
	if err != nil {
		return "", err
	}
	if path == "" {
		path = filepath.Join(c.cfg.StateDir, "pki", name+".kubeconfig")
	}
	return path, writeKubeconfig(path, server, c.pki.caCert, name, cert, key, "")
}

// createCgroups makes the node's cgroup in every mounted hierarchy, with
// the parent's cpus and memory nodes where cpuset needs them.
func createCgroups(root string) error {
	for _, h := range cgroupHierarchies() {
		d := filepath.Join(h, root)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("cgroup %s: %w", d, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(h, f)); err == nil {
				if err := os.WriteFile(filepath.Join(d, f), v, 0o644); err != nil {
					return fmt.Errorf("cgroup %s/%s: %w", d, f, err)
				}
			}
		}
	}
	return nil
}

// removeCgroups removes a node's cgroup trees, deepest first.
func removeCgroups(root string) error {
	var errs []error
	for _, h := range cgroupHierarchies() {
		top := filepath.Join(h, root)
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			var err error
			for try := 0; try < 50; try++ {
				if err = unix.Rmdir(dirs[i]); err == nil || errors.Is(err, unix.ENOENT) {
					err = nil
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// cgroupHierarchies lists the mounted cgroup hierarchies (v1 controllers,
// the named systemd one, and the unified v2 one on hybrid machines).
func cgroupHierarchies() []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		fstype := strings.Fields(post)[0]
		if fstype != "cgroup" && fstype != "cgroup2" {
			continue
		}
		f := strings.Fields(pre)
		if len(f) >= 5 {
			out = append(out, f[4])
		}
	}
	return out
}

func (c *Cluster) startRealNode(n Node) error {
	dir := c.nodeDir(n)
	cfgDir := filepath.Join(dir, "config")
	if err := os.MkdirAll(cfgDir, 0o755); err != nil {
		return err
	}
	if err := c.state.update(func(s *State) { s.Cgroups = append(s.Cgroups, c.cgroupRoot(n)) }); err != nil {
		return err
	}
	if err := createCgroups(c.cgroupRoot(n)); err != nil {
		return err
	}
	if err := c.writeNodeConfig(n, cfgDir); err != nil {
		return err
	}
	p, err := c.start(procSpec{
		role: roleNode, name: n.Name, path: c.cfg.Helper, netns: n.NetNS, log: c.logPath("node-" + n.Name),
		args: append([]string{roleNode, "--name", n.Name, "--dir", dir, "--bin", c.cfg.BinDir, "--log-dir", filepath.Join(c.cfg.StateDir, "logs"),
			"--images", strings.Join(c.cfg.RealNodes.Images, ",")}, kubeletArgFlags(c.cfg.RealNodes.KubeletArgs)...),
		env:        []string{childRoleEnv + "=" + roleNode},
		cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID,
		ready:      true,
	})
	if err != nil {
		return err
	}
	if err := p.waitReady(5 * time.Minute); err != nil {
		return err // with the tail of the node's log, which says what failed
	}
	return nil
}

func (c *Cluster) writeNodeConfig(n Node, dir string) error {
	pk := c.pki
	rn := c.cfg.RealNodes
	api := fmt.Sprintf("https://%s:%d", controlPlaneIPv4, apiServerPort)
	if _, err := c.certKubeconfig("kubelet-"+n.Name, api, filepath.Join(dir, "kubelet.kubeconfig")); err != nil {
		return err
	}
	proxyKC, err := c.certKubeconfig("kube-proxy", api, "")
	if err != nil {
		return err
	}
	hosts := "127.0.0.1 localhost\n::1 localhost\n"
	for _, o := range c.state.snapshot().Nodes {
		hosts += fmt.Sprintf("%s %s\n", o.IPv4, o.Name)
	}
	files := map[string]string{
		"node-ip": n.IPv4.String() + "," + n.IPv6.String(),
		// No upstream resolver: the machine's is never used. Pods with
		// dnsPolicy ClusterFirst get kube-dns from kubelet.
		"resolv.conf": "# the node has no resolver of its own; pods use kube-dns\noptions ndots:1\n",
		"hosts":       hosts,
		"10-ptp.conflist": fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "pods",
  "plugins": [
    {
      "type": "ptp",
      "mtu": 1500,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}], [{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
      }
    }
  ]
}
`, n.PodCIDRv4, n.PodCIDRv6),
		"containerd.toml": fmt.Sprintf(`version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %q

[plugins.'io.containerd.cri.v1.runtime']
  # CAP_SYS_RESOURCE is not in this machine's bounding set.
  restrict_oom_score_adj = true
  tolerate_missing_hugetlb_controller = true
  disable_hugetlb_controller = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q
`, containerdSocket, PauseImage),
		"kubelet.yaml": fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %q}
authorization: {mode: Webhook}
tlsCertFile: %q
tlsPrivateKeyFile: %q
address: %q
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
cgroupRoot: %q
failCgroupV1: false
failSwapOn: false
protectKernelDefaults: false
clusterDNS: [%q]
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
# Images are imported, never pulled: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%%
  imagefs.available: 1%%
  nodefs.inodesFree: 1%%
serializeImagePulls: false
shutdownGracePeriod: 0s
rotateCertificates: false
`, pk.path("ca.crt"), pk.path("kubelet-serving-"+n.Name+".crt"), pk.path("kubelet-serving-"+n.Name+".key"),
			n.IPv4.String(), containerdSocket, c.cgroupRoot(n), kubeDNSIP.String()),
		"kube-proxy.yaml": fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %q
mode: %s
clusterCIDR: %q
detectLocalMode: ClusterCIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Zero leaves the machine-wide conntrack settings alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, proxyKC, rn.ProxyMode, clusterCIDRs),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// waitNodesReady waits for every node to register, gives it its pod
// ranges (the cluster's installer does, as no node IPAM runs), and waits
// for Ready. A node whose init died is reported with its log.
func (c *Cluster) waitNodesReady(ctx context.Context, nodes []Node) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	pending := map[string]Node{}
	for _, n := range nodes {
		pending[n.Name] = n
	}
	cidrsSet := map[string]bool{}
	for len(pending) > 0 {
		for _, p := range c.state.snapshot().Processes {
			if p.Role == roleNode && !p.alive() {
				return fmt.Errorf("node %s failed: its init (pid %d) exited; log %s:\n%s", p.Name, p.PID, p.Log, tail(p.Log, 15))
			}
		}
		for name, n := range pending {
			node, err := c.clientset.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				continue
			}
			if !cidrsSet[name] && len(node.Spec.PodCIDRs) == 0 {
				patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%q,%q]}}`, n.PodCIDRv4, n.PodCIDRv4, n.PodCIDRv6)
				if _, err := c.clientset.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
					return fmt.Errorf("node %s: setting its pod CIDRs: %w", name, err)
				}
				cidrsSet[name] = true
			}
			for _, cond := range node.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					delete(pending, name)
				}
			}
		}
		select {
		case <-ctx.Done():
			var names []string
			for n := range pending {
				names = append(names, n+" (kubelet log "+filepath.Join(c.cfg.StateDir, "logs", n+"-kubelet.log")+")")
			}
			return fmt.Errorf("nodes not Ready after 3m: %s", strings.Join(names, ", "))
		case <-time.After(250 * time.Millisecond):
		}
	}
	return nil
}

// waitAgentsInstalled waits, after the install, until every node's agent
// has programmed its NodeRuleSet and, where it chains the CNI plugin
// itself, reports CNIChained=True: each pod created from then on reaches
// the agent through the plugin, as a workload installed after nftguard
// does. A pod whose sandbox the runtime creates in the moment the agent
// chains the plugin would be known to it only through the adoption of the
// pods already running, so the topology's pods are created after this.
func (c *Cluster) waitAgentsInstalled(ctx context.Context, nodes []Node) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		var pending []string
		for _, n := range nodes {
			rs := &v1alpha1.NodeRuleSet{}
			if err := c.client.Get(ctx, client.ObjectKey{Name: n.Name}, rs); err != nil {
				pending = append(pending, n.Name+": "+err.Error())
				continue
			}
			if !isProgrammed(rs) {
				pending = append(pending, n.Name+": rule set not programmed")
				continue
			}
			if cc := meta.FindStatusCondition(rs.Status.Conditions, v1alpha1.ConditionCNIChained); cc != nil && cc.Status != metav1.ConditionTrue {
				pending = append(pending, fmt.Sprintf("%s: CNI plugin not chained (%s: %s)", n.Name, cc.Reason, cc.Message))
			}
		}
		if len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nftguard not in place after 3m (agent logs: kubectl -n nftguard-system logs -l app.kubernetes.io/component=agent -c agent):\n  %s",
				strings.Join(pending, "\n  "))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// kubectl runs bin/kubectl with the admin's kubeconfig.
func (c *Cluster) kubectl(ctx context.Context, args ...string) error {
	cmd := execCommand(ctx, c.cfg.RealNodes.Kubectl, append([]string{"--kubeconfig", c.Kubeconfig()}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// DefaultImages are the archives `make real-nodes` builds under binDir: the
// nodes' own images and nftguard's.
func DefaultImages(binDir string) []string {
	var out []string
	for _, n := range []string{"node-images/pause", "node-images/coredns", "node-images/testserver", "images/controller", "images/agent"} {
		out = append(out, filepath.Join(binDir, n+".tar"))
	}
	return out
}

func kubeletArgFlags(args []string) []string {
	var out []string
	for _, a := range args {
		out = append(out, "--kubelet-arg="+a)
	}
	return out
}
