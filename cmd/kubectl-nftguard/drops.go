package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/dropsapi/wire"
)

func newDrops(o *options) *cobra.Command {
	var pod, policy, action, since, node string
	var all, follow bool
	cmd := &cobra.Command{
		Use:   "drops [-n NS | -A] [--pod POD] [--policy NAME] [--since 1h] [-f]",
		Short: "Show recent drops, grouped by flow, from the drops API",
		Long: `Read the drops of a namespace's policies (or, with -A, of all namespaces)
from the drops API, drops.nftguard.io, which the Kubernetes API server
serves for nftguard: it works wherever the API server is reachable, with the
credentials of your kubeconfig, and your credentials reach no node.

A drop belongs to the namespace whose policy dropped it (the namespace of the
pod whose isolation logged it). Reading a namespace's drops needs "list" on
drops.drops.nftguard.io there (the built-in view role grants it); -A needs it
cluster-wide, and only it shows the records the nodes could not log. The other
side's pod name is shown only if you may list pods in its namespace.

The drops API holds a bounded number of recent lines per node; when a node no
longer holds the whole window the output says so (the nodes' drop log files
hold more). With --follow, new lines are printed as they arrive, one per line.`,
		Example: `  kubectl nftguard drops -n shop --since 1h
  kubectl nftguard drops -n shop --pod web-0 -f
  kubectl nftguard drops -A --policy shop-baseline -o json
  kubectl get --raw '/apis/drops.nftguard.io/v1alpha1/namespaces/shop/drops?since=10m'`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.checkOutput(); err != nil {
				return err
			}
			q := url.Values{}
			for k, v := range map[string]string{"pod": pod, "policy": policy, "action": action, "node": node} {
				if v != "" {
					q.Set(k, v)
				}
			}
			if since != "" && !follow {
				if _, err := time.ParseDuration(since); err != nil {
					if _, err := time.Parse(time.RFC3339, since); err != nil {
						return usagef("--since %q is neither a duration (1h) nor an RFC 3339 time", since)
					}
				}
				q.Set("since", since)
			}
			if action != "" && action != "drop" && action != "audit" {
				return usagef("--action %q: use drop or audit", action)
			}
			path := "/apis/" + wire.GroupVersion + "/" + wire.ResourceDrops
			if !all {
				path = "/apis/" + wire.GroupVersion + "/namespaces/" + o.namespace() + "/" + wire.ResourceDrops
			}
			cfg, err := o.config()
			if err != nil {
				return err
			}
			if follow {
				q.Set("watch", "true")
				return o.followDrops(cmd.Context(), cfg, path, q)
			}
			var list wire.DropList
			if err := getJSON(cmd.Context(), cfg, path, q, &list); err != nil {
				return err
			}
			if o.output != "table" {
				return o.print(&list)
			}
			writeDrops(o.streams.Out, &list)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "The drops of every namespace's policies (needs list on drops cluster-wide).")
	cmd.Flags().StringVar(&pod, "pod", "", "Only flows whose source or destination pod has this name.")
	cmd.Flags().StringVar(&policy, "policy", "", `Only flows attributed to this policy ("NetworkPolicy/ns/name", "DefaultDeny/name" or just the name).`)
	cmd.Flags().StringVar(&action, "action", "", "Only drop or only audit lines.")
	cmd.Flags().StringVar(&since, "since", "1h", "Only lines newer than this duration (or RFC 3339 time).")
	cmd.Flags().StringVar(&node, "node", "", "Only lines of this node.")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "Print new lines as they arrive, until interrupted.")
	return cmd
}

// apiClient is an HTTP client with the kubeconfig's credentials, for the
// API server.
func apiClient(cfg *rest.Config) (*http.Client, error) {
	return rest.HTTPClientFor(cfg)
}

// apiError turns an error answer of the API server into its message.
func apiError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var st metav1.Status
	if json.Unmarshal(body, &st) == nil && st.Message != "" {
		if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusServiceUnavailable {
			return fmt.Errorf("%s (is the drops API installed and its APIService %s available?)", st.Message, wire.APIServiceName)
		}
		return errors.New(st.Message)
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		return fmt.Errorf("%s: the drops API is not available (kubectl get apiservice %s)", resp.Status, wire.APIServiceName)
	}
	return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
}

