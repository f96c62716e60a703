package main

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/explain"
)

func newExplain(o *options) *cobra.Command {
	var from, to, toCIDR, port string
	cmd := &cobra.Command{
		Use:   "explain --from NS/POD (--to NS/POD | --to-cidr IP) --port PORT[/PROTO]",
		Short: "Explain whether a connection passes, from the rule sets the agents program",
		Long: `Compute the verdict for a new connection from the live NodeRuleSets and
AddressGroups, the data the agents program: the egress side on the source
pod's node, the ingress side on the destination pod's node. Name the policies
isolating each side and the rule that allows the connection; when it is
denied, the rule that came closest and hints for the usual mistakes.
Replies of allowed connections always pass.

PORT is a number or a container port name of the destination pod; PROTO is
TCP (default), UDP or SCTP. POD may be given without NS/ for the current
namespace. Exit code 0: allowed; 3: denied.`,
		Example: `  kubectl nftguard explain --from shop/web-0 --to backend/api-0 --port 8080
  kubectl nftguard explain --from web-0 --to backend/cache-0 --port redis
  kubectl nftguard explain --from shop/web-0 --to-cidr 203.0.113.10 --port 443 -o json`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.checkOutput(); err != nil {
				return err
			}
			q, err := o.explainQuery(from, to, toCIDR, port)
			if err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			s, err := read(cmd.Context(), c, "", true)
			if err != nil {
				return err
			}
			in := explain.Input{
				RuleSets: s.ruleSets.Items, Groups: map[string]v1alpha1.AddressGroupSpec{},
				Pods: s.pods.Items, Namespaces: s.namespaces.Items, Services: s.services.Items,
				NetworkPolicies: s.nps.Items, DefaultDenies: s.dds.Items,
			}
			for _, g := range s.groups.Items {
				in.Groups[g.Name] = g.Spec
			}
			v, err := explain.Explain(in, q)
			if err != nil {
				return err
			}
			if o.output == "table" {
				writeVerdict(o.streams.Out, v)
			} else if err := o.print(v); err != nil {
				return err
			}
			if !v.Allowed {
				return exitCode(exitDenied)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "Source pod, NAMESPACE/POD or POD.")
	cmd.Flags().StringVar(&to, "to", "", "Destination pod, NAMESPACE/POD or POD.")
	cmd.Flags().StringVar(&toCIDR, "to-cidr", "", "Destination address outside the pods (an IP, or a CIDR whose first address is used).")
	cmd.Flags().StringVar(&port, "port", "", "Destination port: NUMBER[/PROTO] or NAME[/PROTO].")
	return cmd
}

func (o *options) explainQuery(from, to, toCIDR, port string) (explain.Query, error) {
	var q explain.Query
	if from == "" || port == "" || (to == "") == (toCIDR == "") {
		return q, usagef("explain needs --from, --port and one of --to or --to-cidr")
	}
	q.FromNamespace, q.FromPod = o.podRef(from)
	if to != "" {
		q.ToNamespace, q.ToPod = o.podRef(to)
	} else if p, err := netip.ParsePrefix(toCIDR); err == nil {
		q.ToIP = p.Masked().Addr()
	} else if a, err := netip.ParseAddr(toCIDR); err == nil {
		q.ToIP = a
	} else {
		return q, usagef("--to-cidr %q is neither an IP nor a CIDR", toCIDR)
	}
	num, proto, _ := strings.Cut(port, "/")
	switch strings.ToUpper(proto) {
	case "", "TCP":
		q.Protocol = v1alpha1.ProtocolTCP
	case "UDP":
		q.Protocol = v1alpha1.ProtocolUDP
	case "SCTP":
		q.Protocol = v1alpha1.ProtocolSCTP
	default:
		return q, usagef("protocol %q: use TCP, UDP or SCTP", proto)
	}
	if n, err := strconv.Atoi(num); err == nil {
		if n < 1 || n > 65535 {
			return q, usagef("port %d out of range", n)
		}
		q.Port = int32(n)
	} else {
		q.PortName = num
	}
	return q, nil
}

// podRef splits NS/POD; a bare POD is in the current namespace.
func (o *options) podRef(s string) (string, string) {
	if ns, name, ok := strings.Cut(s, "/"); ok {
		return ns, name
	}
	return o.namespace(), s
}

func writeVerdict(w io.Writer, v *explain.Verdict) {
	c := v.Connection
	word := "DENIED"
	switch {
	case v.Audited:
		word = "ALLOWED (audit: logged as a would-be drop)"
	case v.Allowed:
		word = "ALLOWED"
	}
	fmt.Fprintf(w, "%s -> %s %s/%d (%s -> %s): %s\n", c.From, c.To, c.Protocol, c.Port, c.SrcIP, c.DstIP, word)
	side := func(name string, s explain.Side) {
		where := []string{}
		if s.Node != "" {
			where = append(where, "node "+s.Node)
		}
		if s.Pod != "" {
			where = append(where, s.Pod)
		}
		verdict := "passes"
		if !s.Allowed {
			verdict = "DROPPED"
		}
		fmt.Fprintf(w, "  %-8s (%s): %s: %s\n", name, strings.Join(where, ", "), verdict, s.Reason)
		if s.AllowedBy != nil {
			fmt.Fprintf(w, "           rule %s: from/to %s on %s\n", s.AllowedBy.Rule, s.AllowedBy.Peers, orAll(s.AllowedBy.Ports))
		}
		if s.NearestMiss != nil {
			m := s.NearestMiss
			fmt.Fprintf(w, "           nearest miss: rule %s of %s: %s\n", m.Rule, strings.Join(m.Policies, ", "), m.Why)
			fmt.Fprintf(w, "           (it allows %s on %s)\n", m.Peers, orAll(m.Ports))
		}
		for _, n := range s.Notes {
			fmt.Fprintf(w, "           note: %s\n", n)
		}
	}
	side("egress", v.Egress)
	side("ingress", v.Ingress)
	if len(v.Hints) > 0 {
		fmt.Fprintln(w, "Hints:")
		for _, h := range v.Hints {
			fmt.Fprintf(w, "  - %s\n", h)
		}
	}
}

func orAll(s string) string {
	if s == "" {
		return "every port"
	}
	return s
}
