package nftnl

import "github.com/nftguard/nftguard/internal/dataplane/model"

// ReadTable reads table inet nftguard from the network namespace fd refers to
// (0: the calling thread's), or returns nil when the table does not exist.
// Its String form is the same nft syntax Render's table prints, which makes
// it the way to see what a node enforces.
func ReadTable(netnsFD int) (*model.Table, error) {
	r := &reader{netns: netnsFD}
	defer r.close()
	return r.readTable()
}
