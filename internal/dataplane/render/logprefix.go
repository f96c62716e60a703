package render

import "github.com/nftguard/nftguard/internal/dataplane/prefix"

// PodKey is the key of a pod in NFLOG prefixes (see package prefix, which
// readers of the log can import without google/nftables).
func PodKey(namespace, name string) string { return prefix.PodKey(namespace, name) }
