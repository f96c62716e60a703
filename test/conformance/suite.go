package conformance

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/compiler"
	"github.com/nftguard/nftguard/internal/compiler/compilertest"
	"github.com/nftguard/nftguard/internal/explain"
	"github.com/nftguard/nftguard/test/localcluster"
)

// Suite runs the checks on one cluster.
type Suite struct {
	Cluster *localcluster.Cluster
	// Service probes every IPv4 cell through the target's Service
	// ClusterIP, as upstream does (real nodes). IPv6 cells, which have no
	// Service address (the Services are single-stack), probe the pod.
	Service bool
	// Explain also checks, for every IPv4 cell, that explain's verdict from
	// the live rule sets agrees with the probe.
	Explain bool
	// ConvergeTimeout bounds WaitConverged (default 60 s).
	ConvergeTimeout time.Duration
	// ExemptNamespaces is the controller's own namespace, which it exempts
	// from isolation (real nodes, where the controller is a pod).
	ExemptNamespaces []string
}

// Probe describes one matrix: a port and protocol over one IP family.
type Probe struct {
	Port   int32
	Proto  corev1.Protocol
	Family localcluster.Family
}

func (p Probe) String() string { return fmt.Sprintf("%d/%s %s", p.Port, p.Proto, p.Family) }

// The probes of the cases.
var (
	TCP80   = Probe{80, corev1.ProtocolTCP, localcluster.IPv4}
	TCP81   = Probe{81, corev1.ProtocolTCP, localcluster.IPv4}
	UDP80   = Probe{80, corev1.ProtocolUDP, localcluster.IPv4}
	UDP81   = Probe{81, corev1.ProtocolUDP, localcluster.IPv4}
	SCTP80  = Probe{80, corev1.ProtocolSCTP, localcluster.IPv4}
	SCTP81  = Probe{81, corev1.ProtocolSCTP, localcluster.IPv4}
	TCP80v6 = Probe{80, corev1.ProtocolTCP, localcluster.IPv6}
)

