// Package dataplane owns the node's nftables table, inet nftguard: Render turns
// a NodeRuleSet and its AddressGroups into a model of that table (pure, with an
// nft-syntax dump for golden tests), and Programmer writes the model to the
// kernel as deltas, each one atomic netlink transaction, adopting and repairing
// whatever table it finds. It is the only package that imports
// github.com/google/nftables; the NFLOG prefix format lives in the pure
// sub-package prefix so that readers of the log need not import it.
package dataplane
