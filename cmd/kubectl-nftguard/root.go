package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// Exit codes: scripts can tell an error from bad usage, and an allowed
// connection from a denied one.
const (
	exitOK     = 0
	exitError  = 1
	exitUsage  = 2
	exitDenied = 3
)

// usageError marks errors in how the command was called.
type usageError struct{ error }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// exitCode lets a command choose its exit code without an error.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit %d", int(e)) }

// streams are where a command reads and writes.
type streams struct {
	In          io.Reader
	Out, ErrOut io.Writer
}

// options are shared by every subcommand.
type options struct {
	loading   *clientcmd.ClientConfigLoadingRules
	overrides *clientcmd.ConfigOverrides
	streams   streams
	output    string
	// restConfig, when set (tests), is used instead of the kubeconfig flags.
	restConfig *rest.Config
}

func (o *options) config() (*rest.Config, error) {
	if o.restConfig != nil {
		return rest.CopyConfig(o.restConfig), nil
	}
	return o.kubeconfig().ClientConfig()
}

func (o *options) kubeconfig() clientcmd.ClientConfig {
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(o.loading, o.overrides)
}

// namespace is --namespace, or the kubeconfig context's namespace.
func (o *options) namespace() string {
	if o.overrides.Context.Namespace != "" {
		return o.overrides.Context.Namespace
	}
	if o.restConfig != nil {
		return "default"
	}
	ns, _, err := o.kubeconfig().Namespace()
	if err != nil || ns == "" {
		return "default"
	}
	return ns
}

func (o *options) client() (client.Client, error) {
	cfg, err := o.config()
	if err != nil {
		return nil, err
	}
	s, err := v1alpha1.NewScheme()
	if err != nil {
		return nil, err
	}
	return client.New(cfg, client.Options{Scheme: s})
}

// checkOutput validates -o.
func (o *options) checkOutput() error {
	switch o.output {
	case "table", "json", "yaml":
		return nil
	}
	return usagef("unknown output format %q: use table, json or yaml", o.output)
}

// print writes v as JSON or YAML; table output is the caller's.
func (o *options) print(v any) error {
	switch o.output {
	case "json":
		enc := json.NewEncoder(o.streams.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = o.streams.Out.Write(b)
		return err
	}
	return fmt.Errorf("output %q is not structured", o.output)
}

func newRoot(o *options) *cobra.Command {
	root := &cobra.Command{
		Use:   "kubectl-nftguard",
		Short: "Inspect and operate nftguard, the nftables NetworkPolicy enforcer",
		Long: `kubectl nftguard answers "is my policy enforced?" (status), "why was this
connection dropped?" (explain) and "who was denied?" (drops), and removes
nftguard's nftables table from every node before an uninstall (uninstall).

Exit codes: 0 success (explain: allowed), 1 error, 2 usage, 3 explain: denied.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(o.streams.Out)
	root.SetErr(o.streams.ErrOut)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	// The usual kubectl flags: --kubeconfig, --context, --namespace, --cluster,
	// --user, --server, --token, --as and the rest.
	root.PersistentFlags().StringVar(&o.loading.ExplicitPath, clientcmd.RecommendedConfigPathFlag, "", "Path to the kubeconfig file.")
	clientcmd.BindOverrideFlags(o.overrides, root.PersistentFlags(), clientcmd.RecommendedConfigOverrideFlags(""))
	root.PersistentFlags().StringVarP(&o.output, "output", "o", "table", "Output format: table, json or yaml.")
	root.AddCommand(newStatus(o), newExplain(o), newDrops(o), newUninstall(o))
	return root
}

// run executes the command line and returns the exit code.
func run(ctx context.Context, args []string, streams streams, cfg *rest.Config) int {
	o := &options{
		loading:   clientcmd.NewDefaultClientConfigLoadingRules(),
		overrides: &clientcmd.ConfigOverrides{},
		streams:   streams, restConfig: cfg,
	}
	root := newRoot(o)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	var code exitCode
	var usage usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &code):
		return int(code)
	case errors.As(err, &usage) || isCobraUsage(err):
		fmt.Fprintf(streams.ErrOut, "error: %v\nSee 'kubectl nftguard --help'.\n", err)
		return exitUsage
	default:
		fmt.Fprintf(streams.ErrOut, "error: %v\n", err)
		return exitError
	}
}

// isCobraUsage recognises cobra's own usage errors (unknown command, bad
// number of arguments).
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "accepts ", "requires ", "invalid argument"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

// args wraps a cobra argument check so that it reports a usage error.
func args(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if err := check(cmd, a); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// snapshot is everything status and explain read.
type snapshot struct {
	ruleSets   v1alpha1.NodeRuleSetList
	groups     v1alpha1.AddressGroupList
	dds        v1alpha1.DefaultDenyList
	nps        networkingv1.NetworkPolicyList
	pods       corev1.PodList
	namespaces corev1.NamespaceList
	services   corev1.ServiceList
}

type listing struct {
	what string
	l    client.ObjectList
	opts []client.ListOption
}

// read lists the objects; the lists only explain needs (groups, pods,
// namespaces, services) are read only when full is set.
func read(ctx context.Context, c client.Client, npNamespace string, full bool) (*snapshot, error) {
	s := &snapshot{}
	lists := []listing{
		{"NodeRuleSets", &s.ruleSets, nil},
		{"DefaultDenies", &s.dds, nil},
		{"NetworkPolicies", &s.nps, []client.ListOption{client.InNamespace(npNamespace)}},
	}
	if full {
		lists = append(lists,
			listing{"AddressGroups", &s.groups, nil},
			listing{"Pods", &s.pods, nil},
			listing{"Namespaces", &s.namespaces, nil},
			listing{"Services", &s.services, nil})
	}
	for _, l := range lists {
		if err := c.List(ctx, l.l, l.opts...); err != nil {
			return nil, fmt.Errorf("listing %s: %w", l.what, err)
		}
	}
	return s, nil
}
