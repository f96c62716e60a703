package localcluster

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/vishvananda/netlink"
)

// LabelPod is the label the harness gives each topology pod on real nodes,
// so that the pod's own Service selects it and nothing else.
const LabelPod = "localcluster.nftguard.io/pod"

// clusterDNSManifest is CoreDNS as kube-dns, from this repository's image:
// the kubernetes plugin only (no upstream resolver: the cluster has none).
// It runs as the nonroot user and binds port 53 through the namespaced
// sysctl ip_unprivileged_port_start, which kubelet allows by default.
const clusterDNSManifest = `apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {kind: ServiceAccount, name: coredns, namespace: kube-system}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 5
        }
        cache 5
        loadbalance
        reload
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 1
  selector:
    matchLabels: {k8s-app: kube-dns}
  template:
    metadata:
      labels: {k8s-app: kube-dns}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      terminationGracePeriodSeconds: 1
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        sysctls:
        - {name: net.ipv4.ip_unprivileged_port_start, value: "0"}
      containers:
      - name: coredns
        image: %s
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
          periodSeconds: 2
        livenessProbe:
          httpGet: {path: /health, port: 8080}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
        volumeMounts:
        - {name: config, mountPath: /etc/coredns, readOnly: true}
      volumes:
      - name: config
        configMap: {name: coredns}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  clusterIP: %s
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
`

// installClusterDNS applies CoreDNS and the kube-dns Service.
func (c *Cluster) installClusterDNS(ctx context.Context) error {
	p := filepath.Join(c.cfg.StateDir, "coredns.yaml")
	if err := os.WriteFile(p, []byte(fmt.Sprintf(clusterDNSManifest, CoreDNSImage, kubeDNSIP)), 0o644); err != nil {
		return err
	}
	return c.kubectl(ctx, "apply", "--server-side", "-f", p)
}

// isClusterDNS tells the topology's stand-in for cluster DNS, which real
// CoreDNS replaces on real nodes.
func isClusterDNS(p PodSpec) bool {
	return p.Namespace == "kube-system" && p.Labels["k8s-app"] == "kube-dns"
}

// realPodObjects are a topology pod on real nodes: the test server on its
// node (through the scheduler), with its container ports named, a readiness
// probe on its first TCP port, and a Service of its own.
func realPodObjects(p PodSpec) (*corev1.Pod, *corev1.Service) {
	labels := copyLabels(p.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[LabelPod] = p.Name
	var ports []corev1.ContainerPort
	var svcPorts []corev1.ServicePort
	var probe *corev1.Probe
	for _, pp := range p.Ports {
		ports = append(ports, corev1.ContainerPort{Name: pp.Name, ContainerPort: pp.Port, Protocol: pp.Protocol})
		sp := corev1.ServicePort{
			Name: strings.ToLower(string(pp.Protocol)) + "-" + strconv.Itoa(int(pp.Port)), Protocol: pp.Protocol,
			Port: pp.Port, TargetPort: intstr.FromInt32(pp.Port),
		}
		if pp.Name != "" {
			sp.TargetPort = intstr.FromString(pp.Name)
		}
		svcPorts = append(svcPorts, sp)
		if probe == nil && pp.Protocol == corev1.ProtocolTCP {
			probe = &corev1.Probe{
				ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(pp.Port)}},
				PeriodSeconds: 1, FailureThreshold: 3,
			}
		}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeSelector:                  map[string]string{"kubernetes.io/hostname": p.Node},
			AutomountServiceAccountToken:  ptr.To(false),
			EnableServiceLinks:            ptr.To(false),
			TerminationGracePeriodSeconds: ptr.To(int64(1)),
			Containers: []corev1.Container{{
				Name: "server", Image: TestServerImage, ImagePullPolicy: corev1.PullNever,
				Args: podServerArgs(p.Key(), p.Ports), Ports: ports, ReadinessProbe: probe,
				SecurityContext: &corev1.SecurityContext{
					// Raw IP protocol 132 sockets answer SCTP; ports below
					// 1024 need the bind capability.
					Capabilities: &corev1.Capabilities{
						Drop: []corev1.Capability{"ALL"},
						Add:  []corev1.Capability{"NET_RAW", "NET_BIND_SERVICE"},
					},
					AllowPrivilegeEscalation: ptr.To(false),
					ReadOnlyRootFilesystem:   ptr.To(true),
				},
			}},
		},
	}
	var svc *corev1.Service
	if len(svcPorts) > 0 {
		svc = &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name},
			Spec:       corev1.ServiceSpec{Selector: map[string]string{LabelPod: p.Name}, Ports: svcPorts},
		}
	}
	return pod, svc
}

