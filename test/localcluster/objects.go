package localcluster

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/internal/dropsapi"
)

// Annotations the harness puts on the objects it registers.
const (
	AnnotationNetNS = "localcluster.nftguard.io/netns"
)

const podImage = "localhost/nftguard-localcluster/podserver:dev"

// registerNamespaces creates the topology's namespaces, or labels the ones
// the API server made itself (kube-system).
func (c *Cluster) registerNamespaces(ctx context.Context) error {
	for _, ns := range c.cfg.Topology.Namespaces {
		_, err := c.clientset.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
			ObjectMeta: metav1.ObjectMeta{Name: ns.Name, Labels: copyLabels(ns.Labels)},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) && len(ns.Labels) > 0 {
			patch, _ := jsonMerge(map[string]any{"metadata": map[string]any{"labels": ns.Labels}})
			_, err = c.clientset.CoreV1().Namespaces().Patch(ctx, ns.Name, types.MergePatchType, patch, metav1.PatchOptions{})
		} else if apierrors.IsAlreadyExists(err) {
			err = nil
		}
		if err != nil {
			return fmt.Errorf("namespace %s: %w", ns.Name, err)
		}
	}
	return nil
}

// registerNodes creates the Node objects and writes their status as a
// kubelet would: addresses, pod CIDRs, Ready.
func (c *Cluster) registerNodes(ctx context.Context, nodes []Node) error {
	now := metav1.Now()
	for _, n := range nodes {
		labels := map[string]string{
			"kubernetes.io/hostname": n.Name,
			"kubernetes.io/os":       "linux",
			"kubernetes.io/arch":     runtime.GOARCH,
		}
		for k, v := range n.Labels {
			labels[k] = v
		}
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{
				Name: n.Name, Labels: labels,
				Annotations: map[string]string{AnnotationNetNS: n.NetNS},
			},
			Spec: corev1.NodeSpec{
				PodCIDR:  n.PodCIDRv4.String(),
				PodCIDRs: []string{n.PodCIDRv4.String(), n.PodCIDRv6.String()},
			},
		}
		created, err := c.clientset.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		created.Status = corev1.NodeStatus{
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: n.IPv4.String()},
				{Type: corev1.NodeInternalIP, Address: n.IPv6.String()},
				{Type: corev1.NodeHostName, Address: n.Name},
			},
			Conditions: []corev1.NodeCondition{{
				Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
				Message: "network namespace " + n.NetNS, LastHeartbeatTime: now, LastTransitionTime: now,
			}},
			Capacity: corev1.ResourceList{},
			NodeInfo: corev1.NodeSystemInfo{
				OperatingSystem: "linux", Architecture: runtime.GOARCH,
				KubeletVersion: "nftguard-localcluster", ContainerRuntimeVersion: "netns://",
			},
		}
		if _, err := c.clientset.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("node %s status: %w", n.Name, err)
		}
	}
	return nil
}

// createPods creates the Pod objects, scheduled on their nodes.
func (c *Cluster) createPods(ctx context.Context, pods []Pod) error {
	for _, p := range pods {
		var ports []corev1.ContainerPort
		for _, pp := range p.Ports {
			ports = append(ports, corev1.ContainerPort{Name: pp.Name, ContainerPort: pp.Port, Protocol: pp.Protocol})
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: p.Namespace, Name: p.Name, Labels: copyLabels(p.Labels),
				Annotations: map[string]string{AnnotationNetNS: p.NetNS},
			},
			Spec: corev1.PodSpec{
				NodeName:                      p.Node,
				AutomountServiceAccountToken:  ptr.To(false),
				TerminationGracePeriodSeconds: ptr.To(int64(1)),
				Containers: []corev1.Container{{
					Name: "server", Image: podImage, Ports: ports,
				}},
			},
		}
		created, err := c.clientset.CoreV1().Pods(p.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("pod %s: %w", p.Key(), err)
		}
		if err := c.state.update(func(s *State) {
			for i := range s.Pods {
				if s.Pods[i].Key() == p.Key() {
					s.Pods[i].UID = string(created.UID)
				}
			}
		}); err != nil {
			return err
		}
	}
	return nil
}

