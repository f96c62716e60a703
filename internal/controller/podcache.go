package controller

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftguard/nftguard/internal/apiretry"
)

// CacheOptions are the controller manager's cache options: informers that
// watch again within a second of the API server's return, and pods cached
// slim (SlimPod).
func CacheOptions() cache.Options {
	return cache.Options{
		NewInformer: apiretry.NewInformer,
		ByObject:    map[client.Object]cache.ByObject{&corev1.Pod{}: {Transform: SlimPod}},
	}
}

// SlimPod is the pod cache's transform. It keeps what compiling rule sets
// and naming drops read: the pod's identity and labels, its node, whether
// it is on the host network, its named container ports, its phase and its
// addresses. Everything else (managed fields, annotations, the containers'
// images, commands, environment and volumes, the status conditions) is
// dropped before the object is stored, which is most of a pod's size.
func SlimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Labels: p.Labels, CreationTimestamp: p.CreationTimestamp, DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec: corev1.PodSpec{
			NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork,
			Containers: slimContainers(p.Spec.Containers), InitContainers: slimContainers(p.Spec.InitContainers),
		},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}, nil
}

func slimContainers(cs []corev1.Container) []corev1.Container {
	if len(cs) == 0 {
		return nil
	}
	out := make([]corev1.Container, len(cs))
	for i := range cs {
		out[i] = corev1.Container{Name: cs[i].Name, Ports: cs[i].Ports}
	}
	return out
}
