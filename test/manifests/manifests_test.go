// Package manifests_test installs config/default and config/samples, as
// rendered by kustomize, into a real API server.
package manifests_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/internal/image"
	"github.com/nftguard/nftguard/internal/testenv"
)

// render runs `kubectl kustomize` (bin/kubectl, built by the Makefile) on a
// directory under config/ and decodes the documents.
func render(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	return renderPath(t, filepath.Join(testenv.RepoRoot(), "config", dir))
}

// renderPath runs `kubectl kustomize` on a kustomization directory.
func renderPath(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	kubectl := filepath.Join(testenv.RepoRoot(), "bin", "kubectl")
	out, err := exec.Command(kubectl, "kustomize", dir).Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s (run `make test-binaries` first): %v", dir, err)
	}
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	var objs []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("decoding %s: %v", dir, err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
	return objs
}

func apply(t *testing.T, ctx context.Context, c client.Client, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, u := range objs {
		u.SetManagedFields(nil)
		if err := c.Patch(ctx, u, client.Apply, client.ForceOwnership, client.FieldOwner("manifests-test")); err != nil {
			t.Fatalf("applying %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
}

var (
	adminCfg *rest.Config
	ctx      = context.Background()
)

// TestMain starts one API server for the package's tests.
func TestMain(m *testing.M) {
	env, err := testenv.New()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	adminCfg, err = env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	_ = env.Stop()
	os.Exit(code)
}

func TestDefaultAndSamplesInstall(t *testing.T) {
	c, err := client.New(adminCfg, client.Options{Scheme: scheme.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	apply(t, ctx, c, render(t, "default"))

	var dep appsv1.Deployment
	if err := c.Get(ctx, client.ObjectKey{Namespace: "nftguard-system", Name: "nftguard-controller"}, &dep); err != nil {
		t.Fatalf("controller Deployment: %v", err)
	}
	ctr := dep.Spec.Template.Spec.Containers[0]
	if !slices.Contains(ctr.Args, "--leader-elect") {
		t.Errorf("controller args %v lack --leader-elect", ctr.Args)
	}
	if dep.Spec.Template.Spec.ServiceAccountName != "nftguard-controller" {
		t.Errorf("controller runs as %q", dep.Spec.Template.Spec.ServiceAccountName)
	}
	var crb rbacv1.ClusterRoleBinding
	if err := c.Get(ctx, client.ObjectKey{Name: "nftguard-controller"}, &crb); err != nil {
		t.Fatalf("ClusterRoleBinding: %v", err)
	}
	if crb.RoleRef.Name != "nftguard-controller" || len(crb.Subjects) != 1 || crb.Subjects[0].Namespace != "nftguard-system" {
		t.Errorf("binding %+v does not bind the controller's ClusterRole to its ServiceAccount", crb)
	}
	var lease rbacv1.Role
	if err := c.Get(ctx, client.ObjectKey{Namespace: "nftguard-system", Name: "nftguard-leader-election"}, &lease); err != nil {
		t.Fatalf("leader election Role: %v", err)
	}

	var ds appsv1.DaemonSet
	if err := c.Get(ctx, client.ObjectKey{Namespace: "nftguard-system", Name: "nftguard-agent"}, &ds); err != nil {
		t.Fatalf("agent DaemonSet: %v", err)
	}
	pod := ds.Spec.Template.Spec
	agentCtr := pod.Containers[0]
	if !pod.HostNetwork {
		t.Error("agent must run in the host network namespace")
	}
	if sc := agentCtr.SecurityContext; sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Add, "NET_ADMIN") ||
		!slices.Contains(sc.Capabilities.Drop, "ALL") || (sc.Privileged != nil && *sc.Privileged) {
		t.Errorf("agent capabilities %+v: want NET_ADMIN only, not privileged", agentCtr.SecurityContext)
	}
	if !slices.ContainsFunc(agentCtr.Env, func(e corev1.EnvVar) bool {
		return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
	}) {
		t.Error("agent lacks NODE_NAME from the downward API")
	}
	if !slices.ContainsFunc(pod.Volumes, func(v corev1.Volume) bool { return v.HostPath != nil && v.HostPath.Path == "/var/log/nftguard" }) {
		t.Error("agent lacks the hostPath for the drop log")
	}
	checkAgentCNI(t, pod)
	if !slices.ContainsFunc(pod.Tolerations, func(tl corev1.Toleration) bool { return tl.Operator == corev1.TolerationOpExists && tl.Key == "" }) {
		t.Error("agent must tolerate every taint to run on all nodes")
	}
	if err := c.Get(ctx, client.ObjectKey{Name: "nftguard-agent"}, &crb); err != nil || crb.Subjects[0].Name != "nftguard-agent" {
		t.Errorf("agent ClusterRoleBinding: %v %+v", err, crb.Subjects)
	}

	// The samples must pass admission as written.
	t.Run("samples", func(t *testing.T) { applySamples(t, c) })
}

func applySamples(t *testing.T, c client.Client) {
	for _, ns := range []string{"storefront", "backend", "payments"} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	samples := render(t, "samples")
	if len(samples) < 5 {
		t.Fatalf("config/samples rendered %d objects, want the DefaultDeny and 4 NetworkPolicies", len(samples))
	}
	apply(t, ctx, c, samples)
}

// checkAgentCNI: the agent serves the CNI plugin and installs it from its
// image into the host's CNI directories, through hostPath volumes, with no
// capability beyond NET_ADMIN and a read-only root filesystem.
func checkAgentCNI(t *testing.T, pod corev1.PodSpec) {
	t.Helper()
	agent := pod.Containers[0]
	arg := func(name string) string {
		for _, a := range agent.Args {
			if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
				return v
			}
		}
		t.Errorf("agent args %q lack --%s", agent.Args, name)
		return ""
	}
	// hostDir is the host directory mounted at dir in the agent, and the
	// hostPath type of its volume.
	hostDir := func(dir string) (string, corev1.HostPathType) {
		for _, m := range agent.VolumeMounts {
			rel, err := filepath.Rel(m.MountPath, dir)
			if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
				continue
			}
			if m.ReadOnly {
				t.Errorf("agent mounts %s read-only; it writes there", m.MountPath)
			}
			for _, v := range pod.Volumes {
				if v.Name == m.Name && v.HostPath != nil {
					return filepath.Join(v.HostPath.Path, rel), ptr.Deref(v.HostPath.Type, corev1.HostPathUnset)
				}
			}
			t.Errorf("agent mount %s (volume %s) is not a hostPath", m.MountPath, m.Name)
			return "", ""
		}
		t.Errorf("agent has no volume at %s", dir)
		return "", ""
	}

	// The runtime runs the plugin on the host, which dials the socket path
	// the agent writes into the conflist: it must be the host's own.
	socket := arg("cni-socket")
	if h, typ := hostDir(filepath.Dir(socket)); h != filepath.Dir(socket) || typ != corev1.HostPathDirectoryOrCreate {
		t.Errorf("agent socket %s is on the host's %s (%s), want the host's %s, DirectoryOrCreate", socket, h, typ, filepath.Dir(socket))
	}
	if h, typ := hostDir(arg("cni-state-dir")); !strings.HasPrefix(h, "/var/lib/") || typ != corev1.HostPathDirectoryOrCreate {
		t.Errorf("agent registry on the host's %s (%s), want under /var/lib (it survives reboots), DirectoryOrCreate", h, typ)
	}
	for flag, want := range map[string]string{"cni-conf-dir": "/etc/cni/net.d", "cni-bin-dir": "/opt/cni/bin"} {
		if h, typ := hostDir(arg(flag)); h != want || typ != corev1.HostPathDirectoryOrCreate {
			t.Errorf("agent --%s is the host's %s (%s), want %s, DirectoryOrCreate", flag, h, typ, want)
		}
	}

	// The plugin the agent installs is in its image, as make images
	// builds it, and the container runs the image's entrypoint.
	img := agentImage(t)
	source := arg("cni-plugin-source")
	if !slices.ContainsFunc(img.Commands, func(c image.Command) bool { return c.Path == source && c.Path != img.Commands[0].Path }) {
		t.Errorf("--cni-plugin-source=%s is not a command of the agent image %+v", source, img.Commands)
	}
	if !slices.Equal(agent.Command, img.Entrypoint()) {
		t.Errorf("agent command %q, want the image's entrypoint %q", agent.Command, img.Entrypoint())
	}

	if !slices.ContainsFunc(agent.Env, func(e corev1.EnvVar) bool {
		return e.Name == "POD_NAMESPACE" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace"
	}) {
		t.Error("agent lacks POD_NAMESPACE from the downward API (its own pods are never held)")
	}
	sc := agent.SecurityContext
	if sc == nil || !ptr.Deref(sc.ReadOnlyRootFilesystem, false) || ptr.Deref(sc.AllowPrivilegeEscalation, true) {
		t.Errorf("agent security context %+v: want a read-only root filesystem and no privilege escalation", sc)
	}
	if sc != nil && sc.Capabilities != nil && !slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN"}) {
		t.Errorf("agent adds capabilities %q, want NET_ADMIN alone (uid 0 owns the host directories it writes)", sc.Capabilities.Add)
	}
	// The drop log's follower needs none of it.
	for _, c := range pod.Containers[1:] {
		for _, m := range c.VolumeMounts {
			if m.Name != "audit-log" {
				t.Errorf("container %s mounts %s", c.Name, m.Name)
			}
		}
	}
}

// agentImage is the agent's image as make images builds it (AGENT_IMAGE in
// mk/images.mk).
func agentImage(t *testing.T) image.CommandImage {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "mk", "images.mk"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "AGENT_IMAGE := "); ok {
			img, err := image.ParseCommandImage(strings.TrimSpace(v))
			if err != nil {
				t.Fatalf("mk/images.mk: %v", err)
			}
			return img
		}
	}
	t.Fatal("mk/images.mk sets no AGENT_IMAGE")
	return image.CommandImage{}
}

