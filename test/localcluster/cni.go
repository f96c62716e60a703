package localcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// The namespace-only cluster plays the container runtime for the nftguard
// CNI plugin: it sets a pod's addresses up itself (as the pod network
// plugin would), then runs the plugin binary with the ADD the runtime
// would send, the pod network's result as prevResult. DEL runs before the
// pod's network namespace goes.

// cniNetwork is the network name in the configuration the plugin gets.
const cniNetwork = "nftguard-local"

// cniEnabled reports whether the agents run with the CNI plugin.
func (c *Cluster) cniEnabled() bool { return c.cfg.CNIPlugin != "" && c.cfg.Agent != "" }

// cniDir is a node's directory for the agent's socket and registry.
func (c *Cluster) cniDir(node string) string { return filepath.Join(c.cfg.StateDir, "nodes", node) }

// cniSocket is where a node's agent listens for the plugin.
func (c *Cluster) cniSocket(node string) string { return filepath.Join(c.cniDir(node), "cni.sock") }

// cniStateDir is a node's agent's state directory.
func (c *Cluster) cniStateDir(node string) string { return filepath.Join(c.cniDir(node), "cni") }

// cniAgentArgs are the agent flags that turn the plugin on.
func (c *Cluster) cniAgentArgs(n Node) ([]string, error) {
	if !c.cniEnabled() {
		return nil, nil
	}
	if err := os.MkdirAll(c.cniDir(n.Name), 0o700); err != nil {
		return nil, err
	}
	return []string{
		"--cni-socket=" + c.cniSocket(n.Name),
		"--cni-state-dir=" + c.cniStateDir(n.Name),
		"--namespace=" + systemNamespace,
	}, nil
}

// sandboxID is the container ID the runtime would give the pod's sandbox:
// one per pod object, so a pod re-created under its name gets another.
func sandboxID(p Pod) string { return "sandbox-" + p.UID }

// cniConfig is the network configuration the plugin reads, with the pod
// network's result for the pod.
func (c *Cluster) cniConfig(p Pod) ([]byte, error) {
	res := &current.Result{
		CNIVersion: "1.0.0",
		Interfaces: []*current.Interface{{Name: podInterface, Sandbox: netnsPath(p.NetNS)}},
	}
	idx := 0
	for _, a := range []struct {
		ip   net.IP
		bits int
	}{{p.IPv4.AsSlice(), 32}, {p.IPv6.AsSlice(), 128}} {
		res.IPs = append(res.IPs, &current.IPConfig{Interface: &idx, Address: net.IPNet{IP: a.ip, Mask: net.CIDRMask(a.bits, a.bits)}})
	}
	return json.Marshal(map[string]any{
		"cniVersion": "1.0.0",
		"name":       cniNetwork,
		"type":       "nftguard",
		"socket":     c.cniSocket(p.Node),
		"stateDir":   c.cniStateDir(p.Node),
		"prevResult": res,
	})
}

func (c *Cluster) cniArgs(command string, p Pod) *invoke.Args {
	return &invoke.Args{
		Command:     command,
		ContainerID: sandboxID(p),
		NetNS:       netnsPath(p.NetNS),
		IfName:      podInterface,
		PluginArgsStr: strings.Join([]string{"IgnoreUnknown=1", "K8S_POD_NAMESPACE=" + p.Namespace, "K8S_POD_NAME=" + p.Name,
			"K8S_POD_INFRA_CONTAINER_ID=" + sandboxID(p), "K8S_POD_UID=" + p.UID}, ";"),
		Path: filepath.Dir(c.cfg.CNIPlugin),
	}
}

// cniAdd runs the plugin's ADD for a pod whose addresses are set up. It
// returns once the pod's agent has programmed it (or held it, when its
// rule set does not list it yet).
func (c *Cluster) cniAdd(ctx context.Context, p Pod) error {
	if !c.cniEnabled() {
		return nil
	}
	conf, err := c.cniConfig(p)
	if err != nil {
		return err
	}
	if _, err := invoke.ExecPluginWithResult(ctx, c.cfg.CNIPlugin, conf, c.cniArgs("ADD", p), nil); err != nil {
		return fmt.Errorf("pod %s: CNI ADD: %w", p.Key(), err)
	}
	return nil
}

// cniDel runs the plugin's DEL for a pod, before its network goes.
func (c *Cluster) cniDel(ctx context.Context, p Pod) error {
	if !c.cniEnabled() || p.UID == "" {
		return nil
	}
	conf, err := c.cniConfig(p)
	if err != nil {
		return err
	}
	if err := invoke.ExecPluginWithoutResult(ctx, c.cfg.CNIPlugin, conf, c.cniArgs("DEL", p), nil); err != nil {
		return fmt.Errorf("pod %s: CNI DEL: %w", p.Key(), err)
	}
	return nil
}