// waitDefaultServiceAccount waits until kube-controller-manager has made
// the namespace's default ServiceAccount: until then the ServiceAccount
// admission plugin refuses the namespace's pods.
func (c *Cluster) waitDefaultServiceAccount(ctx context.Context, ns string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		_, err := c.clientset.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("namespace %s has no default ServiceAccount after 1m (kube-controller-manager's log: %s): %w",
				ns, c.logPath(roleKCM), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// createRealPods creates the topology's pods and their Services.
func (c *Cluster) createRealPods(ctx context.Context) error {
	seen := map[string]bool{}
	for _, p := range c.cfg.Topology.Pods {
		if !seen[p.Namespace] {
			seen[p.Namespace] = true
			if err := c.waitDefaultServiceAccount(ctx, p.Namespace); err != nil {
				return err
			}
		}
	}
	for _, p := range c.cfg.Topology.Pods {
		if isClusterDNS(p) {
			c.cfg.Logf("Pod %s: real CoreDNS serves kube-dns on real nodes", p.Key())
			continue
		}
		pod, svc := realPodObjects(p)
		if _, err := c.clientset.CoreV1().Pods(p.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("pod %s: %w", p.Key(), err)
		}
		if svc != nil {
			if _, err := c.clientset.CoreV1().Services(p.Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
				return fmt.Errorf("service %s: %w", p.Key(), err)
			}
		}
	}
	return nil
}

// waitRealPods waits until CoreDNS and every topology pod is Ready, then
// records each pod's addresses, Service address and network namespace.
func (c *Cluster) waitRealPods(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		notReady, err := c.podsNotReady(ctx)
		if err != nil {
			return err
		}
		if len(notReady) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pods not Ready after 3m:\n  %s", strings.Join(notReady, "\n  "))
		case <-time.After(250 * time.Millisecond):
		}
	}
	var pods []Pod
	for _, spec := range c.cfg.Topology.Pods {
		if isClusterDNS(spec) {
			continue
		}
		p, err := c.recordRealPod(ctx, spec)
		if err != nil {
			return err
		}
		pods = append(pods, p)
	}
	return c.state.update(func(s *State) { s.Pods = pods })
}

// podsNotReady describes each pod of the topology or of kube-dns that is
// not Ready yet, with its containers' waiting reasons.
func (c *Cluster) podsNotReady(ctx context.Context) ([]string, error) {
	var out []string
	check := func(pod *corev1.Pod) {
		if podReady(pod) {
			return
		}
		what := string(pod.Status.Phase)
		for _, cs := range pod.Status.ContainerStatuses {
			if w := cs.State.Waiting; w != nil {
				what += fmt.Sprintf("; %s waiting: %s %s", cs.Name, w.Reason, w.Message)
			}
			if t := cs.State.Terminated; t != nil {
				what += fmt.Sprintf("; %s terminated: %s (exit %d) %s", cs.Name, t.Reason, t.ExitCode, t.Message)
			}
		}
		if pod.Spec.NodeName == "" {
			what += "; not scheduled"
		}
		out = append(out, fmt.Sprintf("%s/%s on %q: %s", pod.Namespace, pod.Name, pod.Spec.NodeName, what))
	}
	dns, err := c.clientset.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-dns"})
	if err != nil {
		return nil, err
	}
	if len(dns.Items) == 0 {
		out = append(out, "kube-system/coredns: no pod yet")
	}
	for i := range dns.Items {
		check(&dns.Items[i])
	}
	for _, spec := range c.cfg.Topology.Pods {
		if isClusterDNS(spec) {
			continue
		}
		pod, err := c.clientset.CoreV1().Pods(spec.Namespace).Get(ctx, spec.Name, metav1.GetOptions{})
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %v", spec.Key(), err))
			continue
		}
		check(pod)
	}
	sort.Strings(out)
	return out, nil
}

