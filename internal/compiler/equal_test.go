package compiler

import (
	"reflect"
	"testing"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// perturb changes the n-th thing reflect.DeepEqual looks at in v, walking it
// depth first: a string, a number, whether a pointer or slice is nil, a
// slice's length. It returns how many there were before n, so that a walk
// with n < 0 counts them.
func perturb(v reflect.Value, n int) int {
	seen := 0
	var walk func(v reflect.Value) bool // true once done
	hit := func() bool { seen++; return seen-1 == n }
	walk = func(v reflect.Value) bool {
		switch v.Kind() {
		case reflect.String:
			if hit() {
				v.SetString(v.String() + "x")
				return true
			}
		case reflect.Int, reflect.Int32, reflect.Int64:
			if hit() {
				v.SetInt(v.Int() + 1)
				return true
			}
		case reflect.Bool:
			if hit() {
				v.SetBool(!v.Bool())
				return true
			}
		case reflect.Pointer:
			if hit() {
				if v.IsNil() {
					v.Set(reflect.New(v.Type().Elem()))
				} else {
					v.SetZero()
				}
				return true
			}
			if !v.IsNil() {
				return walk(v.Elem())
			}
		case reflect.Slice:
			if hit() {
				if v.IsNil() {
					v.Set(reflect.MakeSlice(v.Type(), 0, 0))
				} else {
					v.SetZero()
				}
				return true
			}
			if hit() {
				v.Set(reflect.Append(v, reflect.Zero(v.Type().Elem())))
				return true
			}
			for i := range v.Len() {
				if walk(v.Index(i)) {
					return true
				}
			}
		case reflect.Struct:
			for i := range v.NumField() {
				if walk(v.Field(i)) {
					return true
				}
			}
		default:
			panic("perturb: unexpected " + v.Kind().String())
		}
		return false
	}
	walk(v)
	return seen
}

// TestEqualNodeSpecs checks that equalNodeSpecs sees every difference
// reflect.DeepEqual sees, fields added to the API types later included.
func TestEqualNodeSpecs(t *testing.T) {
	iso := func() *v1alpha1.Isolation {
		return &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Policies: []string{"p"}, Rules: []string{"r"}}
	}
	spec := &v1alpha1.NodeRuleSetSpec{
		Pods: []v1alpha1.LocalPod{
			{Namespace: "x", Name: "a", UID: "u", IPs: []string{"10.0.0.1"}, Ingress: iso(), Egress: iso()},
			{Namespace: "x", Name: "b", IPs: []string{}},
		},
		Rules: []v1alpha1.Rule{{
			ID: "r", Direction: v1alpha1.DirectionIngress,
			Peers:    []v1alpha1.Peer{{AddressGroup: "g"}, {IPBlock: &v1alpha1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"10.1.0.0/16"}}}},
			Ports:    []v1alpha1.Port{{Protocol: v1alpha1.ProtocolTCP, Port: 80, EndPort: 90}},
			Policies: []string{"p"},
		}},
		AddressGroups: []string{"g"},
		PodCIDRs:      []string{"10.0.0.0/24"},
	}
	if !equalNodeSpecs(spec, spec.DeepCopy()) {
		t.Fatal("a spec differs from its copy")
	}
	n := perturb(reflect.ValueOf(spec.DeepCopy()).Elem(), -1)
	if n < 40 {
		t.Fatalf("only %d places to perturb: the walk is broken", n)
	}
	for i := range n {
		c := spec.DeepCopy()
		perturb(reflect.ValueOf(c).Elem(), i)
		if reflect.DeepEqual(spec, c) {
			t.Fatalf("perturbation %d changed nothing", i)
		}
		if equalNodeSpecs(spec, c) || equalNodeSpecs(c, spec) {
			t.Errorf("perturbation %d: equalNodeSpecs misses a difference:\n%+v\n%+v", i, *spec, *c)
		}
	}
}
