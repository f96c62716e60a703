package bench

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/controller"
	"github.com/nftguard/nftguard/internal/dropsapi"
	"github.com/nftguard/nftguard/internal/dropsapi/dropsapitest"
	"github.com/nftguard/nftguard/internal/dropsapi/wire"
)

var (
	namingPods   = flag.Int("bench.drops.pods", 150000, "pods in the drops API's naming memory benchmark")
	queryLines   = flag.Int("bench.drops.lines", 10000, "drop lines (across two nodes) in the drops API query benchmark")
	queryRepeats = flag.Int("bench.drops.queries", 50, "queries of each kind in the drops API query benchmark")
)

// realisticPod is a pod as the API server sends it: two containers with
// images, commands, environment, ports and probes, volumes, managed fields
// and conditions.
func realisticPod(i int) *corev1.Pod {
	c := func(name string) corev1.Container {
		return corev1.Container{
			Name: name, Image: "registry.example/team/" + name + ":v1.2.3",
			Command:      []string{"/bin/" + name, "--config=/etc/" + name + "/config.yaml"},
			Env:          []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}, {Name: "POD_NAME", Value: fmt.Sprintf("web-%d", i)}},
			Ports:        []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
			VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/etc/" + name}},
		}
	}
	ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: fmt.Sprintf("ns-%d", i%500), Name: fmt.Sprintf("web-%d", i), UID: types.UID(fmt.Sprintf("uid-%08d", i)),
			ResourceVersion: "12345", Labels: map[string]string{"app": "web", "pod-template-hash": "5d8f7c9b6"},
			Annotations:   map[string]string{"kubectl.kubernetes.io/restartedAt": "2026-12-01T00:00:00Z"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1"}},
		},
		Spec: corev1.PodSpec{
			NodeName: fmt.Sprintf("node-%d", i%5000), Containers: []corev1.Container{c("app"), c("sidecar")},
			Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: "web-config"}}}}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}, {Type: corev1.ContainersReady, Status: corev1.ConditionTrue}},
		},
	}
}

// BenchmarkDropsNaming measures what naming drops costs the drops server
// at -bench.drops.pods pods: the pod index's memory per pod (index-B/pod),
// the controller's pod cache per pod with and without its slimming
// transform (slim-pod-B/pod, full-pod-B/pod), and a lookup (ns/op is one
// named and one unknown address).
func BenchmarkDropsNaming(b *testing.B) {
	n := *namingPods
	heap0 := liveHeap()
	full := make([]*corev1.Pod, n)
	for i := range full {
		full[i] = realisticPod(i)
	}
	heap1 := liveHeap()
	slim := make([]*corev1.Pod, n)
	for i, p := range full {
		s, _ := controller.SlimPod(p.DeepCopy())
		slim[i] = s.(*corev1.Pod)
	}
	heap2 := liveHeap()
	x := dropsapi.NewPodIndex()
	for _, p := range slim {
		x.OnAdd(p, true)
	}
	heap3 := liveHeap()
	if x.Len() != n {
		b.Fatalf("indexed %d addresses, want %d", x.Len(), n)
	}
	runtime.KeepAlive(full)
	known := netip.MustParseAddr(full[n/2].Status.PodIP)
	unknown := netip.MustParseAddr("198.19.255.254")
	// b.Loop resets the timer, which deletes metrics reported before it.
	for b.Loop() {
		if _, _, ok := x.PodByIP(known); !ok {
			b.Fatal("known address not named")
		}
		if _, _, ok := x.PodByIP(unknown); ok {
			b.Fatal("unknown address named")
		}
	}
	runtime.KeepAlive(slim)
	b.ReportMetric(float64(heap1-heap0)/float64(n), "full-pod-B/pod")
	b.ReportMetric(float64(heap2-heap1)/float64(n), "slim-pod-B/pod")
	b.ReportMetric(float64(heap3-heap2)/float64(n), "index-B/pod")
	b.ReportMetric(float64(heap3-heap2)/(1<<20), "index-MiB")
}

