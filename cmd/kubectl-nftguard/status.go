package main

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/dropsapi/wire"
)

// PolicyStatus is where one policy is enforced.
type PolicyStatus struct {
	// Policy is "NetworkPolicy/<namespace>/<name>" or "DefaultDeny/<name>".
	Policy     string `json:"policy"`
	Mode       string `json:"mode"`
	Generation int64  `json:"generation"`
	// Pods are the pods it isolates, with the directions.
	Pods []PodIsolation `json:"pods"`
	// Nodes are the nodes hosting those pods and how far their agent is.
	Nodes []NodeProgress `json:"nodes"`
	// Enforced is programmed/needed nodes.
	Enforced string `json:"enforced"`
	// State sums it up (v1alpha1.PolicyState): Enforced, Programming,
	// Failed, Uninstalled, TooLarge, NoSelectedPods.
	State   string `json:"state"`
	Message string `json:"message,omitempty"`
	// Drops counts the packets its isolation dropped (in Audit mode: would
	// have dropped), in the namespace shown (all with -A), since the drops
	// API's replica started; absent when the drops API cannot be read.
	Drops *uint64 `json:"drops,omitempty"`
}

// PodIsolation is a pod a policy isolates.
type PodIsolation struct {
	Namespace  string   `json:"namespace"`
	Name       string   `json:"name"`
	Node       string   `json:"node"`
	Directions []string `json:"directions"`
}

// NodeProgress is one node's agent's report on its rule set.
type NodeProgress struct {
	Node string `json:"node"`
	// State is Programmed, Pending, Failed, Uninstalled or TooLarge
	// (v1alpha1.NodeState).
	State string `json:"state"`
	// Generation is the rule set's generation; ProgrammedGeneration the one
	// the agent last programmed.
	Generation           int64  `json:"generation"`
	ProgrammedGeneration int64  `json:"programmedGeneration"`
	Message              string `json:"message,omitempty"`
}

func newStatus(o *options) *cobra.Command {
	var watch, all bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "status [NETWORKPOLICY | dd/NAME]",
		Short: "Show, per policy, the pods it isolates and the nodes that programmed it",
		Long: `Show, for each NetworkPolicy of the namespace (or all namespaces with -A) and each
DefaultDeny, the pods it isolates, the nodes that need it, which of them have
programmed it at which generation, and which failed with what message.
The data comes from the NodeRuleSets the agents report on. DROPS counts the
packets each policy's isolation dropped (for an Audit DefaultDeny: would have
dropped) in the namespace (all of them with -A), from the drops API; "-" when
you may not list its dropcounts or it is not available.`,
		Example: `  kubectl nftguard status
  kubectl nftguard status -n shop api
  kubectl nftguard status dd/shop-baseline -o json
  kubectl nftguard status -A --watch`,
		Args: args(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if err := o.checkOutput(); err != nil {
				return err
			}
			var name string
			if len(a) == 1 {
				name = a[0]
			}
			want, err := o.policyKey(name)
			if err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			ns := o.namespace()
			if all {
				ns = ""
			}
			var last []byte
			for {
				s, err := read(cmd.Context(), c, ns, false)
				if err != nil {
					return err
				}
				sts := statuses(s, want)
				if want != "" && len(sts) == 0 {
					return fmt.Errorf("%s not found", want)
				}
				o.addDrops(cmd.Context(), ns, sts)
				var buf bytes.Buffer
				if err := o.writeStatus(&buf, sts, want != ""); err != nil {
					return err
				}
				if !bytes.Equal(buf.Bytes(), last) {
					if watch && last != nil && o.output == "table" {
						fmt.Fprintf(o.streams.Out, "\n--- %s\n", time.Now().Format(time.TimeOnly))
					}
					if _, err := o.streams.Out.Write(buf.Bytes()); err != nil {
						return err
					}
					last = buf.Bytes()
				}
				if !watch {
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(interval):
				}
			}
		},
	}
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "Keep watching and print again when something changes.")
	cmd.Flags().DurationVar(&interval, "watch-interval", 2*time.Second, "How often --watch reads the state.")
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "NetworkPolicies of every namespace.")
	return cmd
}