// recordRealPod reads a running pod's addresses and finds its network
// namespace among those containerd made on its node.
func (c *Cluster) recordRealPod(ctx context.Context, spec PodSpec) (Pod, error) {
	pod, err := c.clientset.CoreV1().Pods(spec.Namespace).Get(ctx, spec.Name, metav1.GetOptions{})
	if err != nil {
		return Pod{}, err
	}
	p := Pod{
		Namespace: spec.Namespace, Name: spec.Name, Node: pod.Spec.NodeName,
		Labels: copyLabels(spec.Labels), Ports: append([]PortSpec(nil), spec.Ports...),
	}
	for _, ip := range pod.Status.PodIPs {
		a, err := netip.ParseAddr(ip.IP)
		if err != nil {
			return Pod{}, fmt.Errorf("pod %s: address %q: %w", spec.Key(), ip.IP, err)
		}
		if a.Is4() {
			p.IPv4 = a
		} else {
			p.IPv6 = a
		}
	}
	if !p.IPv4.IsValid() {
		return Pod{}, fmt.Errorf("pod %s has no IPv4 address: %v", spec.Key(), pod.Status.PodIPs)
	}
	if svc, err := c.clientset.CoreV1().Services(spec.Namespace).Get(ctx, spec.Name, metav1.GetOptions{}); err == nil {
		if a, err := netip.ParseAddr(svc.Spec.ClusterIP); err == nil {
			p.ServiceIP = a
		}
	}
	if p.NetNS, err = c.findPodNetNS(p.Node, p.IPv4); err != nil {
		return Pod{}, fmt.Errorf("pod %s: %w", spec.Key(), err)
	}
	return p, nil
}

// NodeRoot is a real node's root directory seen from the machine: its
// init's /proc/<pid>/root, where its /run/netns is and what kubelet mounts
// (projected volumes are tmpfs mounts of the node's own).
func (c *Cluster) NodeRoot(node string) (string, error) {
	for _, r := range c.state.snapshot().Processes {
		if r.Role == roleNode && r.Name == node && r.alive() {
			return "/proc/" + strconv.Itoa(r.PID) + "/root", nil
		}
	}
	return "", fmt.Errorf("node %s: its init is not running", node)
}

// findPodNetNS returns the path of the network namespace on node that
// holds addr.
func (c *Cluster) findPodNetNS(node string, addr netip.Addr) (string, error) {
	root, err := c.NodeRoot(node)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, "run", "netns")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		h, fd, err := nsHandle(path)
		if err != nil {
			continue
		}
		addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
		h.Close()
		closeFD(fd)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
				return path, nil
			}
		}
	}
	return "", fmt.Errorf("no network namespace in %s holds %s", dir, addr)
}

// execCommand is exec.CommandContext with the environment of this process.
func execCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = os.Environ()
	return cmd
}

