package localcluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
)

// freePort returns a TCP port that was free on loopback a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startEtcd starts etcd on loopback with its data in the state directory:
// the machine's loopback, or that of network namespace netns (a real
// cluster's control plane), where its own ports are free.
func (c *Cluster) startEtcd(ctx context.Context, netns string) (string, error) {
	client, peer := 2379, 2380
	hc := &http.Client{Timeout: 2 * time.Second}
	if netns == "" {
		var err error
		if client, err = freePort(); err != nil {
			return "", err
		}
		if peer, err = freePort(); err != nil {
			return "", err
		}
	} else {
		hc = netnsHTTPClient(netns, http.DefaultTransport.(*http.Transport))
		hc.Timeout = 2 * time.Second
	}
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", client)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peer)
	name := "ngd-" + c.cfg.Name
	p, err := c.start(procSpec{
		role: roleEtcd, path: filepath.Join(c.cfg.BinDir, "etcd"), log: c.logPath("etcd"), netns: netns,
		args: []string{
			"--name=" + name,
			"--data-dir=" + filepath.Join(c.cfg.StateDir, "etcd"),
			"--listen-client-urls=" + clientURL,
			"--advertise-client-urls=" + clientURL,
			"--listen-peer-urls=" + peerURL,
			"--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=" + name + "=" + peerURL,
			"--unsafe-no-fsync",
			"--log-level=warn",
		},
	})
	if err != nil {
		return "", err
	}
	err = waitFor(ctx, p, 60*time.Second, func() (bool, error) {
		resp, err := hc.Get(clientURL + "/health")
		if err != nil {
			return false, nil
		}
		defer resp.Body.Close()
		var h struct{ Health string }
		_ = json.NewDecoder(resp.Body).Decode(&h)
		return resp.StatusCode == http.StatusOK && h.Health == "true", nil
	})
	if err != nil {
		return "", fmt.Errorf("etcd: %w", err)
	}
	return clientURL, nil
}

// startAPIServer starts kube-apiserver on loopback: client certificates for
// the admin, service-account tokens for the controller and agents, RBAC.
func (c *Cluster) startAPIServer(ctx context.Context, etcdURL string) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	pk := c.pki
	c.apiURL = fmt.Sprintf("https://127.0.0.1:%d", port)
	p, err := c.start(procSpec{
		role: roleAPIServer, path: filepath.Join(c.cfg.BinDir, "kube-apiserver"), log: c.logPath("kube-apiserver"),
		args: append([]string{
			"--etcd-servers=" + etcdURL,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(port),
			"--tls-cert-file=" + pk.path("apiserver.crt"),
			"--tls-private-key-file=" + pk.path("apiserver.key"),
			"--client-ca-file=" + pk.path("ca.crt"),
			"--service-account-issuer=https://kubernetes.default.svc",
			"--service-account-key-file=" + pk.path("sa.pub"),
			"--service-account-signing-key-file=" + pk.path("sa.key"),
			"--authorization-mode=RBAC",
			// No kube-controller-manager creates the default service
			// accounts that this admission plugin requires of pods.
			"--disable-admission-plugins=ServiceAccount",
			"--service-cluster-ip-range=" + serviceRange,
			"--endpoint-reconciler-type=none",
			"--cert-dir=" + filepath.Join(c.cfg.StateDir, "pki", "apiserver"),
			"--profiling=false",
		}, pk.frontProxyArgs()...),
	})
	if err != nil {
		return err
	}
	if err := c.state.update(func(s *State) { s.APIServer = c.apiURL }); err != nil {
		return err
	}
	hc, err := c.adminHTTPClient()
	if err != nil {
		return err
	}
	err = waitFor(ctx, p, 120*time.Second, func() (bool, error) {
		resp, err := hc.Get(c.apiURL + "/readyz")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	return nil
}

// waitFor polls cond until it holds, the process exits, or the timeout.
func waitFor(ctx context.Context, p *proc, timeout time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("exited (%v); log %s:\n%s", p.err, p.ref.Log, tail(p.ref.Log, 25))
		}
		select {
		case <-ctx.Done():
			msg := fmt.Sprintf("not ready after %s", timeout)
			if p != nil {
				msg += fmt.Sprintf("; log %s:\n%s", p.ref.Log, tail(p.ref.Log, 25))
			}
			return errors.New(msg)
		case <-tick.C:
		}
	}
}

func (c *Cluster) adminHTTPClient() (*http.Client, error) {
	cert, err := tls.X509KeyPair(c.pki.admin.cert, c.pki.admin.key)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.pki.caCert)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool},
	}}, nil
}

// adminConfig is the admin's client configuration.
func (c *Cluster) adminConfig() *rest.Config {
	return &rest.Config{
		Host: c.apiURL,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: c.pki.caCert, CertData: c.pki.admin.cert, KeyData: c.pki.admin.key,
		},
		QPS: 100, Burst: 200,
		UserAgent: "nftguard-localcluster",
	}
}