func apiRequest(ctx context.Context, cfg *rest.Config, path string, q url.Values) (*http.Response, error) {
	c, err := apiClient(cfg)
	if err != nil {
		return nil, err
	}
	u := strings.TrimSuffix(cfg.Host, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, apiError(resp)
	}
	return resp, nil
}

func getJSON(ctx context.Context, cfg *rest.Config, path string, q url.Values, v any) error {
	resp, err := apiRequest(ctx, cfg, path, q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(io.LimitReader(resp.Body, 256<<20)).Decode(v)
}

// followDrops prints the lines of a watch as they arrive.
func (o *options) followDrops(ctx context.Context, cfg *rest.Config, path string, q url.Values) error {
	resp, err := apiRequest(ctx, cfg, path, q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	tw := tabwriter.NewWriter(o.streams.Out, 0, 4, 2, ' ', 0)
	if o.output == "table" {
		fmt.Fprintln(tw, "TIME\tNODE\tACTION\tDIRECTION\tPROTO\tSOURCE\tDESTINATION\tPORT\tCOUNT\tPOLICIES")
		_ = tw.Flush()
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev struct {
			Type   string          `json:"type"`
			Object json.RawMessage `json:"object"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("watch: %w", err)
		}
		if ev.Type == "ERROR" {
			var st metav1.Status
			_ = json.Unmarshal(ev.Object, &st)
			return fmt.Errorf("watch ended: %s", st.Message)
		}
		var d wire.Drop
		if err := json.Unmarshal(ev.Object, &d); err != nil {
			return fmt.Errorf("watch: %w", err)
		}
		if o.output != "table" {
			b, _ := json.Marshal(d.Line)
			fmt.Fprintln(o.streams.Out, string(b))
			continue
		}
		l := d.Line
		if l.Action == audit.ActionLost {
			fmt.Fprintf(tw, "%s\t%s\tlost\t-\t-\t-\t-\t-\t%d\t%s\n", l.Time.Local().Format(time.DateTime), l.Node, l.Count, l.Reason)
		} else {
			writeRow(tw, audit.Flow{Node: l.Node, Action: l.Action, Direction: l.Direction, Protocol: l.Protocol,
				Src: flowEnd(l.Src), Dst: flowEnd(l.Dst), Policies: l.Policies, Count: l.Count, Last: l.Time})
		}
		_ = tw.Flush()
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	return nil
}

// flowEnd is a line's endpoint as a flow's (the port only counts on the
// destination side, where the table prints it).
func flowEnd(e audit.Endpoint) audit.FlowEnd {
	out := audit.FlowEnd{Namespace: e.Namespace, Pod: e.Pod, Port: e.Port}
	if e.IP.IsValid() {
		out.IP = e.IP.String()
	}
	return out
}

// writeRow writes one row of the drops table: a flow, or a followed line.
func writeRow(tw io.Writer, f audit.Flow) {
	port := "-"
	if f.Dst.Port != 0 {
		port = strconv.Itoa(int(f.Dst.Port))
	}
	fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", f.Last.Local().Format(time.DateTime), f.Node, f.Action,
		f.Direction, f.Protocol, endName(f.Src), endName(f.Dst), port, f.Count, strings.Join(f.Policies, ","))
}

func endName(e audit.FlowEnd) string {
	switch {
	case e.Pod != "":
		return e.Namespace + "/" + e.Pod
	case e.Namespace != "":
		return e.Namespace + "/" + e.IP // the pod's name is withheld
	}
	return e.IP
}

func writeDrops(w io.Writer, r *wire.DropList) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LAST\tNODE\tACTION\tDIRECTION\tPROTO\tSOURCE\tDESTINATION\tPORT\tCOUNT\tPOLICIES")
	for _, f := range r.Items {
		writeRow(tw, f)
	}
	_ = tw.Flush()
	if len(r.Items) == 0 {
		fmt.Fprintln(w, "No drops.")
	}
	if r.Redacted > 0 {
		fmt.Fprintf(w, "The other side's pod name is withheld in %d line(s): you may not list pods in its namespace (shown as namespace/address).\n", r.Redacted)
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
		fmt.Fprintf(w, "Some nodes' lines are held only since %s: older drops of the window are not shown (see the nodes' drop log files).\n",
			r.Oldest.Local().Format(time.DateTime))
	}
}