// startPodServers starts every pod's server inside the pod's namespace and
// waits until each serves its ports.
func (c *Cluster) startPodServers(pods []Pod) error {
	var started []*proc
	for _, p := range pods {
		args := append([]string{rolePodServer}, podServerArgs(p.Key(), p.Ports)...)
		pr, err := c.start(procSpec{
			role: rolePodServer, name: p.Key(), path: c.cfg.Helper, args: args,
			env: []string{childRoleEnv + "=" + rolePodServer}, netns: p.NetNS,
			log: c.logPath("podserver-" + p.Namespace + "." + p.Name), ready: true,
		})
		if err != nil {
			return fmt.Errorf("pod %s: %w", p.Key(), err)
		}
		started = append(started, pr)
	}
	for _, pr := range started {
		if err := pr.waitReady(readyTimeout); err != nil {
			return fmt.Errorf("pod %s: %w", pr.ref.Name, err)
		}
	}
	return nil
}

// podServerArgs is the pod server's command line for a pod's ports.
func podServerArgs(key string, ports []PortSpec) []string {
	args := []string{"--name", key}
	for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
		var nums []string
		for _, pp := range ports {
			if pp.Protocol == proto {
				nums = append(nums, strconv.Itoa(int(pp.Port)))
			}
		}
		if len(nums) > 0 {
			args = append(args, "--"+strings.ToLower(string(proto)), strings.Join(nums, ","))
		}
	}
	return args
}

// markPodsRunning writes each pod's status as a kubelet would once its
// container runs and is ready.
func (c *Cluster) markPodsRunning(ctx context.Context, nodes []Node, pods []Pod) error {
	byName := map[string]Node{}
	for _, n := range nodes {
		byName[n.Name] = n
	}
	pids := map[string]int{}
	for _, r := range c.state.snapshot().Processes {
		if r.Role == rolePodServer {
			pids[r.Name] = r.PID
		}
	}
	now := metav1.Now()
	for _, p := range pods {
		n := byName[p.Node]
		pod, err := c.clientset.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cond := func(t corev1.PodConditionType) corev1.PodCondition {
			return corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now}
		}
		pod.Status = corev1.PodStatus{
			Phase:     corev1.PodRunning,
			HostIP:    n.IPv4.String(),
			HostIPs:   []corev1.HostIP{{IP: n.IPv4.String()}, {IP: n.IPv6.String()}},
			PodIP:     p.IPv4.String(),
			PodIPs:    []corev1.PodIP{{IP: p.IPv4.String()}, {IP: p.IPv6.String()}},
			StartTime: &now,
			Conditions: []corev1.PodCondition{
				cond(corev1.PodScheduled), cond(corev1.PodInitialized),
				cond(corev1.ContainersReady), cond(corev1.PodReady),
			},
			ContainerStatuses: []corev1.ContainerStatus{{
				Name: "server", Ready: true, Started: ptr.To(true), Image: podImage, ImageID: podImage,
				ContainerID: fmt.Sprintf("pid://%d", pids[p.Key()]),
				State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
			}},
		}
		if _, err := c.clientset.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("pod %s status: %w", p.Key(), err)
		}
	}
	return nil
}

