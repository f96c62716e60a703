package manifests_test

import (
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

const nodeNameExtra = "authentication.kubernetes.io/node-name"

// as returns a client acting as a ServiceAccount of nftguard-system, with
// the node name a bound pod token carries (if node is set).
func as(t *testing.T, sa, node string) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(adminCfg)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:nftguard-system:" + sa,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:nftguard-system", "system:authenticated"},
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
