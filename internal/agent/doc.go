// Package agent is nftguard's node half: it watches its node's NodeRuleSet and
// the AddressGroups it references, programs them through internal/dataplane,
// reports the outcome in the NodeRuleSet status, and names the pods and
// policies of the audit log's lines.
package agent