// waitServices waits until kube-proxy on every node serves each pod's
// Service: a probe from a pod on each node reaches every Service through
// its ClusterIP (until then kube-proxy rejects what has no endpoints yet).
func (c *Cluster) waitServices(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	from := map[string]string{} // node -> a pod on it
	for _, p := range c.Pods() {
		if _, ok := from[p.Node]; !ok {
			from[p.Node] = p.Key()
		}
	}
	for _, src := range from {
		for _, dst := range c.Pods() {
			if !dst.ServiceIP.IsValid() || len(dst.Ports) == 0 {
				continue
			}
			pp := dst.Ports[0]
			for {
				r := c.ProbeWith(ctx, ProbeRequest{From: src, To: dst.Key(), Port: intstr.FromInt32(pp.Port), Protocol: pp.Protocol, Service: true})
				if r.Reachable() {
					break
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("Service of pod %s does not serve from %s: %s", dst.Key(), src, r)
				case <-time.After(200 * time.Millisecond):
				}
			}
		}
	}
	return nil
}

// ImportImage imports an OCI archive into every real node's containerd, as
// the nodes' init does at start (every platform, by digest).
func (c *Cluster) ImportImage(ctx context.Context, archive string) error {
	if !c.state.snapshot().RealNodes {
		return fmt.Errorf("importing %s: the cluster's nodes are not real", archive)
	}
	for _, n := range c.Nodes() {
		root, err := c.NodeRoot(n.Name)
		if err != nil {
			return err
		}
		bin := c.cfg.BinDir
		if bin == "" { // attached
			bin = filepath.Join(RepoRoot(), "bin")
		}
		sock := filepath.Join(root, containerdSocket)
		cmd := execCommand(ctx, filepath.Join(bin, "ctr"), "--address", sock, "--namespace", "k8s.io",
			"images", "import", "--all-platforms", "--digests", archive)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("node %s: importing %s: %w: %s", n.Name, archive, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// addRealPod is AddPod on real nodes: the pod and its Service are created
// as a user would, kubelet and containerd start it, and it is recorded once
// Ready, with its address and network namespace.
func (c *Cluster) addRealPod(ctx context.Context, spec PodSpec, namespaces []NamespaceSpec) (Pod, error) {
	if err := c.state.update(func(s *State) { s.Topology.Namespaces = namespaces }); err != nil {
		return Pod{}, err
	}
	c.cfg.Topology = c.state.snapshot().Topology
	if err := c.registerNamespaces(ctx); err != nil {
		return Pod{}, err
	}
	if err := c.waitDefaultServiceAccount(ctx, spec.Namespace); err != nil {
		return Pod{}, err
	}
	pod, svc := realPodObjects(spec)
	if _, err := c.clientset.CoreV1().Pods(spec.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return Pod{}, fmt.Errorf("pod %s: %w", spec.Key(), err)
	}
	if svc != nil {
		if _, err := c.clientset.CoreV1().Services(spec.Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			return Pod{}, fmt.Errorf("service %s: %w", spec.Key(), err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		got, err := c.clientset.CoreV1().Pods(spec.Namespace).Get(wctx, spec.Name, metav1.GetOptions{})
		if err == nil && podReady(got) {
			break
		}
		select {
		case <-wctx.Done():
			return Pod{}, fmt.Errorf("pod %s not Ready after 2m: %v", spec.Key(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	p, err := c.recordRealPod(ctx, spec)
	if err != nil {
		return Pod{}, err
	}
	return p, c.state.update(func(s *State) {
		s.Pods = append(s.Pods, p)
		s.Topology.Pods = append(s.Topology.Pods, spec)
	})
}

// deleteRealPod deletes a pod and its Service and waits until the pod is
// gone (kubelet has stopped it and its sandbox).
func (c *Cluster) deleteRealPod(ctx context.Context, pod Pod) error {
	key := pod.Key()
	err := c.clientset.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting pod %s: %w", key, err)
	}
	err = c.clientset.CoreV1().Services(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting service %s: %w", key, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		_, err := c.clientset.CoreV1().Pods(pod.Namespace).Get(wctx, pod.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("pod %s still there after 2m", key)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return c.state.update(func(s *State) {
		s.Pods = slices.DeleteFunc(s.Pods, func(p Pod) bool { return p.Key() == key })
		s.Topology.Pods = slices.DeleteFunc(s.Topology.Pods, func(p PodSpec) bool { return p.Key() == key })
	})
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}
