package controller

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestSlimPodKeepsWhatCompilingAndNamingRead(t *testing.T) {
	now := metav1.Now()
	full := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web", Namespace: "shop", UID: "u1", ResourceVersion: "7", Labels: map[string]string{"app": "web"},
			Annotations:       map[string]string{"big": "annotation"},
			ManagedFields:     []metav1.ManagedFieldsEntry{{Manager: "kubelet"}},
			DeletionTimestamp: &now,
		},
		Spec: corev1.PodSpec{
			NodeName: "n1", HostNetwork: false,
			Containers: []corev1.Container{{Name: "c", Image: "img", Env: []corev1.EnvVar{{Name: "A", Value: "b"}},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}}}},
			InitContainers: []corev1.Container{{Name: "i", Ports: []corev1.ContainerPort{{Name: "side", ContainerPort: 81}}}},
			Volumes:        []corev1.Volume{{Name: "v"}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: "198.18.0.2", PodIPs: []corev1.PodIP{{IP: "198.18.0.2"}, {IP: "fd00::2"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady}},
		},
	}
	got, err := SlimPod(full.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	slim := got.(*corev1.Pod)
	if slim.Annotations != nil || slim.ManagedFields != nil || slim.Spec.Volumes != nil || slim.Status.Conditions != nil ||
		slim.Spec.Containers[0].Image != "" || slim.Spec.Containers[0].Env != nil {
		t.Fatalf("kept what nothing reads: %+v", slim)
	}
	if slim.Name != "web" || slim.Namespace != "shop" || slim.UID != "u1" || slim.ResourceVersion != "7" ||
		!reflect.DeepEqual(slim.Labels, full.Labels) || slim.DeletionTimestamp == nil ||
		slim.Spec.NodeName != "n1" || slim.Status.Phase != corev1.PodRunning || slim.Status.PodIP != "198.18.0.2" ||
		!reflect.DeepEqual(slim.Status.PodIPs, full.Status.PodIPs) ||
		!reflect.DeepEqual(containerPorts(slim), containerPorts(full)) {
		t.Fatalf("lost what compiling or naming reads: %+v", slim)
	}
	if other, _ := SlimPod("not a pod"); other != "not a pod" {
		t.Fatal("other objects must pass unchanged")
	}
}
