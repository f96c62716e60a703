package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/compiler"
	"github.com/nftguard/nftguard/internal/dropsapi/dropsapitest"
	"github.com/nftguard/nftguard/internal/dropsapi/wire"
	"github.com/nftguard/nftguard/internal/testenv"
)

var (
	adminCfg *rest.Config
	k8s      client.Client
	ctx      = context.Background()
)

func TestMain(m *testing.M) {
	env, err := testenv.New()
	if err != nil {
		panic(err)
	}
	adminCfg, err = env.Start()
	if err != nil {
		panic(err)
	}
	k8s, err = client.New(adminCfg, client.Options{Scheme: scheme.Scheme})
	if err != nil {
		panic(err)
	}
	if err := seed(); err != nil {
		_ = env.Stop()
		panic(err)
	}
	code := m.Run()
	_ = env.Stop()
	os.Exit(code)
}

// seed creates, as the controller and the agents would, the objects of a
// small cluster: x/a on n1 isolated for ingress by x/a-from-b, x/b on n2,
// and the compiled NodeRuleSets and AddressGroups with agent status
// (n1 programmed, n2 failed).
func seed() error {
	var pods []*corev1.Pod
	for _, ns := range []string{"x", "y"} {
		if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return err
		}
	}
	for _, p := range []struct{ ns, name, node, ip, app string }{
		{"x", "a", "n1", "198.18.1.1", "a"}, {"x", "b", "n2", "198.18.2.1", "b"}, {"y", "c", "n2", "198.18.2.2", "b"},
	} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: p.name, Labels: map[string]string{"app": p.app}},
			Spec: corev1.PodSpec{NodeName: p.node, Containers: []corev1.Container{{Name: "c", Image: "app",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}}}}},
		}
		if err := k8s.Create(ctx, pod); err != nil {
			return err
		}
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.ip, PodIPs: []corev1.PodIP{{IP: p.ip}}}
		if err := k8s.Status().Update(ctx, pod); err != nil {
			return err
		}
		pods = append(pods, pod)
	}
	port := intstr.FromInt32(80)
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a-from-b"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: ptr.To(corev1.ProtocolTCP), Port: &port}},
			}},
		},
	}
	dd := &v1alpha1.DefaultDeny{
		ObjectMeta: metav1.ObjectMeta{Name: "y-egress"},
		Spec: v1alpha1.DefaultDenySpec{
			NamespaceSelector: v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"kubernetes.io/metadata.name": "y"}},
			PolicyTypes:       []v1alpha1.PolicyType{v1alpha1.PolicyTypeEgress},
		},
	}
	for _, o := range []client.Object{np, dd} {
		if err := k8s.Create(ctx, o); err != nil {
			return err
		}
	}
	var nss corev1.NamespaceList
	if err := k8s.List(ctx, &nss); err != nil {
		return err
	}
	snap := &compiler.Snapshot{Pods: pods, NetworkPolicies: []*networkingv1.NetworkPolicy{np}, DefaultDenies: []*v1alpha1.DefaultDeny{dd}}
	for i := range nss.Items {
		snap.Namespaces = append(snap.Namespaces, &nss.Items[i])
	}
	for _, n := range []string{"n1", "n2"} {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}
		if err := k8s.Create(ctx, node); err != nil {
			return err
		}
		snap.Nodes = append(snap.Nodes, node)
	}
	res := compiler.Compile(snap)
	for name, spec := range res.AddressGroups {
		if err := k8s.Create(ctx, &v1alpha1.AddressGroup{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}); err != nil {
			return err
		}
	}
	for name, spec := range res.NodeRuleSets {
		rs := &v1alpha1.NodeRuleSet{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}
		if err := k8s.Create(ctx, rs); err != nil {
			return err
		}
		cond := metav1.Condition{Type: v1alpha1.ConditionProgrammed, Status: metav1.ConditionTrue, Reason: "Programmed",
			Message: "Table holds generation 1", ObservedGeneration: rs.Generation}
		if name == "n2" {
			cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, "ProgramFailed", "programming generation 1: netlink: operation not permitted"
		} else {
			rs.Status.ObservedGeneration = rs.Generation
		}
		meta.SetStatusCondition(&rs.Status.Conditions, cond)
		if err := k8s.Status().Update(ctx, rs); err != nil {
			return err
		}
	}
	return nil
}