// startController runs the controller in the machine's namespace with its
// own service account's token, and waits for its /readyz.
func (c *Cluster) startController(ctx context.Context) error {
	kc := filepath.Join(c.cfg.StateDir, "kubeconfigs", "controller.kubeconfig")
	if err := c.tokenKubeconfig(ctx, kc, c.apiURL, systemNamespace, "nftguard-controller", ""); err != nil {
		return err
	}
	metrics, err := freePort()
	if err != nil {
		return err
	}
	health, err := freePort()
	if err != nil {
		return err
	}
	drops, err := freePort()
	if err != nil {
		return err
	}
	if err := c.registerDropsAPI(ctx, drops); err != nil {
		return err
	}
	args := append([]string{
		"--kubeconfig=" + kc,
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", metrics),
		fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", health),
		fmt.Sprintf("--drops-bind-address=127.0.0.1:%d", drops),
		"--leader-elect=false",
	}, c.cfg.ControllerArgs...)
	p, err := c.start(procSpec{role: roleController, path: c.cfg.Controller, args: args, log: c.logPath("controller")})
	if err != nil {
		return err
	}
	if err := waitFor(ctx, p, 60*time.Second, func() (bool, error) {
		return httpOK(fmt.Sprintf("http://127.0.0.1:%d/readyz", health)), nil
	}); err != nil {
		return err
	}
	c.dropsAddress = fmt.Sprintf("127.0.0.1:%d", drops)
	// The agents trust the CA the controller publishes.
	return waitFor(ctx, p, 60*time.Second, func() (bool, error) {
		cm, err := c.clientset.CoreV1().ConfigMaps(systemNamespace).Get(ctx, dropsCAConfigMap, metav1.GetOptions{})
		if err != nil || cm.Data["ca.crt"] == "" {
			return false, nil
		}
		return true, os.WriteFile(c.pki.path("drops-ca.crt"), []byte(cm.Data["ca.crt"]), 0o600)
	})
}

// The drops API's objects, as config/manager/drops_api.yaml names them.
const (
	dropsService     = "nftguard-drops"
	dropsCAConfigMap = "nftguard-drops-ca"
	// dropsForwardAddress is where each agent reaches the drops API, on the
	// loopback of its node's namespace.
	dropsForwardAddress = "127.0.0.1:8443"
)

// registerDropsAPI registers the controller's drops API, which serves on
// loopback at port, with the API server's aggregator: an ExternalName
// Service (the aggregator refuses loopback endpoints) and the APIService,
// whose caBundle the controller fills in.
func (c *Cluster) registerDropsAPI(ctx context.Context, port int) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: dropsService, Namespace: systemNamespace},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "localhost"},
	}
	if _, err := c.clientset.CoreV1().Services(systemNamespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("drops API Service: %w", err)
	}
	apisvc := dropsapi.APIService(systemNamespace, dropsService, port)
	cl, err := client.New(c.adminConfig(), client.Options{})
	if err != nil {
		return err
	}
	if err := cl.Create(ctx, apisvc); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("drops APIService: %w", err)
	}
	return nil
}

// Where each agent reaches the API server and serves its endpoints, on the
// loopback of its own node's network namespace.
const (
	apiForwardAddress   = "127.0.0.1:6443"
	agentMetricsAddress = "127.0.0.1:9090"
	agentHealthAddress  = "127.0.0.1:9091"
)

// agentDropsArgs starts a forwarder on the node's loopback to the drops
// API and returns the agent's flags to push to it with a token for its
// audience bound to the node; none without a drops API or the agents'
// service account.
func (c *Cluster) agentDropsArgs(ctx context.Context, n Node, agentRole bool) ([]string, error) {
	if c.dropsAddress == "" || !agentRole {
		return nil, nil
	}
	fw, err := c.start(procSpec{
		role: roleForward, name: n.Name + "-drops", path: c.cfg.Helper,
		args: []string{roleForward, "--netns", netnsPath(n.NetNS), "--listen", dropsForwardAddress, "--to", c.dropsAddress},
		env:  []string{childRoleEnv + "=" + roleForward}, log: c.logPath("forward-drops-" + n.Name), ready: true,
	})
	if err != nil {
		return nil, err
	}
	if err := fw.waitReady(readyTimeout); err != nil {
		return nil, fmt.Errorf("node %s: drops forwarder: %w", n.Name, err)
	}
	token := filepath.Join(c.cfg.StateDir, "kubeconfigs", "agent-"+n.Name+".drops-token")
	if err := c.boundToken(ctx, token, systemNamespace, "nftguard-agent", n.Name, "drops.nftguard.io"); err != nil {
		return nil, err
	}
	return []string{
		"--drops-token-file=" + token,
		"--drops-ca-file=" + c.pki.path("drops-ca.crt"),
		"--drops-server=https://" + dropsForwardAddress,
		"--drops-server-name=" + dropsService + "." + systemNamespace + ".svc",
	}, nil
}

