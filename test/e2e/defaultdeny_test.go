package e2e

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/test/localcluster"
)

// conformanceNamespaces selects x, y and z (the namespaces labelled ns=...).
var conformanceNamespaces = v1alpha1.LabelSelector{
	MatchExpressions: []v1alpha1.LabelSelectorRequirement{{Key: "ns", Operator: metav1.LabelSelectorOpExists}},
}

func defaultDeny(name string, mode v1alpha1.DefaultDenyMode, types ...v1alpha1.PolicyType) *v1alpha1.DefaultDeny {
	return &v1alpha1.DefaultDeny{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1alpha1.DefaultDenySpec{NamespaceSelector: conformanceNamespaces, PolicyTypes: types, Mode: mode},
	}
}

// probeOne runs one probe and reports whether it connected; false means it
// got no answer (blocked). It fails the test on a harness error and on a
// refusal: every pod serves the probed ports, so a refusal is a dead
// listener, which must not pass for a denied connection.
func probeOne(t *testing.T, from, to string, p probe) bool {
	t.Helper()
	r := cl.ProbeWith(context.Background(), localcluster.ProbeRequest{
		From: from, To: to, Port: intstr.FromInt32(p.Port), Protocol: p.Proto, Family: p.Family,
	})
	if r.Err != nil {
		t.Fatalf("probe %s", r)
	}
	if r.Outcome == localcluster.Refused {
		t.Fatalf("probe %s: refused, so neither connected nor blocked", r)
	}
	return r.Reachable()
}

func TestDefaultDeny(t *testing.T) {
	needCluster(t)
	t.Run("cluster-wide deny with NetworkPolicy allowances", func(t *testing.T) {
		resetPolicies(t)
		create(t,
			defaultDeny("conformance", v1alpha1.ModeEnforce, v1alpha1.PolicyTypeIngress, v1alpha1.PolicyTypeEgress),
			allowIngress(policy("x", "a-from-y", labels("pod", "a")), nil, nsPeer(labels("ns", "y"))),
			allowEgress(policy("y", "to-x-a", nil, egress), nil, networkingv1.NetworkPolicyPeer{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: labels("ns", "x")},
				PodSelector:       &metav1.LabelSelector{MatchLabels: labels("pod", "a")},
			}),
		)
		waitConverged(t)
		r := NewReachability(false).Set("y/*", "x/a", true)
		expect(t, r, tcp80, udp81, tcp80v6)
	})

	t.Run("baseline DNS stays allowed", func(t *testing.T) {
		resetPolicies(t)
		dd := defaultDeny("with-dns", v1alpha1.ModeEnforce, v1alpha1.PolicyTypeEgress)
		dd.Spec.AllowedEgress = []v1alpha1.EgressRule{{
			To: []v1alpha1.NetworkPolicyPeer{{
				NamespaceSelector: &v1alpha1.LabelSelector{MatchLabels: v1alpha1.MatchLabels(labels("kubernetes.io/metadata.name", "kube-system"))},
				PodSelector:       &v1alpha1.LabelSelector{MatchLabels: v1alpha1.MatchLabels(labels("k8s-app", "kube-dns"))},
			}},
			Ports: []v1alpha1.NetworkPolicyPort{{Protocol: ptr.To(v1alpha1.ProtocolUDP), Port: ptr.To(intstr.FromInt32(53))}},
		}}
		create(t, dd)
		waitConverged(t)
		for _, from := range allPods() {
			if !probeOne(t, from, "kube-system/dns", probe{Port: 53, Proto: corev1.ProtocolUDP, Family: localcluster.IPv4}) {
				t.Errorf("%s cannot reach DNS over UDP", from)
			}
			if probeOne(t, from, "kube-system/dns", probe{Port: 53, Proto: corev1.ProtocolTCP, Family: localcluster.IPv4}) {
				t.Errorf("%s reaches DNS over TCP, which the DefaultDeny does not allow", from)
			}
		}
		expect(t, NewReachability(false), tcp80)
	})

	t.Run("Audit mode drops nothing and logs what Enforce would drop", func(t *testing.T) {
		resetPolicies(t)
		create(t, defaultDeny("audit-ingress", v1alpha1.ModeAudit, v1alpha1.PolicyTypeIngress))
		waitConverged(t)
		mark := markAudit()
		expect(t, NewReachability(true), tcp80)
		// Every cross-pod probe above was an audit event on the destination's node.
		for _, pair := range [][2]string{{"y/b", "x/a"}, {"x/c", "z/b"}} {
			line := waitLine(t, mark, pair[0], pair[1], tcp80)
			if line.Action != "audit" || !slices.Equal(line.Policies, []string{"DefaultDeny/audit-ingress"}) {
				t.Errorf("%s -> %s: line %+v, want action audit by DefaultDeny/audit-ingress", pair[0], pair[1], line)
			}
		}
	})

	t.Run("Audit mode never weakens a NetworkPolicy", func(t *testing.T) {
		resetPolicies(t)
		create(t,
			defaultDeny("audit-ingress", v1alpha1.ModeAudit, v1alpha1.PolicyTypeIngress),
			policy("x", "deny-ingress", nil, ingress),
		)
		waitConverged(t)
		expect(t, NewReachability(true).Set("*/*", "x/*", false), tcp80)
	})
}

