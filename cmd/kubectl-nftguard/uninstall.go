package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

func newUninstall(o *options) *cobra.Command {
	var timeout time.Duration
	var cancel bool
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove nftguard's nftables table from every node, then say how to delete nftguard",
		Long: `Mark every NodeRuleSet with the annotation nftguard.io/uninstall. Each node's
agent then takes the nftguard CNI plugin out of the node's CNI configuration
(so new pods do not wait for an agent about to go), deletes its table inet
nftguard (so no stale rule keeps blocking traffic once nftguard is gone) and
reports Programmed=False with reason Uninstalled. The command waits until every node has, then prints the command
that deletes nftguard itself. From the moment a node reports Uninstalled it
filters no traffic at all.

--cancel removes the marks instead: the agents program their rule sets again.`,
		Example: `  kubectl nftguard uninstall && kubectl delete -k config/default
  kubectl nftguard uninstall --cancel`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.checkOutput(); err != nil {
				return err
			}
			ctx := cmd.Context()
			c, err := o.client()
			if err != nil {
				return err
			}
			var list v1alpha1.NodeRuleSetList
			if err := c.List(ctx, &list); err != nil {
				return fmt.Errorf("listing NodeRuleSets: %w", err)
			}
			changed := 0
			for i := range list.Items {
				rs := &list.Items[i]
				_, marked := rs.Annotations[v1alpha1.UninstallAnnotation]
				if marked != cancel {
					continue
				}
				changed++
				patch := client.MergeFrom(rs.DeepCopy())
				if cancel {
					delete(rs.Annotations, v1alpha1.UninstallAnnotation)
				} else {
					metav1.SetMetaDataAnnotation(&rs.ObjectMeta, v1alpha1.UninstallAnnotation, "true")
				}
				if err := c.Patch(ctx, rs, patch); err != nil {
					return fmt.Errorf("marking NodeRuleSet %s: %w", rs.Name, err)
				}
			}
			if cancel {
				fmt.Fprintf(o.streams.Out, "Unmarked %d of %d NodeRuleSets: their agents program them again.\n", changed, len(list.Items))
				return nil
			}
			fmt.Fprintf(o.streams.Out, "Marked %d of %d NodeRuleSets; waiting for their agents to delete their tables...\n", changed, len(list.Items))
			deadline := time.Now().Add(timeout)
			var pending []string
			for {
				if err := c.List(ctx, &list); err != nil {
					return fmt.Errorf("listing NodeRuleSets: %w", err)
				}
				pending = pending[:0]
				for _, rs := range list.Items {
					c := meta.FindStatusCondition(rs.Status.Conditions, v1alpha1.ConditionProgrammed)
					if _, marked := rs.Annotations[v1alpha1.UninstallAnnotation]; !marked {
						pending = append(pending, rs.Name+" (new since the command started: run it again)")
					} else if c == nil || c.Reason != v1alpha1.ReasonUninstalled {
						pending = append(pending, rs.Name)
					}
				}
				if len(pending) == 0 {
					break
				}
				if time.Now().After(deadline) {
					slices.Sort(pending)
					return fmt.Errorf("after %s these nodes have not deleted their table: %s (is their agent running? "+
						"a node without a running agent keeps its table until the agent runs again or someone runs "+
						"'nft delete table inet nftguard' on it)", timeout, strings.Join(pending, ", "))
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(time.Second):
				}
			}
			fmt.Fprintf(o.streams.Out, `Every node (%d) deleted its nftguard table: no traffic is filtered by nftguard now.
Delete nftguard itself (controller, agents, CRDs and with them every DefaultDeny,
NodeRuleSet and AddressGroup) with:

  kubectl delete -k config/default

Until then, do not add nodes: a new node's agent would program its rule set.
To go back instead: kubectl nftguard uninstall --cancel
`, len(list.Items))
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "How long to wait for the agents.")
	cmd.Flags().BoolVar(&cancel, "cancel", false, "Remove the uninstall marks: the agents program their rule sets again.")
	return cmd
}
