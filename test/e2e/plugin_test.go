package e2e

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/nftnl"
	"github.com/nftguard/nftguard/test/localcluster"
)

// The kubectl plugin (cmd/kubectl-nftguard) run as a user runs it: the real
// binary, with a kubeconfig, against the live cluster.

var (
	pluginOnce sync.Once
	pluginPath string
	pluginErr  error
)

// pluginBinary builds the plugin once per run, next to the controller and
// agent TestMain built (the directory goes away with the run).
func pluginBinary(t *testing.T) string {
	t.Helper()
	pluginOnce.Do(func() {
		pluginPath = filepath.Join(binDir, "kubectl-nftguard")
		pluginErr = goBuild(pluginPath, "./cmd/kubectl-nftguard")
	})
	if pluginErr != nil {
		t.Fatal(pluginErr)
	}
	return pluginPath
}

func goBuild(out, pkg string, flags ...string) error {
	args := append(append([]string{"build", "-o", out}, flags...), pkg)
	cmd := exec.Command("go", args...)
	cmd.Dir = localcluster.RepoRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// pluginRun is the outcome of one run of the plugin.
type pluginRun struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r pluginRun) String() string {
	return fmt.Sprintf("kubectl nftguard %s: exit %d\n--- stdout:\n%s--- stderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// pluginEnv is the environment without proxies (the nodes' addresses are
// reachable only directly) and without a KUBECONFIG of the machine.
func pluginEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasSuffix(strings.ToUpper(k), "_PROXY") || k == "KUBECONFIG" {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// runPlugin runs `kubectl nftguard ARGS --kubeconfig KUBECONFIG` in the
// machine's network namespace, or inside netns when it is set.
func runPlugin(t *testing.T, netns, kubeconfig string, args ...string) pluginRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pluginBinary(t), append(slices.Clone(args), "--kubeconfig="+kubeconfig)...)
	cmd.Env = pluginEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	var err error
	if netns == "" {
		err = cmd.Run()
	} else {
		err = localcluster.RunInNetNS(netns, cmd)
	}
	r := pluginRun{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		r.code = ee.ExitCode()
	default:
		t.Fatalf("running kubectl nftguard %s: %v\n%s", strings.Join(args, " "), err, r)
	}
	return r
}

// mustPlugin runs the plugin and fails the test unless it exits 0.
func mustPlugin(t *testing.T, netns, kubeconfig string, args ...string) pluginRun {
	t.Helper()
	r := runPlugin(t, netns, kubeconfig, args...)
	if r.code != 0 {
		t.Fatalf("%s", r)
	}
	return r
}

// tableRows splits a table's lines into fields; the first is the header.
func tableRows(out string) [][]string {
	var rows [][]string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			rows = append(rows, f)
		}
	}
	return rows
}

// The JSON the plugin prints (cmd/kubectl-nftguard/status.go), decoded
// independently of the plugin's own types.
type (
	statusOutput struct {
		Policies []policyStatus `json:"policies"`
	}
	policyStatus struct {
		Policy     string         `json:"policy"`
		Mode       string         `json:"mode"`
		Generation int64          `json:"generation"`
		Pods       []podIsolation `json:"pods"`
		Nodes      []nodeProgress `json:"nodes"`
		Enforced   string         `json:"enforced"`
		State      string         `json:"state"`
		Message    string         `json:"message,omitempty"`
	}
	podIsolation struct {
		Namespace  string   `json:"namespace"`
		Name       string   `json:"name"`
		Node       string   `json:"node"`
		Directions []string `json:"directions"`
	}
	nodeProgress struct {
		Node                 string `json:"node"`
		State                string `json:"state"`
		Generation           int64  `json:"generation"`
		ProgrammedGeneration int64  `json:"programmedGeneration"`
		Message              string `json:"message,omitempty"`
	}
)

func decodeStatus(t *testing.T, r pluginRun) statusOutput {
	t.Helper()
	var s statusOutput
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, r)
	}
	return s
}

// waitDefaultDeniesEnforced waits until every DefaultDeny reports Enforced
// for its current generation (status shows the condition's message
// otherwise).
func waitDefaultDeniesEnforced(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var dds v1alpha1.DefaultDenyList
		if err := cl.Client().List(context.Background(), &dds); err != nil {
			t.Fatal(err)
		}
		why := ""
		for _, dd := range dds.Items {
			c := meta.FindStatusCondition(dd.Status.Conditions, v1alpha1.ConditionEnforced)
			if dd.Status.ObservedGeneration != dd.Generation || c == nil || c.Status != metav1.ConditionTrue || c.ObservedGeneration != dd.Generation {
				why = "DefaultDeny " + dd.Name + " does not report Enforced for its generation yet"
			}
		}
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ruleSetGenerations reads each node's NodeRuleSet generation.
func ruleSetGenerations(t *testing.T) map[string]int64 {
	t.Helper()
	var rss v1alpha1.NodeRuleSetList
	if err := cl.Client().List(context.Background(), &rss); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, rs := range rss.Items {
		out[rs.Name] = rs.Generation
	}
	return out
}

// agentRunning reports whether a node's agent runs.
func agentRunning(node string) bool {
	for _, p := range cl.Processes() {
		if p.Role == localcluster.RoleAgent && p.Name == node && p.Alive() {
			return true
		}
	}
	return false
}

// stopAgent stops a node's agent; the test's cleanup starts it again if the
// test did not.
func stopAgent(t *testing.T, node string, sig syscall.Signal) localcluster.ProcessRef {
	t.Helper()
	ref, err := cl.Kill(localcluster.RoleAgent, node, sig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if agentRunning(node) {
			return
		}
		if err := cl.Restart(context.Background(), ref); err != nil {
			t.Errorf("restarting the agent of %s: %v", node, err)
		}
	})
	return ref
}

