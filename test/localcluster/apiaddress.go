package localcluster

import "net/netip"

// APIServerAddress is the address the real-node cluster's nodes and pods
// reach the API server at (in the control plane's network namespace).
func (c *Cluster) APIServerAddress() netip.AddrPort {
	return netip.AddrPortFrom(controlPlaneIPv4, apiServerPort)
}

// ControlPlaneNetNS is the name of the real-node cluster's control plane
// network namespace (see NetNSPath).
func (c *Cluster) ControlPlaneNetNS() string { return controlPlaneNetNS(c.cfg.Name) }
