// Package compiler turns a snapshot of Pods, Namespaces, Nodes, NetworkPolicies
// and DefaultDenies into the desired state nftguard writes: one NodeRuleSet spec
// per node, the AddressGroups those rule sets reference, and the span of every
// policy. It is pure and deterministic (no client, no I/O, sorted output), and
// offers both a one-shot Compile and an incremental Engine with the same result.
package compiler