// plugin runs the command line and returns its exit code and output.
func plugin(t *testing.T, cfg *rest.Config, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(ctx, args, streams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, cfg)
	return code, out.String(), errOut.String()
}

func fields(line string) []string { return strings.Fields(line) }

func row(t *testing.T, out, first string) []string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if f := fields(l); len(f) > 0 && f[0] == first {
			return f
		}
	}
	t.Fatalf("no row %q in:\n%s", first, out)
	return nil
}

func TestStatus(t *testing.T) {
	code, out, errOut := plugin(t, adminCfg, "status", "-A")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if got := row(t, out, "POLICY"); strings.Join(got, " ") != "POLICY MODE PODS NODES ENFORCED DROPS STATE MESSAGE" {
		t.Errorf("header %v", got)
	}
	// No drops API here: DROPS is "-".
	if got := row(t, out, "NetworkPolicy/x/a-from-b"); strings.Join(got[:7], " ") != "NetworkPolicy/x/a-from-b Enforce 1 1 1/1 - Enforced" {
		t.Errorf("NetworkPolicy row %v", got)
	}
	got := row(t, out, "DefaultDeny/y-egress")
	if strings.Join(got[:7], " ") != "DefaultDeny/y-egress Enforce 1 1 0/1 - Failed" || !strings.Contains(out, "n2: ProgramFailed: programming generation 1: netlink") {
		t.Errorf("DefaultDeny row %v\n%s", got, out)
	}

	code, out, _ = plugin(t, adminCfg, "status", "-n", "x", "a-from-b")
	if code != exitOK || !strings.Contains(out, "Pods isolated by NetworkPolicy/x/a-from-b") || len(row(t, out, "x/a")) != 3 {
		t.Errorf("detail: exit %d\n%s", code, out)
	}
	if f := row(t, out, "n1"); strings.Join(f, " ") != "n1 Programmed 1 1" {
		t.Errorf("node row %v", f)
	}

	code, out, _ = plugin(t, adminCfg, "status", "dd/y-egress", "-o", "json")
	var doc struct{ Policies []PolicyStatus }
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != exitOK {
		t.Fatalf("exit %d, %v:\n%s", code, err, out)
	}
	if len(doc.Policies) != 1 {
		t.Fatalf("policies %+v", doc.Policies)
	}
	p := doc.Policies[0]
	if p.Policy != "DefaultDeny/y-egress" || p.State != "Failed" || len(p.Pods) != 1 || p.Pods[0].Name != "c" ||
		p.Pods[0].Directions[0] != "Egress" || len(p.Nodes) != 1 || p.Nodes[0].Node != "n2" || p.Nodes[0].State != "Failed" || p.Drops != nil {
		t.Errorf("status %+v", p)
	}

	if code, _, errOut := plugin(t, adminCfg, "status", "-n", "x", "nope"); code != exitError || !strings.Contains(errOut, "NetworkPolicy/x/nope not found") {
		t.Errorf("unknown policy: exit %d %s", code, errOut)
	}
	if code, _, _ := plugin(t, adminCfg, "status", "a", "b"); code != exitUsage {
		t.Errorf("two arguments: exit %d, want %d", code, exitUsage)
	}
}