// TestPluginStatus: `kubectl nftguard status` in table, JSON and YAML, for
// one policy and for all, against what the cluster enforces; and --watch
// following a policy from Programming (its node's agent is down) to
// Enforced.
func TestPluginStatus(t *testing.T) {
	needCluster(t)
	resetPolicies(t)
	t.Cleanup(func() { resetPolicies(t) })
	kc := cl.Kubeconfig()
	enforceXY := &v1alpha1.DefaultDeny{
		ObjectMeta: metav1.ObjectMeta{Name: "plugin-enforce"},
		Spec: v1alpha1.DefaultDenySpec{
			NamespaceSelector: v1alpha1.LabelSelector{MatchExpressions: []v1alpha1.LabelSelectorRequirement{
				{Key: "ns", Operator: metav1.LabelSelectorOpIn, Values: []string{"x", "y"}},
			}},
			PolicyTypes: []v1alpha1.PolicyType{v1alpha1.PolicyTypeIngress},
			Mode:        v1alpha1.ModeEnforce,
		},
	}
	auditZ := defaultDeny("plugin-audit", v1alpha1.ModeAudit, v1alpha1.PolicyTypeIngress)
	auditZ.Spec.NamespaceSelector = v1alpha1.LabelSelector{MatchLabels: v1alpha1.MatchLabels(labels("ns", "z"))}
	create(t, enforceXY, auditZ,
		allowIngress(policy("x", "plugin-a-from-y", labels("pod", "a"), ingress), nil, nsPeer(labels("ns", "y"))),
		policy("y", "plugin-c-no-egress", labels("pod", "c"), egress),
		policy("z", "plugin-nobody", labels("pod", "nobody"), ingress),
	)
	waitConverged(t)
	waitDefaultDeniesEnforced(t)

	// What status must say, from the topology and the rule sets' generations.
	gens := ruleSetGenerations(t)
	want := func(key, mode string, dir string, pods ...string) policyStatus {
		st := policyStatus{Policy: key, Mode: mode, Generation: 1, Pods: []podIsolation{}, Nodes: []nodeProgress{}}
		nodes := map[string]bool{}
		for _, p := range pods {
			pod := mustPod(t, p)
			st.Pods = append(st.Pods, podIsolation{Namespace: pod.Namespace, Name: pod.Name, Node: pod.Node, Directions: []string{dir}})
			nodes[pod.Node] = true
		}
		for _, n := range slicesSorted(nodes) {
			st.Nodes = append(st.Nodes, nodeProgress{Node: n, State: "Programmed", Generation: gens[n], ProgrammedGeneration: gens[n]})
		}
		st.Enforced = fmt.Sprintf("%d/%d", len(nodes), len(nodes))
		st.State = "Enforced"
		if len(pods) == 0 {
			st.State, st.Message = "NoSelectedPods", "isolates no pod (no scheduled pod with an IP matches)"
		}
		return st
	}
	all := []policyStatus{
		want("DefaultDeny/plugin-audit", "Audit", "Ingress", "z/a", "z/b", "z/c"),
		want("DefaultDeny/plugin-enforce", "Enforce", "Ingress", "x/a", "x/b", "x/c", "y/a", "y/b", "y/c"),
		want("NetworkPolicy/x/plugin-a-from-y", "Enforce", "Ingress", "x/a"),
		want("NetworkPolicy/y/plugin-c-no-egress", "Enforce", "Egress", "y/c"),
		want("NetworkPolicy/z/plugin-nobody", "Enforce", "Ingress"),
	}
	byKey := map[string]policyStatus{}
	for _, st := range all {
		byKey[st.Policy] = st
	}
	pick := func(keys ...string) []policyStatus {
		var out []policyStatus
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	}
	checkJSON := func(r pluginRun, want []policyStatus) {
		t.Helper()
		if got := decodeStatus(t, r); !reflect.DeepEqual(got.Policies, want) {
			t.Errorf("%s\nwant policies %+v", r, want)
		}
	}
	checkTable := func(r pluginRun, want []policyStatus) {
		t.Helper()
		rows := tableRows(r.stdout)
		if len(rows) == 0 || !slices.Equal(rows[0], []string{"POLICY", "MODE", "PODS", "NODES", "ENFORCED", "DROPS", "STATE", "MESSAGE"}) {
			t.Fatalf("no status header:\n%s", r)
		}
		rows = rows[1:]
		if len(rows) != len(want) {
			t.Fatalf("%d rows, want %d:\n%s", len(rows), len(want), r)
		}
		for i, w := range want {
			got := rows[i]
			exp := []string{w.Policy, w.Mode, strconv.Itoa(len(w.Pods)), strconv.Itoa(len(w.Nodes)), w.Enforced, w.State}
			// DROPS (got[5]) is a count from the drops API: the admin may read it.
			if len(got) < 7 || !slices.Equal(append(slices.Clone(got[:5]), got[6]), exp) || strings.Join(got[7:], " ") != w.Message {
				t.Errorf("row %d is %q, want %q with message %q:\n%s", i, got, exp, w.Message, r)
			}
			if _, err := strconv.ParseUint(got[5], 10, 64); err != nil {
				t.Errorf("row %d: DROPS %q is not a count:\n%s", i, got[5], r)
			}
		}
	}

	t.Run("all policies, table", func(t *testing.T) {
		checkTable(mustPlugin(t, "", kc, "status", "-A"), all)
	})
	t.Run("all policies, JSON and YAML", func(t *testing.T) {
		checkJSON(mustPlugin(t, "", kc, "status", "--all-namespaces", "-o", "json"), all)
		r := mustPlugin(t, "", kc, "status", "-A", "-o", "yaml")
		var got statusOutput
		if err := yaml.Unmarshal([]byte(r.stdout), &got); err != nil || !reflect.DeepEqual(got.Policies, all) {
			t.Errorf("YAML (%v): %s", err, r)
		}
	})
	t.Run("the kubeconfig's namespace and -n", func(t *testing.T) {
		// The admin kubeconfig's context is in "default": no NetworkPolicy there.
		checkTable(mustPlugin(t, "", kc, "status"), pick("DefaultDeny/plugin-audit", "DefaultDeny/plugin-enforce"))
		checkJSON(mustPlugin(t, "", kc, "status", "-n", "z", "-o", "json"),
			pick("DefaultDeny/plugin-audit", "DefaultDeny/plugin-enforce", "NetworkPolicy/z/plugin-nobody"))
	})
	t.Run("one policy", func(t *testing.T) {
		checkJSON(mustPlugin(t, "", kc, "status", "dd/plugin-audit", "-o", "json"), pick("DefaultDeny/plugin-audit"))
		checkJSON(mustPlugin(t, "", kc, "status", "-n", "y", "networkpolicy/plugin-c-no-egress", "-o", "json"),
			pick("NetworkPolicy/y/plugin-c-no-egress"))
		r := mustPlugin(t, "", kc, "status", "-n", "x", "plugin-a-from-y")
		xa := mustPod(t, "x/a")
		g := strconv.FormatInt(gens[xa.Node], 10)
		rows := tableRows(r.stdout)
		for i, row := range rows {
			// DROPS, a count from the drops API, is checked apart.
			if len(row) >= 7 && row[0] == "NetworkPolicy/x/plugin-a-from-y" {
				if _, err := strconv.ParseUint(row[5], 10, 64); err != nil {
					t.Errorf("DROPS %q is not a count:\n%s", row[5], r)
				}
				rows[i] = append(slices.Clone(row[:5]), row[6:]...)
			}
		}
		for _, want := range [][]string{
			{"NetworkPolicy/x/plugin-a-from-y", "Enforce", "1", "1", "1/1", "Enforced"},
			{"Pods", "isolated", "by", "NetworkPolicy/x/plugin-a-from-y:"},
			{"x/a", xa.Node, "Ingress"},
			{"Nodes:"},
			{xa.Node, "Programmed", g, g},
		} {
			if !slices.ContainsFunc(rows, func(row []string) bool { return slices.Equal(row, want) }) {
				t.Errorf("no line %q in:\n%s", want, r)
			}
		}
	})
	t.Run("errors", func(t *testing.T) {
		if r := runPlugin(t, "", kc, "status", "-n", "x", "missing"); r.code != 1 || !strings.Contains(r.stderr, "NetworkPolicy/x/missing not found") {
			t.Errorf("a missing policy: %s", r)
		}
		if r := runPlugin(t, "", kc, "status", "-o", "xml"); r.code != 2 {
			t.Errorf("a bad output format: %s", r)
		}
	})
	t.Run("watch from Programming to Enforced", func(t *testing.T) {
		node := mustPod(t, "z/b").Node
		ref := stopAgent(t, node, syscall.SIGTERM)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, pluginBinary(t), "status", "-A", "--watch", "--watch-interval=200ms", "-o", "json", "--kubeconfig="+kc)
		cmd.Env = pluginEnv()
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			cancel()
			_ = cmd.Wait()
		}()
		docs := json.NewDecoder(out)
		// next reads printed states until one of the policy satisfies ok.
		next := func(key string, ok func(policyStatus) bool) policyStatus {
			t.Helper()
			var last []policyStatus
			for {
				var s statusOutput
				if err := docs.Decode(&s); err != nil {
					t.Fatalf("reading status --watch (%v), last printed %+v; stderr: %s", err, last, stderr.String())
				}
				last = s.Policies
				for _, st := range s.Policies {
					if st.Policy == key && ok(st) {
						return st
					}
				}
			}
		}
		late := "NetworkPolicy/z/plugin-b-late"
		create(t, policy("z", "plugin-b-late", labels("pod", "b"), ingress))
		st := next(late, func(st policyStatus) bool { return len(st.Nodes) == 1 })
		if st.State != "Programming" || st.Enforced != "0/1" || st.Nodes[0].Node != node || st.Nodes[0].State != "Pending" ||
			st.Message != "waiting for "+node || len(st.Pods) != 1 || st.Pods[0].Name != "b" {
			t.Errorf("with the agent of %s down, status of %s is %+v; want Programming 0/1, waiting for %s", node, late, st, node)
		}
		if err := cl.Restart(context.Background(), ref); err != nil {
			t.Fatal(err)
		}
		st = next(late, func(st policyStatus) bool { return st.State != "Programming" })
		if st.State != "Enforced" || st.Enforced != "1/1" || st.Nodes[0].State != "Programmed" {
			t.Errorf("once the agent of %s is back, status of %s is %+v; want Enforced 1/1", node, late, st)
		}
	})
}

