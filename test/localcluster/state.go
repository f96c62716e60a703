package localcluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// StateFile is the name of the state file in a cluster's state directory.
const StateFile = "state.json"

const stateVersion = 1

// State is everything a cluster created, written to the state directory
// before each thing is created, so that Down (or Cleanup after a crash) can
// remove exactly that: processes by recorded pid and start time, network
// namespaces by recorded name.
type State struct {
	Version int       `json:"version"`
	Name    string    `json:"name"`
	Dir     string    `json:"dir"`
	Created time.Time `json:"created"`
	// Owner, when set, is the process the cluster lives and dies with (a
	// test binary): a cluster whose owner is gone is swept by SweepStale.
	Owner *ProcessRef `json:"owner,omitempty"`
	// Fingerprint identifies the configuration the cluster was started
	// with (topology, binaries, options).
	Fingerprint string `json:"fingerprint,omitempty"`
	// Ready is set once Up has finished.
	Ready bool `json:"ready"`

	APIServer  string `json:"apiServer,omitempty"`
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// Agents tells whether an agent runs on every node.
	Agents bool `json:"agents"`

	// RealNodes tells whether the nodes run kubelet and containerd.
	RealNodes bool `json:"realNodes,omitempty"`
	// Cgroups are the real nodes' cgroup roots, created in every
	// hierarchy and removed on teardown.
	Cgroups []string `json:"cgroups,omitempty"`

	NetNS     []string     `json:"netns"`
	Processes []ProcessRef `json:"processes"`
	Nodes     []Node       `json:"nodes"`
	Pods      []Pod        `json:"pods"`
	Topology  *Topology    `json:"topology,omitempty"`
}

// ProcessRef identifies a process the cluster started. A pid alone could
// have been reused by then; the pid and the process's start time (in clock
// ticks since boot, from /proc/<pid>/stat) cannot.
type ProcessRef struct {
	Role      string   `json:"role"`
	Name      string   `json:"name,omitempty"`
	PID       int      `json:"pid"`
	StartTime uint64   `json:"startTime"`
	NetNS     string   `json:"netns,omitempty"`
	Log       string   `json:"log,omitempty"`
	Args      []string `json:"args,omitempty"`
}

// Node is a node of the running cluster.
type Node struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
	NetNS string `json:"netns"`
	// Underlay addresses (the node's InternalIPs).
	IPv4 netip.Addr `json:"ipv4"`
	IPv6 netip.Addr `json:"ipv6"`
	// Pod CIDRs routed to this node.
	PodCIDRv4 netip.Prefix `json:"podCIDRv4"`
	PodCIDRv6 netip.Prefix `json:"podCIDRv6"`
	// APIAddress is where the node's agent reaches the API server, inside
	// the node's network namespace.
	APIAddress string `json:"apiAddress,omitempty"`
	// AuditLog is the agent's drop log.
	AuditLog string            `json:"auditLog,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
}

// Pod is a pod of the running cluster.
type Pod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// UID is the Pod object's, once it is created.
	UID      string            `json:"uid,omitempty"`
	Node     string            `json:"node"`
	NetNS    string            `json:"netns"`
	HostVeth string            `json:"hostVeth"`
	IPv4     netip.Addr        `json:"ipv4"`
	IPv6     netip.Addr        `json:"ipv6"`
	Labels   map[string]string `json:"labels,omitempty"`
	Ports    []PortSpec        `json:"ports,omitempty"`
	// ServiceIP is the ClusterIP of the pod's own Service (real nodes).
	ServiceIP netip.Addr `json:"serviceIP,omitzero"`
}

// Key is the pod's "namespace/name".
func (p Pod) Key() string { return p.Namespace + "/" + p.Name }

// IP is the pod's address of one family.
func (p Pod) IP(f Family) netip.Addr {
	if f == IPv6 {
		return p.IPv6
	}
	return p.IPv4
}

// stateStore writes the state atomically; it is safe for concurrent use.
type stateStore struct {
	mu    sync.Mutex
	path  string
	state *State
}

func (s *stateStore) update(fn func(*State)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fn != nil {
		fn(s.state)
	}
	return writeState(s.path, s.state)
}

func (s *stateStore) snapshot() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, _ := json.Marshal(s.state)
	var out State
	_ = json.Unmarshal(b, &out)
	return out
}

func writeState(path string, st *State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ReadState reads the state file of the cluster in dir. It returns an error
// satisfying errors.Is(err, os.ErrNotExist) when there is none.
func ReadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if err != nil {
		return nil, err
	}
	st := &State{}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, StateFile), err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("%s: state version %d, want %d (remove the directory after checking `ip netns list` and ps)",
			filepath.Join(dir, StateFile), st.Version, stateVersion)
	}
	return st, nil
}

// Exists reports whether dir holds a cluster's state file.
func Exists(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, StateFile))
	return !errors.Is(err, os.ErrNotExist)
}