func TestExplain(t *testing.T) {
	code, out, errOut := plugin(t, adminCfg, "explain", "--from", "x/b", "--to", "x/a", "--port", "80")
	if code != exitOK {
		t.Fatalf("exit %d: %s%s", code, out, errOut)
	}
	for _, want := range []string{
		"x/b -> x/a TCP/80 (198.18.2.1 -> 198.18.1.1): ALLOWED",
		"egress   (node n2, x/b): passes: no policy isolates the pod's egress",
		"ingress  (node n1, x/a): passes: allowed by rule",
		"NetworkPolicy/x/a-from-b",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}

	code, out, _ = plugin(t, adminCfg, "explain", "--from", "y/c", "--to", "x/a", "--port", "http", "-o", "json")
	if code != exitDenied {
		t.Errorf("y/c -> x/a: exit %d, want %d", code, exitDenied)
	}
	var v struct {
		Allowed bool
		Egress  struct {
			Isolated bool
			Allowed  bool
			Policies []string
			Notes    []string
		}
		Ingress struct {
			Allowed     bool
			NearestMiss struct{ Why string }
		}
		Hints []string
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if v.Allowed || !v.Egress.Isolated || v.Egress.Allowed || v.Egress.Policies[0] != "DefaultDeny/y-egress" || v.Ingress.Allowed {
		t.Errorf("verdict %+v", v)
	}
	if len(v.Egress.Notes) == 0 || !strings.Contains(v.Egress.Notes[0], "node n2 has not programmed this rule set") {
		t.Errorf("notes %q", v.Egress.Notes)
	}
	if !strings.Contains(strings.Join(v.Hints, "\n"), "a podSelector without a namespaceSelector selects pods in namespace x only; y/c is in y") {
		t.Errorf("hints %q", v.Hints)
	}

	code, out, _ = plugin(t, adminCfg, "explain", "--from", "x/b", "--to", "x/a", "--port", "81/TCP")
	if code != exitDenied || !strings.Contains(out, "DENIED") ||
		!strings.Contains(out, "nearest miss: rule") || !strings.Contains(out, "the peer matches but the rule allows TCP/80, not TCP/81") {
		t.Errorf("exit %d:\n%s", code, out)
	}
	if code, _, _ := plugin(t, adminCfg, "explain", "--from", "x/b", "--port", "80"); code != exitUsage {
		t.Errorf("no destination: exit %d", code)
	}
	if code, _, _ := plugin(t, adminCfg, "explain", "--from", "x/b", "--to", "x/a", "--port", "80/ICMP"); code != exitUsage {
		t.Errorf("bad protocol: exit %d", code)
	}
	if code, _, errOut := plugin(t, adminCfg, "explain", "--from", "x/zz", "--to", "x/a", "--port", "80"); code != exitError || !strings.Contains(errOut, "pod x/zz not found") {
		t.Errorf("unknown pod: exit %d %s", code, errOut)
	}
}

// TestDrops reads drops through the API server's aggregator from a real
// drops server that an agent of node n1 pushed to, as a user who may read
// the drops of namespace x only.
func TestDrops(t *testing.T) {
	c := dropsapitest.Start(t)
	c.Create(&rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "drops-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{wire.Group}, Resources: []string{wire.ResourceDrops}, Verbs: []string{"list", "watch"}}},
	})
	c.Create(&rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}}},
	})
	token := c.AgentToken(dropsapitest.AgentSA, "n1", wire.Audience)
	now := time.Now().UTC()
	b := audit.Endpoint{IP: mustAddr("198.18.2.1"), Port: 41000, Namespace: "y", Pod: "b"}
	a := audit.Endpoint{IP: mustAddr("198.18.1.1"), Port: 81, Namespace: "x", Pod: "a"}
	drop := func(at time.Time, n uint64) audit.Event {
		return audit.Event{Time: at, Action: audit.ActionDrop, Direction: audit.Ingress, Protocol: audit.ProtocolTCP,
			Src: b, Dst: a, Policies: []string{"NetworkPolicy/x/a-from-b"}, Count: n}
	}
	lines := []audit.Event{
		drop(now.Add(-3*time.Hour), 50), drop(now.Add(-5*time.Minute), 3), drop(now.Add(-time.Minute), 4),
		{Time: now.Add(-time.Minute), Action: audit.ActionLost, Reason: audit.LostRateLimit, Count: 9},
	}
	if code, _ := c.Push(token, "n1", "s", 0, lines); code != 200 {
		t.Fatalf("push: %d", code)
	}
	_ = c.User("oncall", map[string][]string{"x": {"drops-reader"}})
	oncall := userConfig(t, c, "oncall")

	code, out, errOut := plugin(t, oncall, "drops", "-n", "x")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if got := row(t, out, "LAST"); strings.Join(got, " ") != "LAST NODE ACTION DIRECTION PROTO SOURCE DESTINATION PORT COUNT POLICIES" {
		t.Errorf("header %v", got)
	}
	var flowRow []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "198.18.2.1") {
			flowRow = fields(l)
		}
	}
	// LAST is a date and a time: two fields. y/b's name is withheld: oncall
	// may not list pods in y.
	if strings.Join(flowRow[2:], " ") != "n1 drop ingress TCP y/198.18.2.1 x/a 81 7 NetworkPolicy/x/a-from-b" {
		t.Errorf("flow row %v\n%s", flowRow, out)
	}
	if !strings.Contains(out, "withheld in 2 line(s)") || strings.Contains(out, "ratelimit") {
		t.Errorf("want the withheld names noted and no losses (they belong to no namespace):\n%s", out)
	}

	// status shows the policy's drops from the drops API's dropcounts.
	port := intstr.FromInt32(80)
	adminOfC, err := client.New(c.Env.Config, client.Options{Scheme: scheme.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := adminOfC.Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a-from-b"},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &port}}}}},
	}); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = plugin(t, c.Env.Config, "status", "-n", "x")
	if got := row(t, out, "NetworkPolicy/x/a-from-b"); code != exitOK || len(got) < 6 || got[5] != "57" {
		t.Errorf("status with drops: exit %d, row %v (want DROPS 57)\n%s%s", code, got, out, errOut)
	}

	code, out, _ = plugin(t, oncall, "drops", "-n", "x", "--since", "4h", "--pod", "a", "-o", "json")
	var list wire.DropList
	if err := json.Unmarshal([]byte(out), &list); err != nil || code != exitOK || len(list.Items) != 1 ||
		list.Items[0].Count != 57 || list.Items[0].Lines != 3 || list.Kind != "DropList" {
		t.Errorf("since 4h: exit %d %v %+v", code, err, list)
	}
	code, out, _ = plugin(t, oncall, "drops", "-n", "x", "--pod", "b", "-o", "json")
	if err := json.Unmarshal([]byte(out), &list); err != nil || code != exitOK || len(list.Items) != 0 {
		t.Errorf("--pod b matched a withheld name: exit %d %+v", code, list)
	}

	// Namespace y's drops and all namespaces' need their own grants.
	if code, _, errOut := plugin(t, oncall, "drops", "-n", "y"); code != exitError || !strings.Contains(errOut, `cannot list resource "drops"`) {
		t.Errorf("namespace y: exit %d %s", code, errOut)
	}
	if code, _, errOut := plugin(t, oncall, "drops", "-A"); code != exitError || !strings.Contains(errOut, "at the cluster scope") {
		t.Errorf("-A: exit %d %s", code, errOut)
	}
	_ = c.User("oncall", map[string][]string{"": {"drops-reader", "pod-reader"}})
	dropsapitest.WaitFor(t, func() bool {
		code, out, _ := plugin(t, oncall, "drops", "-A")
		return code == exitOK && strings.Contains(out, "y/b") && strings.Contains(out, "ratelimit=9")
	}, "cluster-wide: names and losses")

	// Follow: new lines as they arrive.
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		code := run(fctx, []string{"drops", "-n", "x", "-f"}, streams{In: strings.NewReader(""), Out: pw, ErrOut: io.Discard}, oncall)
		pw.Close()
		done <- code
	}()
	followed := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			followed <- sc.Text()
		}
		close(followed)
	}()
	if header := <-followed; !strings.HasPrefix(header, "TIME") {
		t.Errorf("follow header %q", header)
	}
	next := uint64(len(lines))
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for got := false; !got; {
		select {
		case l := <-followed:
			got = strings.Contains(l, "x/a") && strings.Contains(l, "NetworkPolicy/x/a-from-b")
		case <-tick.C:
			// The watch may begin after a push: push until a line shows.
			if _, resp := c.Push(token, "n1", "s", next, []audit.Event{drop(time.Now(), 1)}); resp.Next > next {
				next = resp.Next
			}
		case <-deadline:
			t.Fatal("no followed line")
		}
	}
	cancel()
	go func() {
		for range followed {
		}
	}()
	if code := <-done; code != exitOK {
		t.Errorf("follow ended with %d", code)
	}

	if code, _, _ := plugin(t, oncall, "drops", "--since", "yesterday"); code != exitUsage {
		t.Errorf("bad --since: exit %d", code)
	}
}

