// Package render builds the model of table inet nftguard for one node from
// its NodeRuleSet and the AddressGroups the rule set references: the base
// chains and verdict maps, a chain per isolated pod direction, port
// dispatch, a chain per rule, and the address sets (shared tagged sets for
// plain groups). Renderer keeps what it built and rebuilds only what
// changed. The package is pure: no I/O, no netlink.
package render
