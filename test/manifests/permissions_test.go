package manifests_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/testenv"
)

const nodeNameExtra = "authentication.kubernetes.io/node-name"

// as returns a client acting as a ServiceAccount of nftguard-system, with
// the node name a bound pod token carries (if node is set).
func as(t *testing.T, sa, node string) client.Client {
	t.Helper()
	return asIn(t, "nftguard-system", sa, node)
}

// asIn is as for a ServiceAccount of namespace ns.
func asIn(t *testing.T, ns, sa, node string) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(adminCfg)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + ns + ":" + sa,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
	}
	if node != "" {
		cfg.Impersonate.Extra = map[string][]string{nodeNameExtra: {node}}
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func setProgrammed(c client.Client, name string) error {
	rs := &v1alpha1.NodeRuleSet{}
	if err := c.Get(ctx, client.ObjectKey{Name: name}, rs); err != nil {
		return err
	}
	meta.SetStatusCondition(&rs.Status.Conditions, metav1.Condition{
		Type: v1alpha1.ConditionProgrammed, Status: metav1.ConditionTrue, Reason: "Programmed", Message: "test",
	})
	rs.Status.Rules++
	return c.Status().Update(ctx, rs)
}

// TestNodeScopedPermissions checks, against the real API server with
// config/default installed, that an agent writes only its own node's
// NodeRuleSet status and no spec, and that the controller writes specs but
// not agent status.
func TestNodeScopedPermissions(t *testing.T) {
	admin, err := client.New(adminCfg, client.Options{Scheme: scheme.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	apply(t, ctx, admin, render(t, "default"))
	for _, n := range []string{"perm-n1", "perm-n2"} {
		if err := admin.Create(ctx, &v1alpha1.NodeRuleSet{ObjectMeta: metav1.ObjectMeta{Name: n}}); err != nil {
			t.Fatal(err)
		}
	}
	agent1 := as(t, "nftguard-agent", "perm-n1")

	// The policy takes effect once the API server has loaded it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := setProgrammed(agent1, "perm-n2")
		if apierrors.IsForbidden(err) || apierrors.IsInvalid(err) {
			if !strings.Contains(err.Error(), "may only write the NodeRuleSet of its own node") ||
				!strings.Contains(err.Error(), "for node perm-n1, not perm-n2") {
				t.Fatalf("agent of perm-n1 writing perm-n2's status: %v", err)
			}
			break
		}
		if err != nil {
			t.Fatalf("agent of perm-n1 writing perm-n2's status: unexpected %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("agent of perm-n1 could write perm-n2's status: the node-scope policy is not enforced")
		}
		time.Sleep(200 * time.Millisecond)
	}

	if err := setProgrammed(agent1, "perm-n1"); err != nil {
		t.Errorf("agent of perm-n1 writing its own status: %v", err)
	}
	if err := setProgrammed(as(t, "nftguard-agent", ""), "perm-n1"); err == nil ||
		!strings.Contains(err.Error(), "its credentials name no node") {
		t.Errorf("agent without a node name writing status: %v, want refused", err)
	}

	rs := &v1alpha1.NodeRuleSet{}
	if err := agent1.Get(ctx, client.ObjectKey{Name: "perm-n1"}, rs); err != nil {
		t.Fatal(err)
	}
	rs.Spec.AddressGroups = []string{"ag-forged"}
	if err := agent1.Update(ctx, rs); !apierrors.IsForbidden(err) {
		t.Errorf("agent updating its own NodeRuleSet spec: %v, want Forbidden", err)
	}
	if err := agent1.Delete(ctx, rs); !apierrors.IsForbidden(err) {
		t.Errorf("agent deleting its NodeRuleSet: %v, want Forbidden", err)
	}

	ctrl := as(t, "nftguard-controller", "")
	if err := ctrl.Get(ctx, client.ObjectKey{Name: "perm-n2"}, rs); err != nil {
		t.Fatal(err)
	}
	rs.Spec.AddressGroups = []string{"ag-1"}
	if err := ctrl.Update(ctx, rs); err != nil {
		t.Errorf("controller updating a NodeRuleSet spec: %v", err)
	}
	if err := setProgrammed(ctrl, "perm-n2"); !apierrors.IsForbidden(err) {
		t.Errorf("controller writing agent status: %v, want Forbidden", err)
	}
}

// TestInstallUnderOtherNames: config/default installed through an overlay
// into another namespace, with a name prefix, holds that install's agent
// to its own node just the same. Only the overlay's policy is bound while
// it runs, so the default install's cannot stand in for it.
func TestInstallUnderOtherNames(t *testing.T) {
	admin, err := client.New(adminCfg, client.Options{Scheme: scheme.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	base, err := filepath.Rel(dir, filepath.Join(testenv.RepoRoot(), "config", "default"))
	if err != nil {
		t.Fatal(err)
	}
	overlay := "namespace: security-tools\nnamePrefix: acme-\nresources:\n- " + base + "\n"
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(overlay), 0o644); err != nil {
		t.Fatal(err)
	}
	apply(t, ctx, admin, renderPath(t, dir))
	defaultBinding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}
	defaultBinding.Name = "nftguard-agent-node-scope"
	if err := admin.Delete(ctx, defaultBinding); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	} else if err == nil {
		t.Cleanup(func() { apply(t, ctx, admin, render(t, "default")) })
	}
	for _, n := range []string{"other-n1", "other-n2"} {
		if err := admin.Create(ctx, &v1alpha1.NodeRuleSet{ObjectMeta: metav1.ObjectMeta{Name: n}}); err != nil {
			t.Fatal(err)
		}
	}
	agent1 := asIn(t, "security-tools", "acme-nftguard-agent", "other-n1")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		err := setProgrammed(agent1, "other-n2")
		if apierrors.IsForbidden(err) && strings.Contains(err.Error(), "for node other-n1, not other-n2") {
			break
		}
		if err != nil && !apierrors.IsForbidden(err) {
			t.Fatalf("the acme agent of other-n1 writing other-n2's status: unexpected %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the acme agent of other-n1 writing other-n2's status: %v; want refused by the install's node-scope policy", err)
		}
	}
	if err := setProgrammed(agent1, "other-n1"); err != nil {
		t.Errorf("the acme agent of other-n1 writing its own status: %v", err)
	}
	ctrl := asIn(t, "security-tools", "acme-nftguard-controller", "")
	rs := &v1alpha1.NodeRuleSet{}
	if err := ctrl.Get(ctx, client.ObjectKey{Name: "other-n2"}, rs); err != nil {
		t.Fatal(err)
	}
	rs.Spec.AddressGroups = []string{"ag-1"}
	if err := ctrl.Update(ctx, rs); err != nil {
		t.Errorf("the acme controller updating a NodeRuleSet spec: %v", err)
	}
}

// TestAgentEventsAndPodReads checks the agent's other permissions: it
// records Events (events.k8s.io, create and patch, as the agent's event
// recorder does on pods held not ready), and finds the drops API's
// replicas from EndpointSlices in nftguard's namespace. It reads no pod at
// all (its pods are in its NodeRuleSet; the drops API names the others),
// cannot read Events back, and sees no other namespace's EndpointSlices.
func TestAgentEventsAndPodReads(t *testing.T) {
	admin, err := client.New(adminCfg, client.Options{Scheme: scheme.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	apply(t, ctx, admin, render(t, "default"))
	agent := as(t, "nftguard-agent", "perm-events")
	now := metav1.NewMicroTime(time.Now())
	ev := &eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{Namespace: "default", Name: "web-0.nftguard-test"},
		EventTime:           now,
		ReportingController: "nftguard-agent",
		ReportingInstance:   "nftguard-agent-perm-events",
		Action:              "Hold",
		Reason:              "NotReady",
		Type:                corev1.EventTypeWarning,
		Note:                "test",
		Regarding:           corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "web-0", APIVersion: "v1"},
	}
	// RBAC is the API server's at once, but the ClusterRole may have just
	// been applied: allow the authorizer's cache a moment.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := agent.Create(ctx, ev.DeepCopy())
		if err == nil {
			break
		}
		if !apierrors.IsForbidden(err) || time.Now().After(deadline) {
			t.Fatalf("the agent creating an Event: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	patch := client.RawPatch(types.MergePatchType, []byte(`{"series":{"count":2,"lastObservedTime":"`+now.UTC().Format(metav1.RFC3339Micro)+`"}}`))
	if err := agent.Patch(ctx, ev.DeepCopy(), patch); err != nil {
		t.Errorf("the agent patching its Event: %v", err)
	}

	forbidden := map[string]func() error{
		"get an Event":    func() error { return agent.Get(ctx, client.ObjectKeyFromObject(ev), &eventsv1.Event{}) },
		"list Events":     func() error { return agent.List(ctx, &eventsv1.EventList{}) },
		"delete an Event": func() error { return agent.Delete(ctx, ev.DeepCopy()) },
		"create a core v1 Event": func() error {
			return agent.Create(ctx, &corev1.Event{
				ObjectMeta:     metav1.ObjectMeta{Namespace: "default", Name: "core.nftguard-test"},
				InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "web-0"},
				Reason:         "NotReady", Message: "test", Type: corev1.EventTypeWarning,
			})
		},
		"get a pod": func() error {
			return agent.Get(ctx, client.ObjectKey{Namespace: "default", Name: "web-0"}, &corev1.Pod{})
		},
		"watch pods": func() error {
			w, err := clientsetAs(t, "nftguard-agent").CoreV1().Pods("").Watch(ctx, metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			return err
		},
		"create a pod": func() error {
			return agent.Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "forged"},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}},
			})
		},
		"patch a pod": func() error {
			return agent.Patch(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-0"}},
				client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":{"x":"y"}}}`)))
		},
		"read pods' logs": func() error {
			return clientsetAs(t, "nftguard-agent").CoreV1().Pods("default").GetLogs("web-0", &corev1.PodLogOptions{}).Do(ctx).Error()
		},
	}
	forbidden["list pods"] = func() error { return agent.List(ctx, &corev1.PodList{}) }
	forbidden["list EndpointSlices of another namespace"] = func() error {
		return agent.List(ctx, &discoveryv1.EndpointSliceList{}, client.InNamespace("default"))
	}
	for what, do := range forbidden {
		if err := do(); !apierrors.IsForbidden(err) {
			t.Errorf("the agent may %s: %v, want Forbidden", what, err)
		}
	}
	if err := agent.List(ctx, &discoveryv1.EndpointSliceList{}, client.InNamespace("nftguard-system")); err != nil {
		t.Errorf("the agent listing nftguard's EndpointSlices: %v", err)
	}
}

// clientsetAs is a typed clientset acting as a ServiceAccount of
// nftguard-system, for the requests controller-runtime's client does not
// make (watches, subresources).
func clientsetAs(t *testing.T, sa string) kubernetes.Interface {
	t.Helper()
	cfg := rest.CopyConfig(adminCfg)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:nftguard-system:" + sa,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:nftguard-system", "system:authenticated"},
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}