// userConfig is a rest.Config for a user of c, as the plugin would load it.
func userConfig(t *testing.T, c *dropsapitest.Cluster, name string) *rest.Config {
	t.Helper()
	u, err := c.Env.AddUser(envtest.User{Name: name}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return u.Config()
}

func TestUninstall(t *testing.T) {
	// Stand in for the agents: report Uninstalled once marked.
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for actx.Err() == nil {
			var list v1alpha1.NodeRuleSetList
			if k8s.List(actx, &list) == nil {
				for i := range list.Items {
					rs := &list.Items[i]
					_, marked := rs.Annotations[v1alpha1.UninstallAnnotation]
					c := meta.FindStatusCondition(rs.Status.Conditions, v1alpha1.ConditionProgrammed)
					if marked && (c == nil || c.Reason != v1alpha1.ReasonUninstalled) {
						meta.SetStatusCondition(&rs.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionProgrammed,
							Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonUninstalled, Message: "deleted"})
						_ = k8s.Status().Update(actx, rs)
					}
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	code, out, errOut := plugin(t, adminCfg, "uninstall", "--timeout", "30s")
	if code != exitOK || !strings.Contains(out, "Every node (2) deleted its nftguard table") || !strings.Contains(out, "kubectl delete -k config/default") {
		t.Fatalf("exit %d:\n%s%s", code, out, errOut)
	}
	code, out, _ = plugin(t, adminCfg, "status", "-A")
	if code != exitOK || !strings.Contains(out, "Uninstalled  not enforced: uninstalled on n1") {
		t.Errorf("status after uninstall:\n%s", out)
	}
	cancel()
	code, _, _ = plugin(t, adminCfg, "uninstall", "--cancel")
	var list v1alpha1.NodeRuleSetList
	if err := k8s.List(ctx, &list); err != nil || code != exitOK {
		t.Fatal(code, err)
	}
	for i := range list.Items {
		rs := &list.Items[i]
		if _, marked := rs.Annotations[v1alpha1.UninstallAnnotation]; marked {
			t.Errorf("%s still marked after --cancel", rs.Name)
		}
		// As the agents would: programmed again.
		meta.SetStatusCondition(&rs.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionProgrammed,
			Status: metav1.ConditionTrue, Reason: "Programmed", Message: "again", ObservedGeneration: rs.Generation})
		if err := k8s.Status().Update(ctx, rs); err != nil {
			t.Fatal(err)
		}
	}
	// Nobody answers now: the command names the nodes it waited for.
	code, _, errOut = plugin(t, adminCfg, "uninstall", "--timeout", "1s")
	if code != exitError || !strings.Contains(errOut, "these nodes have not deleted their table") {
		t.Errorf("exit %d: %s", code, errOut)
	}
	_, _, _ = plugin(t, adminCfg, "uninstall", "--cancel")
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
