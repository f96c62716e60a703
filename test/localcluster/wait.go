package localcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

func jsonMerge(v any) ([]byte, error) { return json.Marshal(v) }

func httpClient(timeout time.Duration) *http.Client { return &http.Client{Timeout: timeout} }

// programmed reports whether the node's agent has programmed the current
// generation of its NodeRuleSet.
func (c *Cluster) programmed(ctx context.Context, node string) (bool, error) {
	nrs := &v1alpha1.NodeRuleSet{}
	if err := c.client.Get(ctx, client.ObjectKey{Name: node}, nrs); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	return isProgrammed(nrs), nil
}

// isProgrammed reports whether the agent programmed the rule set the
// NodeRuleSet holds, as the controller and the plugin decide it.
func isProgrammed(nrs *v1alpha1.NodeRuleSet) bool {
	return v1alpha1.NodeProgress(nrs, nrs.Generation).State == v1alpha1.NodeProgrammed
}

// WaitEnforced waits until the policies in the API are in force on every
// node: each NetworkPolicy and Enforce DefaultDeny is compiled into the
// rule sets of the nodes of the pods it selects, each DefaultDeny reports
// Enforced for its current generation, and every node's agent has
// programmed its current rule set. It returns the last reason it was still
// waiting when ctx ends.
func (c *Cluster) WaitEnforced(ctx context.Context) error {
	if !c.state.snapshot().Agents {
		return errors.New("no agents run in this cluster: nothing programs the rule sets")
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		why, err := c.notEnforced(ctx)
		if err != nil && ctx.Err() == nil {
			return err
		}
		if err == nil && why == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			if why == "" {
				why = ctx.Err().Error()
			}
			return fmt.Errorf("policies not in force: %s", why)
		case <-tick.C:
		}
	}
}

// notEnforced returns why the policies are not all in force yet, or "".
func (c *Cluster) notEnforced(ctx context.Context) (string, error) {
	var nrsList v1alpha1.NodeRuleSetList
	if err := c.client.List(ctx, &nrsList); err != nil {
		return "", err
	}
	rulesets := map[string]*v1alpha1.NodeRuleSet{}
	for i := range nrsList.Items {
		rulesets[nrsList.Items[i].Name] = &nrsList.Items[i]
	}
	for _, n := range c.Nodes() {
		nrs := rulesets[n.Name]
		if nrs == nil {
			return fmt.Sprintf("no NodeRuleSet for node %s yet", n.Name), nil
		}
		if !isProgrammed(nrs) {
			return fmt.Sprintf("NodeRuleSet %s generation %d not programmed yet", n.Name, nrs.Generation), nil
		}
	}
	var dds v1alpha1.DefaultDenyList
	if err := c.client.List(ctx, &dds); err != nil {
		return "", err
	}
	for _, dd := range dds.Items {
		if dd.Status.ObservedGeneration != dd.Generation {
			return fmt.Sprintf("DefaultDeny %s generation %d not observed yet", dd.Name, dd.Generation), nil
		}
		if dd.Spec.Mode == v1alpha1.ModeAudit {
			continue
		}
		if !meta.IsStatusConditionTrue(dd.Status.Conditions, v1alpha1.ConditionEnforced) {
			return fmt.Sprintf("DefaultDeny %s not Enforced yet (%s)", dd.Name, dd.Status.Enforcement), nil
		}
	}
	var nps networkingv1.NetworkPolicyList
	if err := c.client.List(ctx, &nps); err != nil {
		return "", err
	}
	var pods corev1.PodList
	if err := c.client.List(ctx, &pods); err != nil {
		return "", err
	}
	for _, np := range nps.Items {
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			continue
		}
		key := v1alpha1.NetworkPolicyKey(np.Namespace, np.Name)
		ingress, egress := npTypes(&np)
		for _, pod := range pods.Items {
			if pod.Namespace != np.Namespace || !sel.Matches(labels.Set(pod.Labels)) || pod.Spec.NodeName == "" || pod.Status.PodIP == "" {
				continue
			}
			nrs := rulesets[pod.Spec.NodeName]
			if nrs == nil {
				return fmt.Sprintf("no NodeRuleSet for node %s yet", pod.Spec.NodeName), nil
			}
			if !isolatedBy(nrs, pod.Namespace, pod.Name, key, ingress, egress) {
				return fmt.Sprintf("%s not compiled into NodeRuleSet %s for pod %s/%s yet", key, nrs.Name, pod.Namespace, pod.Name), nil
			}
		}
	}
	return "", nil
}

// npTypes are the directions a NetworkPolicy isolates, with the API's
// defaulting: Ingress always, Egress when it has egress rules.
func npTypes(np *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	return slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress),
		slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
}

func isolatedBy(nrs *v1alpha1.NodeRuleSet, ns, name, key string, ingress, egress bool) bool {
	for _, p := range nrs.Spec.Pods {
		if p.Namespace != ns || p.Name != name {
			continue
		}
		has := func(iso *v1alpha1.Isolation) bool { return iso != nil && slices.Contains(iso.Policies, key) }
		return (!ingress || has(p.Ingress)) && (!egress || has(p.Egress))
	}
	return false
}

// WaitProgrammed waits until every node's agent has programmed the current
// generation of its NodeRuleSet.
func (c *Cluster) WaitProgrammed(ctx context.Context) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		pending := ""
		for _, n := range c.Nodes() {
			ok, err := c.programmed(ctx, n.Name)
			if err != nil && !apierrors.IsNotFound(err) && ctx.Err() == nil {
				return err
			}
			if !ok {
				pending = n.Name
				break
			}
		}
		if pending == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("NodeRuleSet %s not programmed: %w", pending, ctx.Err())
		case <-tick.C:
		}
	}
}
