package compilertest

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/compiler"
)

// SnapshotFromAPI lists what the compiler reads (pods, namespaces, nodes,
// NetworkPolicies, DefaultDenies) as the API server holds it.
func SnapshotFromAPI(ctx context.Context, c client.Reader) (*compiler.Snapshot, error) {
	var (
		pods  corev1.PodList
		nss   corev1.NamespaceList
		nodes corev1.NodeList
		nps   networkingv1.NetworkPolicyList
		dds   v1alpha1.DefaultDenyList
	)
	for _, l := range []client.ObjectList{&pods, &nss, &nodes, &nps, &dds} {
		if err := c.List(ctx, l); err != nil {
			return nil, err
		}
	}
	s := &compiler.Snapshot{}
	for i := range pods.Items {
		s.Pods = append(s.Pods, &pods.Items[i])
	}
	for i := range nss.Items {
		s.Namespaces = append(s.Namespaces, &nss.Items[i])
	}
	for i := range nodes.Items {
		s.Nodes = append(s.Nodes, &nodes.Items[i])
	}
	for i := range nps.Items {
		s.NetworkPolicies = append(s.NetworkPolicies, &nps.Items[i])
	}
	for i := range dds.Items {
		s.DefaultDenies = append(s.DefaultDenies, &dds.Items[i])
	}
	return s, nil
}
