package controller

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// TestWritesLeaveSpecsAlone checks that writing a desired spec does not let
// the client modify it: the specs come from compiler.Engine, which shares
// them, and a client decodes the API server's response into the object it
// sends, reusing its slices, maps and pointers. The client here scribbles on
// what it is given, as such a decode could.
func TestWritesLeaveSpecsAlone(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	scribble := func(obj client.Object) {
		switch o := obj.(type) {
		case *v1alpha1.AddressGroup:
			o.Spec.Addresses[0] = "scribbled"
			o.Spec.PodSelector.MatchLabels["app"] = "scribbled"
		case *v1alpha1.NodeRuleSet:
			o.Spec.Pods[0].IPs[0] = "scribbled"
			o.Spec.Pods[0].Ingress.Policies[0] = "scribbled"
			o.Spec.Rules[0].Peers[0].IPBlock.CIDR = "scribbled"
		}
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithInterceptorFuncs(interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			scribble(obj)
			return nil
		},
		Patch: func(ctx context.Context, c client.WithWatch, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
			scribble(obj)
			return nil
		},
	}).Build()
	r := &RuleSetReconciler{Client: c}
	ctx := context.Background()

	group := v1alpha1.AddressGroupSpec{
		Namespace:   "x",
		PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
		Addresses:   []string{"198.18.0.1", "198.18.0.2"},
	}
	rs := v1alpha1.NodeRuleSetSpec{
		Pods: []v1alpha1.LocalPod{{Namespace: "x", Name: "a", IPs: []string{"198.18.0.1"},
			Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Policies: []string{"NetworkPolicy/x/p"}, Rules: []string{"r-1"}}}},
		Rules: []v1alpha1.Rule{{ID: "r-1", Direction: v1alpha1.DirectionIngress, Policies: []string{"NetworkPolicy/x/p"},
			Peers: []v1alpha1.Peer{{IPBlock: &v1alpha1.IPBlock{CIDR: "10.0.0.0/8"}}}}},
	}
	wantGroup, wantRS := group.DeepCopy(), rs.DeepCopy()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "u1"}}
	for _, cur := range []struct {
		rs *v1alpha1.NodeRuleSet
		ag *v1alpha1.AddressGroup
	}{
		{nil, nil}, // creates
		{&v1alpha1.NodeRuleSet{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, &v1alpha1.AddressGroup{ObjectMeta: metav1.ObjectMeta{Name: "ag-1"}}}, // updates
	} {
		in := planInput{
			RuleSets: []string{"n1"}, Groups: []string{"ag-1"},
			DesiredRuleSets: map[string]v1alpha1.NodeRuleSetSpec{"n1": rs},
			DesiredGroups:   map[string]v1alpha1.AddressGroupSpec{"ag-1": group},
			CurRuleSets:     map[string]*v1alpha1.NodeRuleSet{}, CurGroups: map[string]*v1alpha1.AddressGroup{},
			Nodes: map[string]*corev1.Node{"n1": node}, MaxBytes: DefaultMaxObjectBytes,
		}
		if cur.rs != nil {
			in.CurRuleSets["n1"], in.CurGroups["ag-1"] = cur.rs, cur.ag
		}
		p := planWrites(in)
		if len(p.Writes) < 2 {
			t.Fatalf("planned %+v, want a group and a rule set write", p.Writes)
		}
		if errs := r.execute(ctx, p, map[string]struct{}{}, map[string]struct{}{}); len(errs) > 0 {
			t.Fatal(errs)
		}
	}
	if diff := cmp.Diff(wantGroup, &group); diff != "" {
		t.Errorf("writing a group modified the desired spec (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(wantRS, &rs); diff != "" {
		t.Errorf("writing a rule set modified the desired spec (-before +after):\n%s", diff)
	}
}