// writeKubeconfig writes a kubeconfig for server with either the admin's
// client certificate or a bearer token.
func writeKubeconfig(path, server string, caPEM []byte, user string, certPEM, keyPEM []byte, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["nftguard"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM, Token: token}
	cfg.Contexts["nftguard"] = &clientcmdapi.Context{Cluster: "nftguard", AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = "nftguard"
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return clientcmd.WriteToFile(*cfg, path)
}

// applyManifests server-side-applies every object of the YAML files.
func applyManifests(ctx context.Context, cfg *rest.Config, files []string) error {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	for _, f := range files {
		objs, err := readObjects(f)
		if err != nil {
			return err
		}
		for _, u := range objs {
			gvk := u.GroupVersionKind()
			m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				return fmt.Errorf("%s: %s %s: %w", f, gvk.Kind, u.GetName(), err)
			}
			var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
			if m.Scope.Name() == meta.RESTScopeNameNamespace {
				ri = dyn.Resource(m.Resource).Namespace(u.GetNamespace())
			}
			if _, err := ri.Apply(ctx, u.GetName(), u, metav1.ApplyOptions{FieldManager: "nftguard-localcluster", Force: true}); err != nil {
				return fmt.Errorf("%s: applying %s %s: %w", f, gvk.Kind, u.GetName(), err)
			}
		}
	}
	return nil
}

func readObjects(path string) ([]*unstructured.Unstructured, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	var out []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		out = append(out, u)
	}
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCRDs applies the CRDs and waits until the API server serves them.
func (c *Cluster) installCRDs(ctx context.Context) error {
	files, err := filepath.Glob(filepath.Join(c.cfg.ManifestsDir, "crd", "bases", "*.yaml"))
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("no CRDs in %s", filepath.Join(c.cfg.ManifestsDir, "crd", "bases"))
	}
	cfg := c.adminConfig()
	if err := applyManifests(ctx, cfg, files); err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	var names []string
	for _, f := range files {
		objs, err := readObjects(f)
		if err != nil {
			return err
		}
		for _, o := range objs {
			names = append(names, o.GetName())
		}
	}
	return waitFor(ctx, nil, 30*time.Second, func() (bool, error) {
		for _, n := range names {
			u, err := dyn.Resource(crdGVR).Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			established := false
			for _, ci := range conds {
				m, _ := ci.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					established = true
				}
			}
			if !established {
				return false, nil
			}
		}
		return true, nil
	})
}

const systemNamespace = "nftguard-system"

// installRBAC creates the controller's and agents' service accounts and
// roles from config/rbac and config/agent. It reports whether the agent's
// role was found.
func (c *Cluster) installRBAC(ctx context.Context) (agentRole bool, err error) {
	cs := c.clientset
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: systemNamespace},
	}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return false, err
	}
	var files []string
	rbac, err := filepath.Glob(filepath.Join(c.cfg.ManifestsDir, "rbac", "*.yaml"))
	if err != nil {
		return false, err
	}
	for _, f := range rbac {
		if filepath.Base(f) != "kustomization.yaml" {
			files = append(files, f)
		}
	}
	// Everything of config/agent but the DaemonSet: the agents run as
	// processes here.
	agent, err := filepath.Glob(filepath.Join(c.cfg.ManifestsDir, "agent", "*.yaml"))
	if err != nil {
		return false, err
	}
	for _, f := range agent {
		switch filepath.Base(f) {
		case "kustomization.yaml", "daemonset.yaml":
			continue
		case "role.yaml":
			agentRole = true
		}
		files = append(files, f)
	}
	return agentRole, applyManifests(ctx, c.adminConfig(), files)
}

// boundToken writes a token of a service account for audience, bound to a
// Node object as a pod's token is bound to its node.
func (c *Cluster) boundToken(ctx context.Context, path, namespace, sa, node, audience string) error {
	n, err := c.clientset.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	tr, err := c.clientset.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         []string{audience},
			ExpirationSeconds: ptr.To(int64(certValidity / time.Second)),
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Node", APIVersion: "v1", Name: n.Name, UID: n.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("token for %s/%s: %w", namespace, sa, err)
	}
	return os.WriteFile(path, []byte(tr.Status.Token), 0o600)
}

// tokenKubeconfig writes a kubeconfig for a service account, with a token
// from the TokenRequest API, pointing at server. With a node, the token is
// bound to that Node object, so that the API server names the node in the
// credentials (user extra authentication.kubernetes.io/node-name) as it does
// for a token of a pod running on the node.
func (c *Cluster) tokenKubeconfig(ctx context.Context, path, server, namespace, sa, node string) error {
	spec := authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To(int64(certValidity / time.Second))}
	if node != "" {
		n, err := c.clientset.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Node", APIVersion: "v1", Name: n.Name, UID: n.UID}
	}
	tr, err := c.clientset.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: spec,
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("token for %s/%s: %w", namespace, sa, err)
	}
	user := "system:serviceaccount:" + namespace + ":" + sa
	return writeKubeconfig(path, server, c.pki.caCert, strings.ReplaceAll(user, ":", "-"), nil, nil, tr.Status.Token)
}
