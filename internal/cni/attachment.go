package cni

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// DefaultSocket is where the agent listens and the plugin connects unless
// configured otherwise.
const DefaultSocket = "/run/nftguard/cni.sock"

// PluginType is the plugin's binary name and its "type" in a conflist.
const PluginType = "nftguard"

// SupportedVersions are the CNI spec versions the plugin speaks; a network
// configuration of another version cannot chain it.
var SupportedVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

// Attachment is one CNI attachment of a pod: what the runtime told the
// plugin, and the addresses the pod network plugin gave the sandbox.
type Attachment struct {
	// ContainerID and IfName are CNI_CONTAINERID and CNI_IFNAME: together
	// they identify the attachment (see Key).
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	// PodUID, Namespace and Name come from the K8S_POD_* CNI_ARGS.
	PodUID    string `json:"podUID,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// IPs are the addresses of the sandbox's interfaces in the pod network
	// plugin's result.
	IPs []netip.Addr `json:"ips,omitempty"`
	// Netns is CNI_NETNS, the sandbox's network namespace path.
	Netns string `json:"netns,omitempty"`
	// HostInterfaces are the interfaces on the node's side that the pod
	// network plugin's result names (the host end of a veth pair, a
	// bridge): what the pod's packets arrive on.
	HostInterfaces []string `json:"hostInterfaces,omitempty"`
}

// AttachmentKey identifies a CNI attachment: the runtime never runs two
// operations for the same key at once, and GC names attachments by it.
type AttachmentKey struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// Key returns the attachment's identity.
func (a Attachment) Key() AttachmentKey {
	return AttachmentKey{ContainerID: a.ContainerID, IfName: a.IfName}
}

// String returns "containerID/ifName".
func (k AttachmentKey) String() string { return k.ContainerID + "/" + k.IfName }

// validate checks that the key is complete.
func (k AttachmentKey) validate() error {
	if k.ContainerID == "" {
		return errors.New("attachment has no container ID")
	}
	if k.IfName == "" {
		return errors.New("attachment has no interface name")
	}
	return nil
}

// validate checks what ADD and CHECK need: a complete key, a pod UID and
// valid addresses.
func (a Attachment) validate() error {
	if err := a.Key().validate(); err != nil {
		return err
	}
	if a.PodUID == "" {
		return fmt.Errorf("attachment %s has no pod UID", a.Key())
	}
	for _, ip := range a.IPs {
		if !ip.IsValid() {
			return fmt.Errorf("attachment %s has an invalid address", a.Key())
		}
	}
	for _, name := range a.HostInterfaces {
		if !ValidIfname(name) {
			return fmt.Errorf("attachment %s has an invalid host interface name %q", a.Key(), name)
		}
	}
	return nil
}

// normalizeIPs returns the addresses without IPv4-mapped forms or zones,
// sorted and without duplicates, in a new slice.
func normalizeIPs(ips []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(ips))
	for _, ip := range ips {
		out = append(out, ip.Unmap().WithZone(""))
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// ValidIfname reports whether name can be a Linux interface name: 1 to 15
// bytes, none of them NUL, '/' or white space.
func ValidIfname(name string) bool {
	if name == "" || len(name) > 15 || name == "." || name == ".." {
		return false
	}
	return !strings.ContainsAny(name, "\x00/ \t\n")
}
