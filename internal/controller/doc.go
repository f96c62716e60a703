// Package controller holds nftguard's control-plane reconcilers: one compiles
// the cluster's policies into NodeRuleSets and AddressGroups and writes only
// what changed; the other aggregates the agents' programming status into
// DefaultDeny status and NetworkPolicy events.
package controller