// WaitConverged waits until what the agents enforce is exactly what the
// policies in the API compile to: every NodeRuleSet equals the pure
// compiler's output for the current objects and its agent has programmed
// that generation, and every AddressGroup holds the compiled members.
func (s *Suite) WaitConverged(t *testing.T) {
	t.Helper()
	d := s.ConvergeTimeout
	if d == 0 {
		d = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	why := ""
	for {
		var err error
		if why, err = NotConverged(ctx, s.Cluster.Client(), compiler.Options{ExemptNamespaces: s.ExemptNamespaces}); err == nil && why == "" {
			return
		}
		if err != nil {
			why = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the cluster did not converge: %s", why)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// NotConverged says what is not enforced yet as compiled with o, or "".
func NotConverged(ctx context.Context, c client.Client, o compiler.Options) (string, error) {
	snap, err := compilertest.SnapshotFromAPI(ctx, c)
	if err != nil {
		return "", err
	}
	var (
		rss v1alpha1.NodeRuleSetList
		ags v1alpha1.AddressGroupList
	)
	for _, l := range []client.ObjectList{&rss, &ags} {
		if err := c.List(ctx, l); err != nil {
			return "", err
		}
	}
	want := compiler.CompileWith(snap, o)
	have := map[string]*v1alpha1.NodeRuleSet{}
	for i := range rss.Items {
		have[rss.Items[i].Name] = &rss.Items[i]
	}
	for node, spec := range want.NodeRuleSets {
		rs := have[node]
		if rs == nil {
			return "no NodeRuleSet for " + node, nil
		}
		if !equality.Semantic.DeepEqual(rs.Spec, spec) {
			return "NodeRuleSet " + node + " is not the compiled one yet", nil
		}
		cond := meta.FindStatusCondition(rs.Status.Conditions, v1alpha1.ConditionProgrammed)
		if cond == nil || cond.Status != metav1.ConditionTrue || rs.Status.ObservedGeneration != rs.Generation {
			return fmt.Sprintf("NodeRuleSet %s generation %d is not programmed yet", node, rs.Generation), nil
		}
	}
	groups := map[string]v1alpha1.AddressGroupSpec{}
	for _, ag := range ags.Items {
		groups[ag.Name] = ag.Spec
	}
	for name, spec := range want.AddressGroups {
		got, ok := groups[name]
		if !ok || !equality.Semantic.DeepEqual(got, spec) {
			return "AddressGroup " + name + " is not the compiled one yet", nil
		}
	}
	return "", nil
}

// Create creates objects as a user would (kubectl apply).
func (s *Suite) Create(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := s.Cluster.Client().Create(context.Background(), o); err != nil {
			t.Fatalf("creating %T %s: %v", o, o.GetName(), err)
		}
	}
}

// ResetPolicies deletes every NetworkPolicy and DefaultDeny and waits until
// the agents enforce nothing.
func (s *Suite) ResetPolicies(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	c := s.Cluster.Client()
	var nps networkingv1.NetworkPolicyList
	if err := c.List(ctx, &nps); err != nil {
		t.Fatal(err)
	}
	for i := range nps.Items {
		if err := c.Delete(ctx, &nps.Items[i]); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	var dds v1alpha1.DefaultDenyList
	if err := c.List(ctx, &dds); err != nil {
		t.Fatal(err)
	}
	for i := range dds.Items {
		if err := c.Delete(ctx, &dds.Items[i]); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	s.WaitConverged(t)
}

// PodIP is a conformance pod's IPv4 address.
func (s *Suite) PodIP(t *testing.T, key string) string {
	t.Helper()
	p, ok := s.Cluster.Pod(key)
	if !ok || !p.IPv4.IsValid() {
		t.Fatalf("no pod %s", key)
	}
	return p.IPv4.String()
}

// Observe runs the full 9x9 matrix for one probe and returns each cell's
// outcome.
func (s *Suite) Observe(t *testing.T, p Probe) (map[[2]string]localcluster.Outcome, *localcluster.Matrix) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m := s.Cluster.Matrix(ctx, localcluster.MatrixRequest{
		Port: intstr.FromInt32(p.Port), Protocol: p.Proto, Family: p.Family,
		From: AllPods(), To: AllPods(), Parallel: 12,
		Service: s.Service && p.Family == localcluster.IPv4,
	})
	got := map[[2]string]localcluster.Outcome{}
	for i, f := range m.From {
		for j, to := range m.To {
			r := m.Results[i][j]
			if r.Err != nil {
				t.Fatalf("probe %s: %v", r, r.Err)
			}
			got[[2]string{f, to}] = r.Outcome
		}
	}
	return got, m
}

// explainInput reads what `kubectl nftguard explain` reads: the live
// NodeRuleSets and AddressGroups the agents program, and the objects its
// hints look at.
func (s *Suite) explainInput(t *testing.T) explain.Input {
	t.Helper()
	ctx := context.Background()
	c := s.Cluster.Client()
	var (
		rss  v1alpha1.NodeRuleSetList
		ags  v1alpha1.AddressGroupList
		pods corev1.PodList
		nss  corev1.NamespaceList
		nps  networkingv1.NetworkPolicyList
		dds  v1alpha1.DefaultDenyList
	)
	for _, l := range []client.ObjectList{&rss, &ags, &pods, &nss, &nps, &dds} {
		if err := c.List(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	in := explain.Input{RuleSets: rss.Items, Groups: map[string]v1alpha1.AddressGroupSpec{}, Pods: pods.Items,
		Namespaces: nss.Items, NetworkPolicies: nps.Items, DefaultDenies: dds.Items}
	for _, ag := range ags.Items {
		in.Groups[ag.Name] = ag.Spec
	}
	return in
}

// checkExplain asserts that explain's verdict, computed from the live rule
// sets, agrees with the probed reachability of every cell.
func (s *Suite) checkExplain(t *testing.T, p Probe, got map[[2]string]localcluster.Outcome) {
	t.Helper()
	in := s.explainInput(t)
	var wrong []string
	for cell, outcome := range got {
		if cell[0] == cell[1] {
			continue
		}
		// A refusal came from the target: the policies let the packet
		// through (the model check reports the cell on its own).
		reachable := outcome != localcluster.Blocked
		fns, fpod, _ := strings.Cut(cell[0], "/")
		tns, tpod, _ := strings.Cut(cell[1], "/")
		v, err := explain.Explain(in, explain.Query{FromNamespace: fns, FromPod: fpod, ToNamespace: tns, ToPod: tpod,
			Port: p.Port, Protocol: v1alpha1.Protocol(p.Proto)})
		if err != nil {
			t.Fatalf("explain %s -> %s: %v", cell[0], cell[1], err)
		}
		if v.Allowed != reachable {
			wrong = append(wrong, fmt.Sprintf("%s -> %s: explain says allowed=%v (egress: %s; ingress: %s), the probe says reachable=%v",
				cell[0], cell[1], v.Allowed, v.Egress.Reason, v.Ingress.Reason, reachable))
		}
	}
	if len(wrong) > 0 {
		t.Errorf("explain disagrees with the probes on %d cells of %d/%s:\n%s", len(wrong), p.Port, p.Proto, strings.Join(wrong, "\n"))
	}
}

// Expect checks the full matrix for each probe against the model (and
// explain's verdicts, with Suite.Explain).
func (s *Suite) Expect(t *testing.T, r *Reachability, probes ...Probe) {
	t.Helper()
	s.ExpectMatrix(t, r, s.Explain, probes...)
}

// ExpectMatrix is Expect, with explain's check chosen by the caller (it
// reads the API, which a chaos test may have stopped).
func (s *Suite) ExpectMatrix(t *testing.T, r *Reachability, withExplain bool, probes ...Probe) {
	t.Helper()
	for _, p := range probes {
		got, m := s.Observe(t, p)
		if withExplain && p.Family == localcluster.IPv4 {
			s.checkExplain(t, p, got)
		}
		table, wrong := r.Table(got)
		if wrong > 0 {
			var details []string
			for i, f := range m.From {
				for j, to := range m.To {
					if !Agrees(r.Expected(f, to), got[[2]string{f, to}]) {
						details = append(details, m.Results[i][j].String())
					}
				}
			}
			via := "pod addresses"
			if m.Request.Service {
				via = "Service ClusterIPs"
			}
			t.Errorf("port %d/%s %s through %s: %d cells differ from the expectation (* marks them; . connected, X blocked, R refused):\n%s%s",
				p.Port, p.Proto, p.Family, via, wrong, table, strings.Join(details, "\n"))
		}
	}
}
