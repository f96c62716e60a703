// Package nftnl talks nf_tables over netlink for table inet nftguard: it
// encodes model plans straight into netlink batches, decodes the kernel's
// table straight back into the model, splits plans too large for one batch,
// and its Programmer applies desired tables as deltas, adopting and
// repairing whatever table it finds. It never touches another table.
package nftnl
