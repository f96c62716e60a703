package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"

	"github.com/nftguard/nftguard/internal/audit"
)

// dropsPath is the agent's drops endpoint (agent.DropsPath).
const dropsPath = "/drops"

// DropsReport is what drops prints: the merged summary and the nodes that
// did not answer.
type DropsReport struct {
	audit.Summary
	Errors map[string]string `json:"errors,omitempty"`
}

func newDrops(o *options) *cobra.Command {
	var pod, policy, action, since string
	var nodes []string
	var port int
	var caFile string
	var insecure bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "drops [--namespace NS] [--pod POD] [--policy NAME] [--since 1h]",
		Short: "Show recent drops from every node, grouped by flow",
		Long: `Ask every node's agent for the drops it logged recently, merge the answers and
group them by flow (node, action, direction, protocol, source, destination and
port, policies) with counts.

The agents serve the drops over HTTPS on --agent-port and authenticate the
caller with the bearer token of your kubeconfig (TokenReview), then check
that you may "get" the subresource "noderulesets/drops" of each node
(SubjectAccessReview). Credentials without a bearer token (client
certificates) are not accepted by the agents: use a token, for example from
'kubectl create token'. Listing nodes needs "list nodes".

--namespace filters by the source or destination namespace only when given.
Agents keep a bounded number of recent lines; when a node no longer holds the
whole window the output says so.`,
		Example: `  kubectl nftguard drops --since 1h
  kubectl nftguard drops -n shop --pod web-0
  kubectl nftguard drops --policy shop-baseline -o json`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.checkOutput(); err != nil {
				return err
			}
			q := url.Values{}
			if cmd.Flags().Changed("namespace") {
				q.Set("namespace", o.namespace())
			}
			for k, v := range map[string]string{"pod": pod, "policy": policy, "action": action, "since": since} {
				if v != "" {
					q.Set(k, v)
				}
			}
			if since != "" {
				if _, err := time.ParseDuration(since); err != nil {
					if _, err := time.Parse(time.RFC3339, since); err != nil {
						return usagef("--since %q is neither a duration (1h) nor an RFC 3339 time", since)
					}
				}
			}
			if action != "" && action != "drop" && action != "audit" {
				return usagef("--action %q: use drop or audit", action)
			}
			cfg, err := o.config()
			if err != nil {
				return err
			}
			httpc, err := agentClient(cfg, caFile, insecure, timeout)
			if err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			var nl corev1.NodeList
			if err := c.List(cmd.Context(), &nl); err != nil {
				return fmt.Errorf("listing nodes: %w", err)
			}
			report := queryAgents(cmd.Context(), httpc, nl.Items, nodes, port, q)
			if len(report.Nodes) == 0 && len(report.Errors) > 0 {
				o.writeDropErrors(report)
				return errors.New("no node answered")
			}
			if o.output != "table" {
				return o.print(report)
			}
			writeDrops(o.streams.Out, report)
			o.writeDropErrors(report)
			return nil
		},
	}
	cmd.Flags().StringVar(&pod, "pod", "", "Only flows whose source or destination pod has this name.")
	cmd.Flags().StringVar(&policy, "policy", "", `Only flows attributed to this policy ("NetworkPolicy/ns/name", "DefaultDeny/name" or just the name).`)
	cmd.Flags().StringVar(&action, "action", "", "Only drop or only audit lines.")
	cmd.Flags().StringVar(&since, "since", "1h", "Only lines newer than this duration (or RFC 3339 time).")
	cmd.Flags().StringSliceVar(&nodes, "node", nil, "Only these nodes.")
	cmd.Flags().IntVar(&port, "agent-port", 9092, "Port of the agents' drops endpoint (--drops-bind-address).")
	cmd.Flags().StringVar(&caFile, "agent-ca-file", "", "CA bundle that signed the agents' drops endpoint certificates (--drops-cert-dir).")
	cmd.Flags().BoolVar(&insecure, "insecure-skip-agent-tls-verify", false,
		"Do not verify the agents' certificates (needed for their self-signed default; your token is then sent to whatever answers at the node's address).")
	cmd.Flags().DurationVar(&timeout, "agent-timeout", 10*time.Second, "Time to wait for each agent.")
	return cmd
}