// policyKey turns NAME, networkpolicy/NAME, dd/NAME or defaultdeny/NAME into
// a policy key; empty stays empty (every policy).
func (o *options) policyKey(arg string) (string, error) {
	if arg == "" {
		return "", nil
	}
	kind, name, ok := strings.Cut(arg, "/")
	if !ok {
		kind, name = "networkpolicy", arg
	}
	if name == "" {
		return "", usagef("%q names no policy", arg)
	}
	switch strings.ToLower(kind) {
	case "dd", "defaultdeny", "defaultdenies", "defaultdeny.nftguard.io":
		return v1alpha1.DefaultDenyKey(name), nil
	case "networkpolicy", "networkpolicies", "netpol", "networkpolicy.networking.k8s.io":
		return v1alpha1.NetworkPolicyKey(o.namespace(), name), nil
	}
	return "", usagef("%q is neither a NetworkPolicy nor dd/NAME", arg)
}

// statuses computes every policy's status (or only want's).
func statuses(s *snapshot, want string) []PolicyStatus {
	type acc struct {
		pods  []PodIsolation
		nodes map[string]bool
	}
	by := map[string]*acc{}
	node := map[string]*v1alpha1.NodeRuleSet{}
	for i := range s.ruleSets.Items {
		rs := &s.ruleSets.Items[i]
		node[rs.Name] = rs
		for _, p := range rs.Spec.Pods {
			dirs := map[string][]string{}
			if p.Ingress != nil {
				for _, pol := range p.Ingress.Policies {
					dirs[pol] = append(dirs[pol], "Ingress")
				}
			}
			if p.Egress != nil {
				for _, pol := range p.Egress.Policies {
					dirs[pol] = append(dirs[pol], "Egress")
				}
			}
			for pol, d := range dirs {
				a := by[pol]
				if a == nil {
					a = &acc{nodes: map[string]bool{}}
					by[pol] = a
				}
				a.pods = append(a.pods, PodIsolation{Namespace: p.Namespace, Name: p.Name, Node: rs.Name, Directions: d})
				a.nodes[rs.Name] = true
			}
		}
	}
	var out []PolicyStatus
	add := func(key, mode string, gen int64, dd *v1alpha1.DefaultDeny) {
		if want != "" && key != want {
			return
		}
		st := PolicyStatus{Policy: key, Mode: mode, Generation: gen, Pods: []PodIsolation{}, Nodes: []NodeProgress{}}
		if a := by[key]; a != nil {
			st.Pods = a.pods
			slices.SortFunc(st.Pods, func(x, y PodIsolation) int {
				return cmp.Or(cmp.Compare(x.Namespace, y.Namespace), cmp.Compare(x.Name, y.Name))
			})
			for n := range a.nodes {
				st.Nodes = append(st.Nodes, progress(node[n], key))
			}
			slices.SortFunc(st.Nodes, func(x, y NodeProgress) int { return cmp.Compare(x.Node, y.Node) })
		}
		summarize(&st)
		if dd != nil {
			if c := meta.FindStatusCondition(dd.Status.Conditions, v1alpha1.ConditionEnforced); c != nil && c.Status != metav1.ConditionTrue && st.Message == "" {
				st.Message = c.Message
			}
		}
		out = append(out, st)
	}
	for i := range s.dds.Items {
		dd := &s.dds.Items[i]
		add(v1alpha1.DefaultDenyKey(dd.Name), string(cmp.Or(dd.Spec.Mode, v1alpha1.ModeEnforce)), dd.Generation, dd)
	}
	for _, np := range s.nps.Items {
		add(v1alpha1.NetworkPolicyKey(np.Namespace, np.Name), "Enforce", np.Generation, nil)
	}
	slices.SortFunc(out, func(a, b PolicyStatus) int { return cmp.Compare(a.Policy, b.Policy) })
	return out
}

// progress is the node's progress with the rule set it holds, for one
// policy, as the controller reports it (v1alpha1.NodeProgressOf).
func progress(rs *v1alpha1.NodeRuleSet, policy string) NodeProgress {
	pr := v1alpha1.NodeProgressOf(rs, rs.Generation, policy)
	p := NodeProgress{Node: rs.Name, State: string(pr.State), Generation: rs.Generation, ProgrammedGeneration: rs.Status.ObservedGeneration}
	switch pr.State {
	case v1alpha1.NodeProgrammed:
	case v1alpha1.NodeFailed:
		p.Message = pr.Reason + ": " + pr.Message
	default:
		p.Message = pr.Message
	}
	return p
}