func slicesSorted(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// dropsOutput is `kubectl nftguard drops -o json`: the drops API's DropList
// (internal/dropsapi/wire), decoded independently of its types.
type dropsOutput struct {
	Kind     string            `json:"kind"`
	Nodes    []string          `json:"nodes"`
	Flows    []dropFlow        `json:"items"`
	Lost     map[string]uint64 `json:"lost"`
	Redacted int               `json:"redacted"`
}

type dropFlow struct {
	Node      string    `json:"node"`
	Action    string    `json:"action"`
	Direction string    `json:"direction"`
	Protocol  string    `json:"protocol"`
	Src       flowEnd   `json:"src"`
	Dst       flowEnd   `json:"dst"`
	Policies  []string  `json:"policies"`
	Count     int       `json:"count"`
	Lines     int       `json:"lines"`
	First     time.Time `json:"first"`
	Last      time.Time `json:"last"`
}

type flowEnd struct {
	IP        string `json:"ip"`
	Port      int    `json:"port"`
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
}

// key names a flow: "src > dst PROTO/port node direction action".
func (f dropFlow) key() string {
	return fmt.Sprintf("%s/%s > %s/%s %s/%d %s %s %s", f.Src.Namespace, f.Src.Pod, f.Dst.Namespace, f.Dst.Pod,
		f.Protocol, f.Dst.Port, f.Node, f.Direction, f.Action)
}

// wantFlow is a flow the test's probes must show.
type wantFlow struct {
	from, to string
	p        probe
	times    int // probes made; TCP probes send one SYN each
	dir      string
	policy   string
}

func (w wantFlow) node(t *testing.T) string {
	if w.dir == "egress" {
		return mustPod(t, w.from).Node
	}
	return mustPod(t, w.to).Node
}

func (w wantFlow) key(t *testing.T) string {
	return fmt.Sprintf("%s > %s %s/%d %s %s drop", w.from, w.to, w.p.Proto, w.p.Port, w.node(t), w.dir)
}

// dropsReader creates a ServiceAccount with a ClusterRole of rules, bound in
// namespace (a RoleBinding) or, when it is empty, cluster-wide; waits until
// the API server authorizes it, and writes a kubeconfig with its token for
// the API server as the machine reaches it: a user's laptop, which reaches
// no node. Everything is deleted when the test ends.
func dropsReader(t *testing.T, name, namespace string, rules []rbacv1.PolicyRule) string {
	t.Helper()
	ctx := context.Background()
	c := cl.Client()
	const ns = "nftguard-system"
	ref := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name}
	subjects := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: name}}
	var binding client.Object = &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name}, RoleRef: ref, Subjects: subjects}
	if namespace != "" {
		binding = &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}, RoleRef: ref, Subjects: subjects}
	}
	objs := []client.Object{
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}},
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules},
		binding,
	}
	for _, o := range objs {
		if err := c.Create(ctx, o); err != nil {
			t.Fatalf("creating %T %s: %v", o, name, err)
		}
		t.Cleanup(func() {
			if err := c.Delete(context.Background(), o); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("deleting %T %s: %v", o, name, err)
			}
		})
	}
	// RBAC reaches the authorizer through its informers: wait for it.
	user := "system:serviceaccount:" + ns + ":" + name
	deadline := time.Now().Add(15 * time.Second)
	for len(rules) > 0 {
		sar, err := cl.Clientset().AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{
				User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
				ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: rules[0].Verbs[0], Group: rules[0].APIGroups[0],
					Resource: rules[0].Resources[0], Namespace: namespace},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is still not allowed to %s %s", user, rules[0].Verbs[0], rules[0].Resources[0])
		}
		time.Sleep(100 * time.Millisecond)
	}
	kc := filepath.Join(t.TempDir(), name+".kubeconfig")
	if err := cl.WriteTokenKubeconfig(ctx, kc, cl.State().APIServer, ns, name); err != nil {
		t.Fatal(err)
	}
	return kc
}