// BenchmarkDropsQuery measures reading drops through the API server's
// aggregator (envtest's real kube-apiserver, front proxy and all) when the
// server holds -bench.drops.lines lines across two nodes: a namespace's
// reader (its 1/10 share, peers' names checked per namespace) and a
// cluster-wide reader, p50 and p99 of -bench.drops.queries lists each. The
// same lists sent straight to the server (with the front proxy's
// certificate) give the aggregator's share as a ratio in the same run.
func BenchmarkDropsQuery(b *testing.B) {
	lines := *queryLines
	c := dropsapitest.StartWithStore(b, dropsapi.StoreConfig{PerNode: lines})
	c.Create(&rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "drops-reader"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{wire.Group}, Resources: []string{wire.ResourceDrops}, Verbs: []string{"list"}},
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}}},
	})
	for node := range 2 {
		token := c.AgentToken(dropsapitest.AgentSA, fmt.Sprintf("n%d", node), wire.Audience)
		var next uint64
		for sent := 0; sent < lines/2; sent += 1000 {
			batch := make([]audit.Event, min(1000, lines/2-sent))
			for i := range batch {
				k := sent + i
				batch[i] = audit.Event{Time: time.Now(), Action: audit.ActionDrop, Direction: audit.Ingress, Protocol: audit.ProtocolTCP,
					Src: audit.Endpoint{IP: netip.AddrFrom4([4]byte{198, 19, byte(k >> 8), byte(k)}), Port: 40000, Namespace: fmt.Sprintf("peer-%d", k%7), Pod: "client"},
					Dst: audit.Endpoint{IP: netip.AddrFrom4([4]byte{198, 18, byte(node), byte(k % 200)}), Port: uint16(80 + k%3),
						Namespace: fmt.Sprintf("ns-%d", k%10), Pod: fmt.Sprintf("web-%d", k%200)},
					Policies: []string{fmt.Sprintf("NetworkPolicy/ns-%d/web", k%10)}, Count: 1}
			}
			code, pr := c.Push(token, fmt.Sprintf("n%d", node), "s", next, batch)
			if code != 200 {
				b.Fatalf("push: %d", code)
			}
			next = pr.Next
		}
	}
	users := map[string]kubernetes.Interface{
		"namespace":    c.User("ns-reader", map[string][]string{"ns-3": {"drops-reader"}}),
		"cluster-wide": c.User("all-reader", map[string][]string{"": {"drops-reader"}}),
	}
	names := map[string]string{"namespace": "ns-reader", "cluster-wide": "all-reader"}
	paths := map[string]string{
		"namespace":    "/apis/" + wire.GroupVersion + "/namespaces/ns-3/drops",
		"cluster-wide": "/apis/" + wire.GroupVersion + "/drops",
	}
	measure := func(name string, get func() ([]byte, error)) []time.Duration {
		var ds []time.Duration
		for range *queryRepeats {
			start := time.Now()
			body, err := get()
			ds = append(ds, time.Since(start))
			if err != nil {
				b.Fatalf("%s: %v", name, err)
			}
			var l wire.DropList
			if err := json.Unmarshal(body, &l); err != nil || len(l.Items) == 0 {
				b.Fatalf("%s: %v (%d flows)", name, err, len(l.Items))
			}
		}
		slices.Sort(ds)
		return ds
	}
	pct := func(ds []time.Duration, p float64) float64 {
		return float64(ds[int(p*float64(len(ds)-1))].Microseconds()) / 1000
	}
	for b.Loop() {
		for _, kind := range []string{"namespace", "cluster-wide"} {
			cs, path := users[kind], paths[kind]
			via := measure(kind, func() ([]byte, error) { return cs.Discovery().RESTClient().Get().AbsPath(path).DoRaw(b.Context()) })
			direct := measure(kind+" direct", func() ([]byte, error) { return c.DirectGet(path, names[kind]) })
			b.ReportMetric(pct(via, 0.5), kind+"-p50-ms")
			b.ReportMetric(pct(via, 0.99), kind+"-p99-ms")
			b.ReportMetric(pct(via, 0.5)/pct(direct, 0.5), kind+"-aggregator-ratio")
		}
	}
}