// logLine is a drop-log line (docs/audit-log.md).
type logLine struct {
	Node      string `json:"node"`
	Action    string `json:"action"`
	Direction string `json:"direction"`
	Protocol  string `json:"protocol"`
	Src       struct {
		IP        string `json:"ip"`
		Namespace string `json:"namespace"`
		Pod       string `json:"pod"`
	} `json:"src"`
	Dst struct {
		IP        string `json:"ip"`
		Port      int    `json:"port"`
		Namespace string `json:"namespace"`
		Pod       string `json:"pod"`
	} `json:"dst"`
	Policies []string `json:"policies"`
	Count    int      `json:"count"`
}

// auditMark is a position in the drop logs and the time it was taken. Lines
// are written when their fold window closes, so lines about packets of an
// earlier scenario can follow the position: the time tells them apart.
type auditMark struct {
	logs localcluster.AuditMark
	at   time.Time
}

func markAudit() auditMark { return auditMark{cl.MarkAuditLogs(), time.Now()} }

// waitLine waits for the drop-log line of a probe from one pod to another,
// about packets read after the mark.
func waitLine(t *testing.T, mark auditMark, from, to string, p probe) logLine {
	t.Helper()
	src, _ := cl.Pod(from)
	dst, _ := cl.Pod(to)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	flow := localcluster.MatchFlow(src.IP(p.Family), dst.IP(p.Family), uint16(p.Port), p.Proto)
	lines := cl.WaitAuditLines(ctx, mark.logs, func(line string) bool {
		var l struct {
			Time time.Time `json:"time"`
		}
		return flow(line) && json.Unmarshal([]byte(line), &l) == nil && !l.Time.Before(mark.at)
	})
	if len(lines) == 0 {
		t.Fatalf("no drop-log line for %s -> %s %d/%s", from, to, p.Port, p.Proto)
	}
	var l logLine
	if err := json.Unmarshal([]byte(lines[0].Line), &l); err != nil {
		t.Fatalf("drop-log line %q: %v", lines[0].Line, err)
	}
	return l
}

// TestDropLogAttribution checks the drop log for every denied cell of one
// scenario (pods named when on the logging node, addresses otherwise): ingress to x isolated by a NetworkPolicy and a DefaultDeny,
// egress of y/c isolated by a NetworkPolicy alone.
func TestDropLogAttribution(t *testing.T) {
	needCluster(t)
	resetPolicies(t)
	create(t,
		defaultDeny("x-ingress", v1alpha1.ModeEnforce, v1alpha1.PolicyTypeIngress),
		policy("x", "deny-ingress", nil, ingress),
		allowIngress(policy("y", "allow-all", nil), nil, networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{}}),
		allowIngress(policy("z", "allow-all", nil), nil, networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{}}),
		policy("y", "c-no-egress", labels("pod", "c"), egress),
	)
	// The DefaultDeny isolates x, y and z; y and z allow all ingress back.
	waitConverged(t)
	mark := markAudit()
	r := NewReachability(true).Set("*/*", "x/*", false).Set("y/c", "*/*", false)
	expect(t, r, tcp80)

	for _, pair := range r.Denied() {
		from, to := pair[0], pair[1]
		line := waitLine(t, mark, from, to, tcp80)
		src, _ := cl.Pod(from)
		dst, _ := cl.Pod(to)
		wantDir, wantPolicies, wantNode := audit.Ingress, []string{"DefaultDeny/x-ingress", "NetworkPolicy/x/deny-ingress"}, dst.Node
		if from == "y/c" {
			// Dropped on the way out, on the source's node, by its egress isolation.
			wantDir, wantPolicies, wantNode = audit.Egress, []string{"NetworkPolicy/y/c-no-egress"}, src.Node
		}
		// The agent names its own node's pods (from its rule set); a peer
		// on another node is an address in the file, named by the drops API.
		wantSrc, wantDst := from, to
		if src.Node != wantNode {
			wantSrc = "/"
		}
		if dst.Node != wantNode {
			wantDst = "/"
		}
		if line.Action != "drop" || line.Direction != string(wantDir) || line.Protocol != "TCP" || line.Node != wantNode ||
			line.Src.Namespace+"/"+line.Src.Pod != wantSrc || line.Dst.Namespace+"/"+line.Dst.Pod != wantDst || line.Dst.Port != 80 ||
			line.Src.IP != src.IPv4.String() || line.Dst.IP != dst.IPv4.String() ||
			!slices.Equal(line.Policies, wantPolicies) || line.Count < 1 {
			t.Errorf("%s -> %s: drop-log line %+v; want a %s drop on %s naming %s and %s and %v", from, to, line, wantDir, wantNode, wantSrc, wantDst, wantPolicies)
		}
	}
}