// startAgents starts, for each node, a forwarder listening on the node's
// loopback that carries connections to the API server, and an agent inside
// the node's namespace; then waits until every node's NodeRuleSet is
// programmed.
func (c *Cluster) startAgents(ctx context.Context, nodes []Node, agentRole bool) error {
	var agents []*proc
	for _, n := range nodes {
		fw, err := c.start(procSpec{
			role: roleForward, name: n.Name, path: c.cfg.Helper,
			args: []string{roleForward, "--netns", netnsPath(n.NetNS), "--listen", apiForwardAddress,
				"--to", strings.TrimPrefix(c.apiURL, "https://")},
			env: []string{childRoleEnv + "=" + roleForward}, log: c.logPath("forward-" + n.Name), ready: true,
		})
		if err != nil {
			return err
		}
		if err := fw.waitReady(readyTimeout); err != nil {
			return fmt.Errorf("node %s: API forwarder: %w", n.Name, err)
		}
		kc := filepath.Join(c.cfg.StateDir, "kubeconfigs", "agent-"+n.Name+".kubeconfig")
		server := "https://" + apiForwardAddress
		if agentRole {
			err = c.tokenKubeconfig(ctx, kc, server, systemNamespace, "nftguard-agent", n.Name)
		} else {
			err = writeKubeconfig(kc, server, c.pki.caCert, "admin", c.pki.admin.cert, c.pki.admin.key, "")
		}
		if err != nil {
			return err
		}
		dropsArgs, err := c.agentDropsArgs(ctx, n, agentRole)
		if err != nil {
			return err
		}
		cniArgs, err := c.cniAgentArgs(n)
		if err != nil {
			return err
		}
		args := append([]string{
			"--node-name=" + n.Name,
			"--kubeconfig=" + kc,
			"--audit-log=" + n.AuditLog,
			"--metrics-bind-address=" + agentMetricsAddress,
			"--health-probe-bind-address=" + agentHealthAddress,
		}, append(append(cniArgs, dropsArgs...), c.cfg.AgentArgs...)...)
		p, err := c.start(procSpec{
			role: roleAgent, name: n.Name, path: c.cfg.Agent, args: args,
			env: []string{"NODE_NAME=" + n.Name}, netns: n.NetNS, log: c.logPath("agent-" + n.Name),
		})
		if err != nil {
			return err
		}
		agents = append(agents, p)
	}
	if c.cfg.Controller == "" {
		// No controller writes rule sets: there is nothing to wait for
		// but the agents' health endpoints.
		for i, n := range nodes {
			err := waitFor(ctx, agents[i], readyTimeout, func() (bool, error) {
				return c.nodeHTTPOK(n.NetNS, "http://"+agentHealthAddress+"/healthz"), nil
			})
			if err != nil {
				return fmt.Errorf("node %s: agent: %w", n.Name, err)
			}
		}
		return nil
	}
	for i, n := range nodes {
		err := waitFor(ctx, agents[i], programmedTimeout, func() (bool, error) {
			ok, _ := c.programmed(ctx, n.Name)
			return ok, nil
		})
		if err != nil {
			return fmt.Errorf("node %s: NodeRuleSet not programmed: %w", n.Name, err)
		}
	}
	return nil
}

// nodeHTTPOK reports whether a GET from inside a node's network namespace
// answers 200 (the agent's endpoints listen on the node's loopback).
func (c *Cluster) nodeHTTPOK(netns, url string) bool {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		// The transport dials on goroutines of its own: open each
		// socket on a thread inside the namespace.
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := inNetNS(netns, func() error {
				var err error
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	resp, err := hc.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// httpOK reports whether a GET answers 200.
func httpOK(url string) bool {
	hc := httpClient(2 * time.Second)
	resp, err := hc.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}