var (
	listDrops = rbacv1.PolicyRule{APIGroups: []string{"drops.nftguard.io"}, Resources: []string{"drops"}, Verbs: []string{"list", "watch"}}
	listPods  = rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}}
)

// TestPluginDrops: denied probes show up in `kubectl nftguard drops`, asked
// from the machine (which reaches the API server, not the nodes) with a
// ServiceAccount token, through the drops API: grouped by flow with exact
// counts, attributed to their policies, in table and JSON, with each
// filter, followed as they happen, and through `kubectl get --raw`. A
// namespace's reader sees that namespace's drops only, with other
// namespaces' pod names withheld; no grant, no drops. The agents listen on
// no port a user's token could be sent to.
func TestPluginDrops(t *testing.T) {
	needCluster(t)
	resetPolicies(t)
	t.Cleanup(func() { resetPolicies(t) })
	create(t,
		policy("x", "plugin-drops-deny", nil, ingress),
		policy("y", "plugin-drops-egress", labels("pod", "c"), egress),
	)
	waitConverged(t)
	reader := dropsReader(t, "nftguard-e2e-drops-reader", "", []rbacv1.PolicyRule{listDrops, listPods})

	// Only lines from now on: earlier tests dropped plenty.
	since := time.Now().UTC().Format(time.RFC3339Nano)
	deny, egressDeny := "NetworkPolicy/x/plugin-drops-deny", "NetworkPolicy/y/plugin-drops-egress"
	flows := []wantFlow{
		{from: "y/a", to: "x/a", p: tcp80, times: 3, dir: "ingress", policy: deny},
		{from: "z/b", to: "x/c", p: tcp80, times: 2, dir: "ingress", policy: deny},
		{from: "y/c", to: "z/a", p: tcp80, times: 2, dir: "egress", policy: egressDeny},
		{from: "y/b", to: "x/b", p: udp81, times: 1, dir: "ingress", policy: deny},
	}
	for _, f := range flows {
		for i := 0; i < f.times; i++ {
			if probeOne(t, f.from, f.to, f.p) {
				t.Fatalf("%s reached %s on %d/%s", f.from, f.to, f.p.Port, f.p.Proto)
			}
		}
	}
	if !probeOne(t, "z/a", "y/a", tcp80) {
		t.Fatal("z/a cannot reach y/a, which no policy isolates")
	}

	// mine keeps the flows attributed to this test's policies.
	mine := func(d dropsOutput) map[string]dropFlow {
		out := map[string]dropFlow{}
		for _, f := range d.Flows {
			if slices.Contains(f.Policies, deny) || slices.Contains(f.Policies, egressDeny) {
				if _, dup := out[f.key()]; dup {
					t.Errorf("flow %s appears twice", f.key())
				}
				out[f.key()] = f
			}
		}
		return out
	}
	drops := func(kc string, args ...string) (dropsOutput, pluginRun) {
		t.Helper()
		r := mustPlugin(t, "", kc, append([]string{"drops", "--since", since, "-o", "json"}, args...)...)
		var d dropsOutput
		if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
			t.Fatalf("drops JSON: %v\n%s", err, r)
		}
		return d, r
	}
	// Lines are written once their one-second folding window closes, and
	// pushed within a second.
	var all dropsOutput
	var allRun pluginRun
	for deadline := time.Now().Add(20 * time.Second); ; {
		all, allRun = drops(reader, "-A")
		got := mine(all)
		complete := true
		for _, f := range flows {
			if g, ok := got[f.key(t)]; !ok || g.Count < f.times {
				complete = false
			}
		}
		if complete {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the drops of the probes did not all show up:\n%s", allRun)
		}
		time.Sleep(250 * time.Millisecond)
	}

	t.Run("grouped flows, JSON", func(t *testing.T) {
		if !slices.Equal(all.Nodes, []string{"node-1", "node-2"}) || all.Kind != "DropList" {
			t.Errorf("kind %q, nodes %v; want a DropList of both nodes", all.Kind, all.Nodes)
		}
		got := mine(all)
		if len(got) != len(flows) {
			t.Errorf("%d flows of this test, want %d:\n%s", len(got), len(flows), allRun)
		}
		for _, w := range flows {
			g := got[w.key(t)]
			src, dst := mustPod(t, w.from), mustPod(t, w.to)
			countOK := g.Count == w.times
			if w.p.Proto != corev1.ProtocolTCP {
				countOK = g.Count >= w.times // datagrams are resent within a probe
			}
			if !countOK || g.Src.IP != src.IPv4.String() || g.Dst.IP != dst.IPv4.String() || g.Src.Port != 0 ||
				!slices.Equal(g.Policies, []string{w.policy}) || g.Lines < 1 || g.First.IsZero() || g.Last.Before(g.First) {
				t.Errorf("flow %s: %+v; want %d packets from %s to %s attributed to %s", w.key(t), g, w.times, src.IPv4, dst.IPv4, w.policy)
			}
		}
	})

	t.Run("grouped flows, table", func(t *testing.T) {
		r := mustPlugin(t, "", reader, "drops", "-A", "--since", since)
		rows := tableRows(r.stdout)
		if len(rows) == 0 || !slices.Equal(rows[0], []string{"LAST", "NODE", "ACTION", "DIRECTION", "PROTO", "SOURCE", "DESTINATION", "PORT", "COUNT", "POLICIES"}) {
			t.Fatalf("no drops header:\n%s", r)
		}
		got := mine(all)
		for _, w := range flows {
			// LAST is a date and a time: two fields.
			want := []string{w.node(t), "drop", w.dir, string(w.p.Proto), w.from, w.to, strconv.Itoa(int(w.p.Port)),
				strconv.Itoa(got[w.key(t)].Count), w.policy}
			if !slices.ContainsFunc(rows[1:], func(row []string) bool { return len(row) == 11 && slices.Equal(row[2:], want) }) {
				t.Errorf("no row %q:\n%s", want, r)
			}
		}
	})

	t.Run("filters", func(t *testing.T) {
		// A drop belongs to the namespace whose policy dropped it: the
		// destination's for ingress, the source's for egress.
		for _, tc := range []struct {
			args []string
			want []int // indexes into flows
		}{
			{[]string{"-n", "x"}, []int{0, 1, 3}},
			{[]string{"-n", "y"}, []int{2}},
			{[]string{"-n", "z"}, nil},
			{[]string{"-A", "--pod", "a"}, []int{0, 2}},
			{[]string{"-n", "x", "--pod", "a"}, []int{0}},
			{[]string{"-A", "--policy", "plugin-drops-egress"}, []int{2}},
			{[]string{"-A", "--policy", deny}, []int{0, 1, 3}},
			{[]string{"-A", "--node", mustPod(t, "x/a").Node}, nodeFlows(t, flows, mustPod(t, "x/a").Node)},
			{[]string{"-A", "--action", "audit"}, nil},
			{[]string{"-n", "x", "--action", "drop", "--pod", "b"}, []int{1, 3}}, // z/b is the source of x/c's
		} {
			d, r := drops(reader, tc.args...)
			got := slices.Sorted(maps.Keys(mine(d)))
			var want []string
			for _, i := range tc.want {
				want = append(want, flows[i].key(t))
			}
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("drops %s: flows %q, want %q\n%s", strings.Join(tc.args, " "), got, want, r)
			}
		}
	})

	t.Run("kubectl get --raw", func(t *testing.T) {
		kubectl := filepath.Join(localcluster.RepoRoot(), "bin", "kubectl")
		cmd := exec.Command(kubectl, "--kubeconfig="+reader, "get", "--raw",
			"/apis/drops.nftguard.io/v1alpha1/namespaces/y/drops?since="+url.QueryEscape(since))
		cmd.Env = pluginEnv()
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("kubectl get --raw: %v\n%s", err, out)
		}
		var d dropsOutput
		if err := json.Unmarshal(out, &d); err != nil {
			t.Fatal(err)
		}
		if got := slices.Collect(maps.Keys(mine(d))); !slices.Equal(got, []string{flows[2].key(t)}) {
			t.Errorf("namespace y through kubectl get --raw: %q, want %q", got, flows[2].key(t))
		}
	})

	t.Run("follow", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, pluginBinary(t), "drops", "-n", "x", "-f", "-o", "json", "--kubeconfig="+reader)
		cmd.Env = pluginEnv()
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		lines := make(chan string, 64)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		want := mustPod(t, "x/a").IPv4.String()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("follow ended")
				}
				var line struct {
					Action   string   `json:"action"`
					Dst      flowEnd  `json:"dst"`
					Policies []string `json:"policies"`
				}
				if err := json.Unmarshal([]byte(l), &line); err != nil {
					t.Fatalf("followed line %q: %v", l, err)
				}
				if line.Dst.IP == want && slices.Contains(line.Policies, deny) {
					return
				}
			case <-tick.C:
				// The watch may start after a probe: probe until one shows.
				probeOne(t, "y/a", "x/a", tcp80)
			case <-ctx.Done():
				t.Fatal("no followed line of a new drop")
			}
		}
	})

	t.Run("permissions", func(t *testing.T) {
		// A reader of namespace x: x's drops only, other namespaces' pod
		// names withheld, and no cluster-wide read.
		xReader := dropsReader(t, "nftguard-e2e-drops-x", "x", []rbacv1.PolicyRule{listDrops})
		d, r := drops(xReader, "-n", "x")
		n := 0
		for _, f := range d.Flows {
			if f.Dst.Namespace != "x" {
				t.Errorf("a reader of x sees %+v", f)
			}
			if slices.Contains(f.Policies, deny) {
				n++
				if f.Src.Pod != "" || f.Src.Namespace == "" {
					t.Errorf("peer not withheld: %+v", f.Src)
				}
			}
		}
		if n != 3 || d.Redacted == 0 {
			t.Errorf("%d flows of x's policy (want 3), %d lines withheld:\n%s", n, d.Redacted, r)
		}
		if r := runPlugin(t, "", xReader, "drops", "-A"); r.code != 1 || !strings.Contains(r.stderr, "at the cluster scope") {
			t.Errorf("a reader of x asking for all namespaces: %s", r)
		}
		if r := runPlugin(t, "", xReader, "drops", "-n", "y"); r.code != 1 || !strings.Contains(r.stderr, `cannot list resource "drops"`) {
			t.Errorf("a reader of x asking for y: %s", r)
		}

		// No grant: refused, nothing shown.
		none := dropsReader(t, "nftguard-e2e-drops-none", "", nil)
		r = runPlugin(t, "", none, "drops", "-n", "x", "--since", since)
		if r.code != 1 || !strings.Contains(r.stderr, "forbidden") || strings.Contains(r.stdout, "x/a") {
			t.Errorf("a token without the permission: %s", r)
		}
		if r := runPlugin(t, "", reader, "drops", "--since", "yesterday"); r.code != 2 {
			t.Errorf("a bad --since: %s", r)
		}
	})

	t.Run("no user token reaches an agent", func(t *testing.T) {
		// Each node's namespace (where its agent runs) listens only on the
		// forwarders to the API server and the drops API and on the agent's
		// metrics and health endpoints: there is no drops port to send a
		// user's token to.
		for _, n := range cl.Nodes() {
			cmd := exec.Command("ss", "-Hltn")
			var out bytes.Buffer
			cmd.Stdout = &out
			if err := localcluster.RunInNetNS(n.NetNS, cmd); err != nil {
				t.Fatalf("ss in %s: %v", n.Name, err)
			}
			var ports []string
			for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				if f := strings.Fields(l); len(f) >= 4 {
					ports = append(ports, f[3])
				}
			}
			slices.Sort(ports)
			want := []string{"127.0.0.1:6443", "127.0.0.1:8443", "127.0.0.1:9090", "127.0.0.1:9091"}
			if !slices.Equal(ports, want) {
				t.Errorf("node %s listens on %v, want %v", n.Name, ports, want)
			}
		}
	})
}

