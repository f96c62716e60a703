package v1alpha1

import "strings"

// groupNameLen is the length of an AddressGroup's name as the controller
// makes it: "ag-" and 16 hex digits.
const groupNameLen = 3 + 16

// IsAddressGroupName reports whether name has the form of a group's name as
// the controller makes it ("ag-" and 16 hex digits), not of a shard's.
func IsAddressGroupName(name string) bool {
	return len(name) == groupNameLen && strings.HasPrefix(name, "ag-")
}

// LogicalAddressGroup returns the name of the group an AddressGroup object
// belongs to. The controller splits a group with many members into shards
// named <group>-<count>-<index>; every shard of a group carries the same
// selector, and a rule that allows the group references all of them. For
// any other name it returns the name itself.
func LogicalAddressGroup(name string) string {
	if len(name) > groupNameLen && name[groupNameLen] == '-' && strings.HasPrefix(name, "ag-") {
		return name[:groupNameLen]
	}
	return name
}

// NetworkPolicyKey names a NetworkPolicy as rule sets, drop log lines,
// events and the plugin do: "NetworkPolicy/<namespace>/<name>".
func NetworkPolicyKey(namespace, name string) string {
	return "NetworkPolicy/" + namespace + "/" + name
}

// DefaultDenyKey names a DefaultDeny as rule sets, drop log lines, events
// and the plugin do: "DefaultDeny/<name>".
func DefaultDenyKey(name string) string { return "DefaultDeny/" + name }