// summarize sums up the nodes' progress as the controller's status does
// (v1alpha1.SummarizeProgress).
func summarize(st *PolicyStatus) {
	byNode := make(map[string]NodeProgress, len(st.Nodes))
	names := make([]string, 0, len(st.Nodes))
	for _, n := range st.Nodes {
		byNode[n.Node] = n
		names = append(names, n.Node)
	}
	p := v1alpha1.SummarizeProgress(names, func(n string) v1alpha1.Progress {
		return v1alpha1.Progress{State: v1alpha1.NodeState(byNode[n].State)}
	})
	detail := func(nodes []string) string {
		var out []string
		for _, n := range nodes {
			out = append(out, n+": "+byNode[n].Message)
		}
		return strings.Join(out, "; ")
	}
	st.Enforced = fmt.Sprintf("%d/%d", p.Enforced, p.Desired)
	st.State = string(p.State)
	switch p.State {
	case v1alpha1.PolicyNoSelectedPods:
		st.Message = "isolates no pod (no scheduled pod with an IP matches)"
	case v1alpha1.PolicyTooLarge:
		st.Message = "not enforced: " + detail(p.TooLarge)
	case v1alpha1.PolicyFailed:
		st.Message = detail(p.Failed)
	case v1alpha1.PolicyUninstalled:
		st.Message = "not enforced: uninstalled on " + strings.Join(p.Uninstalled, ", ")
	case v1alpha1.PolicyProgramming:
		st.Message = "waiting for " + strings.Join(p.Pending, ", ")
	}
}

func (o *options) writeStatus(w io.Writer, sts []PolicyStatus, detail bool) error {
	if o.output != "table" {
		return o.print(map[string]any{"policies": sts})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POLICY\tMODE\tPODS\tNODES\tENFORCED\tDROPS\tSTATE\tMESSAGE")
	for _, st := range sts {
		drops := "-"
		if st.Drops != nil {
			drops = strconv.FormatUint(*st.Drops, 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", st.Policy, st.Mode, len(st.Pods), len(st.Nodes), st.Enforced, drops, st.State, st.Message)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if !detail {
		return nil
	}
	for _, st := range sts {
		fmt.Fprintf(w, "\nPods isolated by %s:\n", st.Policy)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  POD\tNODE\tDIRECTIONS")
		for _, p := range st.Pods {
			fmt.Fprintf(tw, "  %s/%s\t%s\t%s\n", p.Namespace, p.Name, p.Node, strings.Join(p.Directions, ","))
		}
		_ = tw.Flush()
		fmt.Fprintln(w, "\nNodes:")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  NODE\tSTATE\tGENERATION\tPROGRAMMED\tMESSAGE")
		for _, n := range st.Nodes {
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%s\n", n.Node, n.State, n.Generation, n.ProgrammedGeneration, n.Message)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// addDrops fills in each policy's drops from the drops API's dropcounts in
// namespace ("" for all). Without them (not allowed, not installed) the
// statuses stay without counts: status does not need the drops API.
func (o *options) addDrops(ctx context.Context, namespace string, sts []PolicyStatus) {
	cfg, err := o.config()
	if err != nil {
		return
	}
	path := "/apis/" + wire.GroupVersion + "/" + wire.ResourceDropCounts
	if namespace != "" {
		path = "/apis/" + wire.GroupVersion + "/namespaces/" + namespace + "/" + wire.ResourceDropCounts
	}
	var list wire.DropCountList
	if err := getJSON(ctx, cfg, path, nil, &list); err != nil {
		return
	}
	for i := range sts {
		action := audit.ActionDrop
		if sts[i].Mode == string(v1alpha1.ModeAudit) {
			action = audit.ActionAudit
		}
		var n uint64
		for _, c := range list.Items {
			if c.Policy == sts[i].Policy && c.Action == action {
				n += c.Packets
			}
		}
		sts[i].Drops = &n
	}
}