func nodeFlows(t *testing.T, flows []wantFlow, node string) []int {
	var out []int
	for i, f := range flows {
		if f.node(t) == node {
			out = append(out, i)
		}
	}
	return out
}

// nodeTable reads table inet nftguard in a node's network namespace (nil
// when there is none).
func nodeTable(t *testing.T, n localcluster.Node) *model.Table {
	t.Helper()
	f, err := os.Open(filepath.Join("/var/run/netns", n.NetNS))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tbl, err := nftnl.ReadTable(int(f.Fd()))
	if err != nil {
		t.Fatalf("reading the table of %s: %v", n.Name, err)
	}
	return tbl
}

// unmarkUninstall removes the uninstall annotation from every NodeRuleSet,
// as `uninstall --cancel` does, so that a failed test leaves the cluster
// enforcing.
func unmarkUninstall(t *testing.T) {
	ctx := context.Background()
	var rss v1alpha1.NodeRuleSetList
	if err := cl.Client().List(ctx, &rss); err != nil {
		t.Error(err)
		return
	}
	for i := range rss.Items {
		rs := &rss.Items[i]
		if _, ok := rs.Annotations["nftguard.io/uninstall"]; !ok {
			continue
		}
		patch := client.MergeFrom(rs.DeepCopy())
		delete(rs.Annotations, "nftguard.io/uninstall")
		if err := cl.Client().Patch(ctx, rs, patch); err != nil {
			t.Errorf("unmarking %s: %v", rs.Name, err)
		}
	}
}

