// Package dataplane is the node's nftables table, inet nftguard, in three
// packages whose imports keep rendering pure:
//
//   - model describes the table as data (chains, rules as statements, sets
//     and maps with their elements) and plans the changes from one table to
//     another (Diff). It does no I/O.
//   - render turns a NodeRuleSet and its AddressGroups into a model table,
//     and keeps what it built for the next render (Renderer). It does no
//     I/O either.
//   - nftnl talks nf_tables over netlink: it encodes a plan as one batch,
//     decodes the kernel's table back into the model, and its Programmer
//     applies tables as deltas. It is the only package of the three that
//     imports netlink or the kernel's constants.
//
// Package prefix holds the NFLOG prefix format, which readers of the drop
// log share; dptest holds the test fixtures of all of them. The test of this
// package checks the import boundaries.
package dataplane
