package localcluster

import (
	"context"
	"fmt"
	"net"
	"os/exec"
)

// RunInNetNS runs cmd to completion inside a named network namespace of the
// cluster (a Node's or a Pod's NetNS), as `ip netns exec` would but without
// a new mount namespace: the process is started from a thread that entered
// the namespace, so it and its children live there. Everything else about
// cmd (arguments, environment, standard streams, context) applies as usual.
func RunInNetNS(netns string, cmd *exec.Cmd) error {
	if err := inNetNS(netns, cmd.Start); err != nil {
		return err
	}
	return cmd.Wait()
}

// Node finds a node by name.
func (c *Cluster) Node(name string) (Node, bool) {
	for _, n := range c.state.snapshot().Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// DialNode connects from inside a node's network namespace, for example to
// an agent's endpoints on the node's loopback.
func (c *Cluster) DialNode(ctx context.Context, node, network, address string) (net.Conn, error) {
	n, ok := c.Node(node)
	if !ok {
		return nil, fmt.Errorf("no node %q", node)
	}
	var conn net.Conn
	err := inNetNS(n.NetNS, func() (err error) {
		var d net.Dialer
		conn, err = d.DialContext(ctx, network, address)
		return err
	})
	return conn, err
}

// WriteTokenKubeconfig writes a kubeconfig at path for the ServiceAccount
// namespace/name, with a token from the TokenRequest API, that trusts the
// API server's CA and points at server: the API server's loopback address
// (State.APIServer) from the machine's namespace, or "https://" +
// Node.APIAddress from inside a node.
func (c *Cluster) WriteTokenKubeconfig(ctx context.Context, path, server, namespace, serviceAccount string) error {
	return c.tokenKubeconfig(ctx, path, server, namespace, serviceAccount, "")
}
