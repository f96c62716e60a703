package localcluster

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Topology describes a local cluster: its nodes, its namespaces with their
// labels, and its pods with their node, labels and container ports. It is
// read from YAML or JSON (see topologies/shop.yaml).
type Topology struct {
	Nodes      []NodeSpec      `json:"nodes"`
	Namespaces []NamespaceSpec `json:"namespaces,omitempty"`
	Pods       []PodSpec       `json:"pods,omitempty"`
}

// NodeSpec is a node: a network namespace that routes for its pods.
type NodeSpec struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

// NamespaceSpec is a Kubernetes namespace and its labels. Namespaces that
// pods use but the topology does not list are created without labels.
type NamespaceSpec struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

// PodSpec is a pod: a network namespace joined to its node, serving each of
// its ports. An empty Node spreads the pod over the nodes in turn.
type PodSpec struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Node      string            `json:"node,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Ports     []PortSpec        `json:"ports,omitempty"`
}

// PortSpec is a container port. Protocol defaults to TCP.
type PortSpec struct {
	Name     string          `json:"name,omitempty"`
	Port     int32           `json:"port"`
	Protocol corev1.Protocol `json:"protocol,omitempty"`
}

func (p PortSpec) String() string {
	s := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
	if p.Name != "" {
		s = p.Name + " " + s
	}
	return s
}

// Key is the pod's "namespace/name".
func (p PodSpec) Key() string { return p.Namespace + "/" + p.Name }

// Limits of the address plan (see docs/local-cluster.md).
const (
	maxNodes       = 200
	maxPodsPerNode = 250
)

//go:embed topologies/shop.yaml
var shopYAML []byte

// ShopTopology returns the shop of config/samples on two nodes: storefront/web,
// backend/api, backend/cache, payments/payments and kube-system/coredns.
func ShopTopology() *Topology {
	t, err := ParseTopology(shopYAML)
	if err != nil {
		panic(fmt.Sprintf("embedded shop topology: %v", err))
	}
	return t
}

// ConformanceTopology is the layout of upstream's NetworkPolicy suite:
// namespaces (x, y, z; labelled ns=<name>) with pods (a, b, c; labelled
// pod=<name>), each serving ports 80 and 81 over TCP, UDP and SCTP with
// ports named serve-80-tcp and so on, spread over two nodes; plus a DNS pod
// in kube-system (replaced by real CoreDNS on real nodes).
func ConformanceTopology(namespaces, pods []string) *Topology {
	t := &Topology{Nodes: []NodeSpec{{Name: "node-1"}, {Name: "node-2"}}}
	var ports []PortSpec
	for _, port := range []int32{80, 81} {
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
			ports = append(ports, PortSpec{
				Name: fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto))), Port: port, Protocol: proto,
			})
		}
	}
	i := 0
	for _, ns := range namespaces {
		t.Namespaces = append(t.Namespaces, NamespaceSpec{Name: ns, Labels: map[string]string{"ns": ns}})
		for _, p := range pods {
			t.Pods = append(t.Pods, PodSpec{
				Namespace: ns, Name: p, Node: t.Nodes[i%2].Name, Labels: map[string]string{"pod": p}, Ports: slices.Clone(ports),
			})
			i++
		}
	}
	t.Namespaces = append(t.Namespaces, NamespaceSpec{Name: "kube-system"})
	t.Pods = append(t.Pods, PodSpec{
		Namespace: "kube-system", Name: "dns", Node: "node-2", Labels: map[string]string{"k8s-app": "kube-dns"},
		Ports: []PortSpec{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}, {Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP}},
	})
	return t
}

// LoadTopology reads a topology from a YAML or JSON file.
func LoadTopology(path string) (*Topology, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	t, err := ParseTopology(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// ParseTopology decodes a YAML or JSON topology, rejecting unknown fields,
// and normalises it (see Normalize). YAML is read as YAML 1.2: y, n, on and
// off are strings, not booleans.
func ParseTopology(b []byte) (*Topology, error) {
	var doc any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	j, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	t := &Topology{}
	if err := dec.Decode(t); err != nil {
		return nil, fmt.Errorf("%w (quote label values such as \"true\" or \"1\")", err)
	}
	if err := t.Normalize(); err != nil {
		return nil, err
	}
	return t, nil
}

// WithNodes returns a copy of the topology on n nodes named node-1..node-n.
// Pods assigned to a node that no longer exists are spread over the new
// nodes in turn.
func (t *Topology) WithNodes(n int) (*Topology, error) {
	if n < 1 || n > maxNodes {
		return nil, fmt.Errorf("nodes: %d is not between 1 and %d", n, maxNodes)
	}
	out := t.DeepCopy()
	out.Nodes = nil
	names := map[string]bool{}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("node-%d", i)
		names[name] = true
		out.Nodes = append(out.Nodes, NodeSpec{Name: name})
	}
	for i := range out.Pods {
		if !names[out.Pods[i].Node] {
			out.Pods[i].Node = ""
		}
	}
	if err := out.Normalize(); err != nil {
		return nil, err
	}
	return out, nil
}

// DeepCopy copies the topology.
func (t *Topology) DeepCopy() *Topology {
	out := &Topology{}
	for _, n := range t.Nodes {
		out.Nodes = append(out.Nodes, NodeSpec{Name: n.Name, Labels: copyLabels(n.Labels)})
	}
	for _, ns := range t.Namespaces {
		out.Namespaces = append(out.Namespaces, NamespaceSpec{Name: ns.Name, Labels: copyLabels(ns.Labels)})
	}
	for _, p := range t.Pods {
		p.Labels = copyLabels(p.Labels)
		p.Ports = slices.Clone(p.Ports)
		out.Pods = append(out.Pods, p)
	}
	return out
}

func copyLabels(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Normalize validates the topology and fills in defaults: port protocols
// (TCP), namespaces that pods use but the topology does not list, and the
// node of pods that name none (spread over the nodes in turn).
func (t *Topology) Normalize() error {
	if len(t.Nodes) == 0 {
		return fmt.Errorf("a topology needs at least one node")
	}
	if len(t.Nodes) > maxNodes {
		return fmt.Errorf("%d nodes: at most %d", len(t.Nodes), maxNodes)
	}
	nodes := map[string]bool{}
	for _, n := range t.Nodes {
		// Node names are DNS labels here (stricter than Kubernetes) so
		// that they name network namespaces unambiguously.
		if errs := validation.IsDNS1123Label(n.Name); len(errs) > 0 {
			return fmt.Errorf("node %q: %s", n.Name, strings.Join(errs, "; "))
		}
		if n.Name == "underlay" {
			return fmt.Errorf("node name %q is reserved for the underlay's network namespace", n.Name)
		}
		if nodes[n.Name] {
			return fmt.Errorf("node %q is listed twice", n.Name)
		}
		if err := validLabels(n.Labels); err != nil {
			return fmt.Errorf("node %q: %w", n.Name, err)
		}
		nodes[n.Name] = true
	}
	namespaces := map[string]bool{}
	for _, ns := range t.Namespaces {
		if errs := validation.IsDNS1123Label(ns.Name); len(errs) > 0 {
			return fmt.Errorf("namespace %q: %s", ns.Name, strings.Join(errs, "; "))
		}
		if namespaces[ns.Name] {
			return fmt.Errorf("namespace %q is listed twice", ns.Name)
		}
		if err := validLabels(ns.Labels); err != nil {
			return fmt.Errorf("namespace %q: %w", ns.Name, err)
		}
		namespaces[ns.Name] = true
	}
	pods := map[string]bool{}
	perNode := map[string]int{}
	next := 0
	for i := range t.Pods {
		p := &t.Pods[i]
		if errs := validation.IsDNS1123Label(p.Namespace); len(errs) > 0 {
			return fmt.Errorf("pod %q: namespace %q: %s", p.Key(), p.Namespace, strings.Join(errs, "; "))
		}
		// Pod names are DNS labels here (stricter than Kubernetes) so
		// that they fit in network namespace and interface names.
		if errs := validation.IsDNS1123Label(p.Name); len(errs) > 0 {
			return fmt.Errorf("pod %q: %s", p.Key(), strings.Join(errs, "; "))
		}
		if pods[p.Key()] {
			return fmt.Errorf("pod %q is listed twice", p.Key())
		}
		pods[p.Key()] = true
		if err := validLabels(p.Labels); err != nil {
			return fmt.Errorf("pod %q: %w", p.Key(), err)
		}
		if !namespaces[p.Namespace] {
			namespaces[p.Namespace] = true
			t.Namespaces = append(t.Namespaces, NamespaceSpec{Name: p.Namespace})
		}
		if p.Node == "" {
			p.Node = t.Nodes[next%len(t.Nodes)].Name
			next++
		} else if !nodes[p.Node] {
			return fmt.Errorf("pod %q: node %q is not in the topology", p.Key(), p.Node)
		}
		perNode[p.Node]++
		if perNode[p.Node] > maxPodsPerNode {
			return fmt.Errorf("node %q: more than %d pods", p.Node, maxPodsPerNode)
		}
		seen := map[string]bool{}
		for j := range p.Ports {
			port := &p.Ports[j]
			if port.Protocol == "" {
				port.Protocol = corev1.ProtocolTCP
			}
			switch port.Protocol {
			case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
			default:
				return fmt.Errorf("pod %q: port %d: protocol %q is not TCP, UDP or SCTP", p.Key(), port.Port, port.Protocol)
			}
			if port.Port < 1 || port.Port > 65535 {
				return fmt.Errorf("pod %q: port %d is not between 1 and 65535", p.Key(), port.Port)
			}
			if port.Name != "" {
				if errs := validation.IsValidPortName(port.Name); len(errs) > 0 {
					return fmt.Errorf("pod %q: port name %q: %s", p.Key(), port.Name, strings.Join(errs, "; "))
				}
				if seen["name/"+port.Name] {
					return fmt.Errorf("pod %q: port name %q is used twice", p.Key(), port.Name)
				}
				seen["name/"+port.Name] = true
			}
			k := fmt.Sprintf("%d/%s", port.Port, port.Protocol)
			if seen[k] {
				return fmt.Errorf("pod %q: port %s is listed twice", p.Key(), k)
			}
			seen[k] = true
		}
	}
	return nil
}

func validLabels(m map[string]string) error {
	for k, v := range m {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return fmt.Errorf("label key %q: %s", k, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			return fmt.Errorf("label %q value %q: %s", k, v, strings.Join(errs, "; "))
		}
	}
	return nil
}

var clusterNameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,11}$`)

// validClusterName checks a cluster name: it prefixes the names of the
// cluster's network namespaces ("ngd-<name>-"), so it has no dash and no
// cluster's prefix is another's.
func validClusterName(name string) error {
	if !clusterNameRE.MatchString(name) {
		return fmt.Errorf("cluster name %q: want a lowercase letter then up to 11 lowercase letters or digits", name)
	}
	return nil
}
