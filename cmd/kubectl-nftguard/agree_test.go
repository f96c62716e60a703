package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/controller"
	"github.com/nftguard/nftguard/internal/testenv"
)

// TestStatusAgreesWithController puts nodes in every state through the
// real controller and through the plugin, on an API server of its own, and
// checks that the DefaultDeny condition, the NetworkPolicy Events and the
// plugin's states say the same.
func TestStatusAgreesWithController(t *testing.T) {
	cfg := testenv.Start(t)
	c, err := client.New(cfg, client.Options{Scheme: scheme.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme.Scheme, Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		t.Fatal(err)
	}
	// Low enough that a few dozen pods make one node's rule set too large.
	if err := controller.Setup(mgr, controller.Options{MaxObjectBytes: 6000}); err != nil {
		t.Fatal(err)
	}
	mctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = mgr.Start(mctx) }()

	// One node per state, each with a namespace, a pod, a NetworkPolicy
	// and a DefaultDeny that span only that node.
	cases := []struct {
		node        string
		pluginState string // the plugin's policy state
		reason      string // the DefaultDeny condition's reason and the NetworkPolicy Event's ("" for none)
		eventReason string
	}{
		{"programmed", "Enforced", v1alpha1.ReasonEnforced, v1alpha1.ReasonEnforced},
		{"pending", "Programming", v1alpha1.ReasonProgramming, ""},
		{"failed", "Failed", v1alpha1.ReasonProgramFailed, v1alpha1.ReasonProgramFailed},
		{"uninstalled", "Uninstalled", v1alpha1.ReasonUninstalled, v1alpha1.ReasonUninstalled},
		{"toolarge", "TooLarge", v1alpha1.ReasonRuleSetTooLarge, v1alpha1.ReasonRuleSetTooLarge},
		// Its rule set is too large because of another policy, "many",
		// whose rules are left out: only "many" is TooLarge there.
		{"degraded", "Enforced", v1alpha1.ReasonEnforced, v1alpha1.ReasonEnforced},
	}
	ip := 0
	pod := func(ns, name, node string) {
		t.Helper()
		ip++
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "app"}}}}
		if err := c.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		addr := fmt.Sprintf("198.18.%d.%d", ip/250, ip%250+1)
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: addr, PodIPs: []corev1.PodIP{{IP: addr}}}
		if err := c.Status().Update(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range cases {
		for _, o := range []client.Object{
			&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: tc.node}},
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: tc.node}},
			&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: tc.node, Name: "deny"},
				Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}},
			&v1alpha1.DefaultDeny{ObjectMeta: metav1.ObjectMeta{Name: tc.node}, Spec: v1alpha1.DefaultDenySpec{
				NamespaceSelector: v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{corev1.LabelMetadataName: v1alpha1.LabelValue(tc.node)}},
				PolicyTypes:       []v1alpha1.PolicyType{v1alpha1.PolicyTypeIngress}}},
		} {
			if err := c.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
		pod(tc.node, "p0", tc.node)
	}
	eventually := func(what string, f func() error) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := f()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v", what, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	get := func(name string) (*v1alpha1.NodeRuleSet, error) {
		rs := &v1alpha1.NodeRuleSet{}
		return rs, c.Get(ctx, client.ObjectKey{Name: name}, rs)
	}
	// report writes the Programmed condition as the node's agent would.
	report := func(name string, status metav1.ConditionStatus, reason string) error {
		rs, err := get(name)
		if err != nil {
			return err
		}
		if status == metav1.ConditionTrue {
			rs.Status.ObservedGeneration = rs.Generation
		}
		meta.SetStatusCondition(&rs.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionProgrammed,
			Status: status, Reason: reason, Message: "as the agent says", ObservedGeneration: rs.Generation})
		return c.Status().Update(ctx, rs)
	}
	for _, tc := range cases {
		eventually("rule set of "+tc.node, func() error {
			rs, err := get(tc.node)
			if err == nil && len(rs.Spec.Pods) != 1 {
				err = fmt.Errorf("%d pods", len(rs.Spec.Pods))
			}
			return err
		})
	}
	for i := range 40 {
		pod("toolarge", fmt.Sprintf("a-pod-with-a-name-long-enough-to-fill-the-rule-set-%02d", i), "toolarge")
	}
	// Many ports (many ipBlocks would become a group and fit).
	var ports []networkingv1.NetworkPolicyPort
	for i := range 400 {
		port := intstr.FromInt32(int32(1000 + 3*i))
		ports = append(ports, networkingv1.NetworkPolicyPort{Port: &port})
	}
	if err := c.Create(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "degraded", Name: "many"},
		Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: ports,
			From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "198.18.0.1/32"}}}}}}}); err != nil {
		t.Fatal(err)
	}
	eventually("degraded leaving out the rules of many", func() error {
		if rs, err := get("degraded"); err != nil || rs.Spec.Unwritten == nil || len(rs.Spec.Unwritten.Policies) != 1 {
			return fmt.Errorf("not yet (%v)", err)
		}
		return nil
	})
	eventually("toolarge marked unwritten", func() error {
		if rs, err := get("toolarge"); err != nil || rs.Spec.Unwritten == nil {
			return fmt.Errorf("not yet (%v)", err)
		}
		return nil
	})
	eventually("uninstall mark", func() error {
		rs, err := get("uninstalled")
		if err != nil {
			return err
		}
		metav1.SetMetaDataAnnotation(&rs.ObjectMeta, v1alpha1.UninstallAnnotation, "true")
		return c.Update(ctx, rs)
	})
	for node, st := range map[string][2]string{
		"programmed": {"True", v1alpha1.ReasonProgrammed}, "failed": {"False", v1alpha1.ReasonProgramFailed},
		"uninstalled": {"False", v1alpha1.ReasonUninstalled}, "toolarge": {"True", v1alpha1.ReasonProgrammed},
		"degraded": {"True", v1alpha1.ReasonProgrammed},
	} {
		eventually("report "+node, func() error { return report(node, metav1.ConditionStatus(st[0]), st[1]) })
	}

	for _, tc := range cases {
		eventually("DefaultDeny "+tc.node, func() error {
			dd := &v1alpha1.DefaultDeny{}
			if err := c.Get(ctx, client.ObjectKey{Name: tc.node}, dd); err != nil {
				return err
			}
			if cond := meta.FindStatusCondition(dd.Status.Conditions, v1alpha1.ConditionEnforced); cond == nil || cond.Reason != tc.reason {
				return fmt.Errorf("condition %+v, want reason %s", cond, tc.reason)
			}
			return nil
		})
		if tc.eventReason != "" {
			eventually("NetworkPolicy event "+tc.node, func() error {
				var evs eventsv1.EventList
				if err := c.List(ctx, &evs, client.InNamespace(tc.node)); err != nil {
					return err
				}
				var last *eventsv1.Event
				for i := range evs.Items {
					if e := &evs.Items[i]; e.Regarding.Kind == "NetworkPolicy" && e.Regarding.Name == "deny" && (last == nil || e.EventTime.After(last.EventTime.Time)) {
						last = e
					}
				}
				if last == nil || last.Reason != tc.eventReason {
					return fmt.Errorf("last event %+v, want reason %s", last, tc.eventReason)
				}
				return nil
			})
		}
	}

	code, out, errOut := plugin(t, cfg, "status", "-A", "-o", "json")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var doc struct{ Policies []PolicyStatus }
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, p := range doc.Policies {
		states[p.Policy] = p.State
	}
	for _, tc := range cases {
		for _, key := range []string{v1alpha1.DefaultDenyKey(tc.node), v1alpha1.NetworkPolicyKey(tc.node, "deny")} {
			if states[key] != tc.pluginState {
				t.Errorf("plugin: %s is %q, the controller says %s (want %s)", key, states[key], tc.reason, tc.pluginState)
			}
		}
	}
	if key := v1alpha1.NetworkPolicyKey("degraded", "many"); states[key] != "TooLarge" {
		t.Errorf("plugin: %s, whose rules are left out, is %q, want TooLarge", key, states[key])
	}
	if t.Failed() {
		t.Logf("plugin output:\n%s", strings.TrimSpace(out))
	}
}