// agentClient is an HTTP client that presents the kubeconfig's credentials
// (bearer token, token file or exec plugin) to the agents.
func agentClient(cfg *rest.Config, caFile string, insecure bool, timeout time.Duration) (*http.Client, error) {
	if cfg.BearerToken == "" && cfg.BearerTokenFile == "" && cfg.ExecProvider == nil && cfg.AuthProvider == nil {
		return nil, errors.New("your credentials carry no bearer token, which the agents need to authenticate you " +
			"(TokenReview): use a kubeconfig user with a token, e.g. from 'kubectl create token'")
	}
	c := rest.CopyConfig(cfg)
	c.TLSClientConfig = rest.TLSClientConfig{Insecure: insecure && caFile == "", CAFile: caFile}
	rt, err := rest.TransportFor(c)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: rt, Timeout: timeout}, nil
}

// queryAgents asks each node's agent, a few at a time.
func queryAgents(ctx context.Context, httpc *http.Client, nodes []corev1.Node, only []string, port int, q url.Values) DropsReport {
	report := DropsReport{Errors: map[string]string{}}
	var mu sync.Mutex
	var parts []audit.Summary
	var wg sync.WaitGroup
	slots := make(chan struct{}, 8)
	for _, n := range nodes {
		if len(only) > 0 && !slices.Contains(only, n.Name) {
			continue
		}
		addr := nodeAddress(&n)
		if addr == "" {
			report.Errors[n.Name] = "the node has no address"
			continue
		}
		wg.Add(1)
		go func(name, addr string) {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			s, err := queryAgent(ctx, httpc, "https://"+net.JoinHostPort(addr, strconv.Itoa(port))+dropsPath+"?"+q.Encode())
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				report.Errors[name] = err.Error()
				return
			}
			parts = append(parts, s)
		}(n.Name, addr)
	}
	wg.Wait()
	report.Summary = audit.Merge(parts...)
	if report.Flows == nil {
		report.Flows = []audit.Flow{}
	}
	if len(report.Errors) == 0 {
		report.Errors = nil
	}
	return report
}

func queryAgent(ctx context.Context, httpc *http.Client, u string) (audit.Summary, error) {
	var s audit.Summary
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return s, err
	}
	resp, err := httpc.Do(req)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return s, err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(body, &e)
		return s, fmt.Errorf("%s: %s", resp.Status, e.Error)
	}
	return s, json.Unmarshal(body, &s)
}

// nodeAddress prefers the InternalIP, as the agents run in the host network.
func nodeAddress(n *corev1.Node) string {
	for _, t := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP, corev1.NodeHostName} {
		for _, a := range n.Status.Addresses {
			if a.Type == t && a.Address != "" {
				return a.Address
			}
		}
	}
	return ""
}

func endName(e audit.FlowEnd) string {
	if e.Pod != "" {
		return e.Namespace + "/" + e.Pod
	}
	return e.IP
}

func writeDrops(w io.Writer, r DropsReport) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LAST\tNODE\tACTION\tDIRECTION\tPROTO\tSOURCE\tDESTINATION\tPORT\tCOUNT\tPOLICIES")
	for _, f := range r.Flows {
		port := "-"
		if f.Dst.Port != 0 {
			port = strconv.Itoa(int(f.Dst.Port))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", f.Last.Local().Format(time.DateTime), f.Node, f.Action,
			f.Direction, f.Protocol, endName(f.Src), endName(f.Dst), port, f.Count, strings.Join(f.Policies, ","))
	}
	_ = tw.Flush()
	if len(r.Flows) == 0 {
		fmt.Fprintln(w, "No drops.")
	}
	if len(r.Lost) > 0 {
		var parts []string
		for reason, n := range r.Lost {
			parts = append(parts, fmt.Sprintf("%s=%d", reason, n))
		}
		slices.Sort(parts)
		fmt.Fprintf(w, "Not every packet was logged (%s): counts are lower bounds.\n", strings.Join(parts, ", "))
	}
	if r.Truncated {
		fmt.Fprintf(w, "Some nodes hold lines only since %s: older drops of the window are not shown (see the agents' drop log files).\n",
			r.Oldest.Local().Format(time.DateTime))
	}
}

func (o *options) writeDropErrors(r DropsReport) {
	names := make([]string, 0, len(r.Errors))
	for n := range r.Errors {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(o.streams.ErrOut, "warning: node %s: %s\n", n, r.Errors[n])
	}
}