// TestUninstall: `kubectl nftguard uninstall` removes table inet nftguard
// from every node and nothing is blocked any more; `uninstall --cancel`
// brings enforcement back.
func TestUninstall(t *testing.T) {
	needCluster(t)
	resetPolicies(t)
	t.Cleanup(func() { resetPolicies(t) })
	kc := cl.Kubeconfig()
	create(t, defaultDeny("plugin-uninstall", v1alpha1.ModeEnforce, v1alpha1.PolicyTypeIngress, v1alpha1.PolicyTypeEgress))
	waitConverged(t)
	for _, n := range cl.Nodes() {
		if nodeTable(t, n) == nil {
			t.Fatalf("%s has no table inet nftguard before the uninstall", n.Name)
		}
	}
	if probeOne(t, "y/a", "x/a", tcp80) || probeOne(t, "x/c", "z/b", tcp80) {
		t.Fatal("the DefaultDeny does not isolate the pods before the uninstall")
	}
	t.Cleanup(func() { unmarkUninstall(t) })

	r := mustPlugin(t, "", kc, "uninstall", "--timeout=60s")
	nodes := len(cl.Nodes())
	if !strings.Contains(r.stdout, fmt.Sprintf("Marked %d of %d NodeRuleSets", nodes, nodes)) ||
		!strings.Contains(r.stdout, fmt.Sprintf("Every node (%d) deleted its nftguard table", nodes)) {
		t.Errorf("uninstall output: %s", r)
	}
	for _, n := range cl.Nodes() {
		if tbl := nodeTable(t, n); tbl != nil {
			t.Errorf("%s still has table inet nftguard after the uninstall:\n%s", n.Name, tbl)
		}
	}
	var rss v1alpha1.NodeRuleSetList
	if err := cl.Client().List(context.Background(), &rss); err != nil {
		t.Fatal(err)
	}
	for _, rs := range rss.Items {
		c := meta.FindStatusCondition(rs.Status.Conditions, v1alpha1.ConditionProgrammed)
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != "Uninstalled" {
			t.Errorf("NodeRuleSet %s: Programmed condition %+v; want False, Uninstalled", rs.Name, c)
		}
	}
	st := decodeStatus(t, mustPlugin(t, "", kc, "status", "dd/plugin-uninstall", "-o", "json"))
	if len(st.Policies) != 1 || len(st.Policies[0].Nodes) != nodes || st.Policies[0].State != "Uninstalled" {
		t.Fatalf("status during the uninstall: %+v; want the policy Uninstalled on %d nodes", st, nodes)
	}
	for _, n := range st.Policies[0].Nodes {
		if n.State != "Uninstalled" {
			t.Errorf("status during the uninstall: node %+v; want Uninstalled", n)
		}
	}
	// Nothing filters: every pod reaches every pod (and explain, reading the
	// same rule sets, agrees).
	expect(t, NewReachability(true), tcp80)
	if r := runPlugin(t, "", kc, "explain", "--from", "y/a", "--to", "x/a", "--port", "80"); r.code != 0 || !strings.Contains(r.stdout, "uninstall") {
		t.Errorf("explain during the uninstall: %s", r)
	}

	r = mustPlugin(t, "", kc, "uninstall", "--cancel")
	if !strings.Contains(r.stdout, fmt.Sprintf("Unmarked %d of %d NodeRuleSets", nodes, nodes)) {
		t.Errorf("uninstall --cancel output: %s", r)
	}
	waitConverged(t)
	for _, n := range cl.Nodes() {
		if nodeTable(t, n) == nil {
			t.Errorf("%s has no table inet nftguard after uninstall --cancel", n.Name)
		}
	}
	for _, pair := range [][2]string{{"y/a", "x/a"}, {"x/c", "z/b"}, {"z/a", "z/c"}} {
		if probeOne(t, pair[0], pair[1], tcp80) {
			t.Errorf("%s reaches %s after uninstall --cancel", pair[0], pair[1])
		}
	}
	if r := runPlugin(t, "", kc, "explain", "--from", "y/a", "--to", "x/a", "--port", "80"); r.code != 3 {
		t.Errorf("explain after uninstall --cancel: %s", r)
	}
}

