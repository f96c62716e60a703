package v1alpha1

import "strings"

// groupNameLen is the length of an AddressGroup's name as the controller
// makes it: "ag-" and 16 hex digits.
const groupNameLen = 3 + 16

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
