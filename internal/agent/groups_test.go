package agent

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

func TestGroupFilterStripsUnreferencedGroups(t *testing.T) {
	ag := func(name string) *v1alpha1.AddressGroup {
		return &v1alpha1.AddressGroup{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: v1alpha1.AddressGroupSpec{Addresses: []string{"198.18.0.1"}, Endpoints: []v1alpha1.Endpoint{{IP: "198.18.0.2", Port: 80}}}}
	}
	f := &GroupFilter{}
	if out, _ := f.Transform(ag("a")); len(out.(*v1alpha1.AddressGroup).Spec.Addresses) != 1 {
		t.Fatal("before any rule set is known, every group must keep its members")
	}
	f.SetReferenced([]string{"a"})
	kept, _ := f.Transform(ag("a"))
	if g := kept.(*v1alpha1.AddressGroup); len(g.Spec.Addresses) != 1 || g.Annotations[StrippedAnnotation] != "" {
		t.Errorf("referenced group changed: %+v", g)
	}
	stripped, _ := f.Transform(ag("b"))
	if g := stripped.(*v1alpha1.AddressGroup); g.Spec.Addresses != nil || g.Spec.Endpoints != nil || g.Annotations[StrippedAnnotation] != "true" {
		t.Errorf("unreferenced group kept its members or lacks the mark: %+v", g)
	}
	if out, err := f.Transform(&v1alpha1.NodeRuleSet{}); err != nil || out == nil {
		t.Error("other kinds must pass through")
	}
}