// ruleHandles lists each rule of table inet nftguard in a node as
// "<chain>#<handle>". The kernel numbers rules as they are added, so a table
// rebuilt or flushed and filled again has different handles.
func ruleHandles(t *testing.T, n localcluster.Node) []string {
	t.Helper()
	tbl := nodeTable(t, n)
	if tbl == nil {
		t.Fatalf("%s has no table inet nftguard", n.Name)
	}
	var out []string
	for _, c := range tbl.Chains {
		for _, r := range c.Rules {
			out = append(out, fmt.Sprintf("%s#%d", c.Name, r.Handle()))
		}
	}
	slices.Sort(out)
	return out
}

// agentProgrammed reads the generation the node's running agent has
// programmed, from its metrics on the node's loopback (0 until it has).
func agentProgrammed(node string) (int64, error) {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return cl.DialNode(ctx, node, network, addr)
		},
	}}
	// The harness serves each agent's metrics on 127.0.0.1:9090 of its node.
	resp, err := hc.Get("http://127.0.0.1:9090/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "nftguard_agent_programmed_generation "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int64(f), err
		}
	}
	return 0, sc.Err()
}

// waitAgentProgrammed waits until the node's running agent has programmed
// its NodeRuleSet's current generation.
func waitAgentProgrammed(t *testing.T, node string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := agentProgrammed(node)
		want := ruleSetGenerations(t)[node]
		if err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent of %s has not programmed generation %d (metrics: %d, %v)", node, want, got, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// runningAgent is the record of a node's running agent.
func runningAgent(t *testing.T, node string) localcluster.ProcessRef {
	t.Helper()
	for _, p := range cl.Processes() {
		if p.Role == localcluster.RoleAgent && p.Name == node && p.Alive() {
			return p
		}
	}
	t.Fatalf("no agent runs on %s", node)
	return localcluster.ProcessRef{}
}

// TestUpgradeAdoptsTable: an agent of another build replaces a node's agent
// (SIGTERM, as a DaemonSet rollout does). The new agent adopts the table:
// the kernel keeps the same table and rules, an established connection keeps
// working and a blocked flow stays blocked throughout.
func TestUpgradeAdoptsTable(t *testing.T) {
	needCluster(t)
	isolateXA(t)
	t.Cleanup(func() { resetPolicies(t) })
	const marker = "github.com/nftguard/nftguard/e2e.upgradedBuild=v2"
	newAgent := filepath.Join(binDir, "agent-upgraded")
	if err := goBuild(newAgent, "./cmd/agent", "-ldflags=-X "+marker); err != nil {
		t.Fatal(err)
	}
	echoServer(t, "x/a", 9002)
	conn := dialEcho(t, "x/b", "x/a", 9002)
	nodeName := mustPod(t, "x/a").Node
	node, _ := cl.Node(nodeName)
	waitAgentProgrammed(t, nodeName)
	before := ruleHandles(t, node)
	if len(before) == 0 {
		t.Fatalf("no rules on %s before the upgrade", nodeName)
	}
	t.Logf("table inet nftguard on %s: %d rules", nodeName, len(before))

	tr := startTraffic(t, conn, "y/a", "x/a")
	time.Sleep(500 * time.Millisecond)
	old := stopAgent(t, nodeName, syscall.SIGTERM)
	// Whatever happens, the node ends up running the build it ran before.
	t.Cleanup(func() {
		if p := runningAgent(t, nodeName); p.Args[0] == old.Args[0] {
			return
		}
		if _, err := cl.Kill(localcluster.RoleAgent, nodeName, syscall.SIGTERM); err != nil {
			t.Error(err)
			return
		}
		if err := cl.Restart(context.Background(), old); err != nil {
			t.Error(err)
			return
		}
		waitAgentProgrammed(t, nodeName)
	})
	time.Sleep(time.Second) // no agent on the node: the table stays in force
	upgraded := old
	upgraded.Args = append([]string{newAgent}, old.Args[1:]...)
	if err := cl.Restart(context.Background(), upgraded); err != nil {
		t.Fatal(err)
	}
	waitAgentProgrammed(t, nodeName)
	time.Sleep(time.Second)
	tr.finish(t)

	// The node runs the new build.
	info, err := buildinfo.ReadFile(fmt.Sprintf("/proc/%d/exe", runningAgent(t, nodeName).PID))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(info.Settings, func(s debug.BuildSetting) bool { return s.Key == "-ldflags" && strings.Contains(s.Value, marker) }) {
		t.Errorf("the agent of %s is not the upgraded build: %v", nodeName, info.Settings)
	}
	// The table was adopted: same table, same rules, nothing rewritten.
	after := ruleHandles(t, node)
	if !slices.Equal(after, before) {
		t.Errorf("the table on %s was rebuilt or its rules rewritten: rule handles before %v, after %v", nodeName, before, after)
	}
	if !probeOne(t, "x/b", "x/a", tcp80) || probeOne(t, "y/a", "x/a", tcp80) {
		t.Error("after the upgrade x/a's policy is not enforced as before")
	}
}