// TestIdentityLayoutOverlay: config/identity-layout is config/default with
// one change, --identity-layout appended to the agent container's args, so
// that it installs everything config/default does and follows it on
// upgrades.
func TestIdentityLayoutOverlay(t *testing.T) {
	base, overlay := render(t, "default"), render(t, "identity-layout")
	if len(base) != len(overlay) {
		t.Fatalf("config/identity-layout renders %d objects, config/default %d", len(overlay), len(base))
	}
	changed := 0
	for i, want := range base {
		got := overlay[i]
		if got.GetKind() == "DaemonSet" && got.GetName() == "nftguard-agent" {
			path := []string{"spec", "template", "spec", "containers"}
			ctrs, _, _ := unstructured.NestedSlice(got.Object, path...)
			wantCtrs, _, _ := unstructured.NestedSlice(want.Object, path...)
			if len(ctrs) == 0 || len(ctrs) != len(wantCtrs) {
				t.Fatalf("agent DaemonSet has %d containers, config/default's %d", len(ctrs), len(wantCtrs))
			}
			agent, _ := ctrs[0].(map[string]any)
			wantArgs, _, _ := unstructured.NestedStringSlice(wantCtrs[0].(map[string]any), "args")
			if args, _, _ := unstructured.NestedStringSlice(agent, "args"); !slices.Equal(args, append(wantArgs, "--identity-layout")) {
				t.Errorf("agent %s args %v, want config/default's followed by --identity-layout", agent["name"], args)
			}
			// Apart from that argument, the DaemonSet is config/default's.
			agent["args"] = wantCtrs[0].(map[string]any)["args"]
			if err := unstructured.SetNestedSlice(got.Object, ctrs, path...); err != nil {
				t.Fatal(err)
			}
			changed++
		}
		if !reflect.DeepEqual(got.Object, want.Object) {
			t.Errorf("%s %s differs from config/default's beyond the agent's --identity-layout", got.GetKind(), got.GetName())
		}
	}
	if changed != 1 {
		t.Fatalf("config/identity-layout has %d agent DaemonSets", changed)
	}
}
