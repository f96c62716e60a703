// Package model describes table inet nftguard as data: chains, rules made of
// statements (each prints as nft syntax and has one encoding), sets and
// verdict maps with their elements in the kernel's key layout. Diff plans
// the changes that turn one table into another, in an order that is valid
// as one transaction. The package is pure: no I/O, no netlink.
package model
