package dataplane

import "github.com/nftguard/nftguard/internal/dataplane/prefix"

// PodKey is the key of a pod in NFLOG prefixes (see package prefix, which
// readers of the log can import without google/nftables).
func PodKey(namespace, name string) string { return prefix.PodKey(namespace, name) }

// FormatPrefix returns the NFLOG prefix nftguard:<action>:<dir>:<podkey>.
func FormatPrefix(action prefix.Action, dir prefix.Direction, podKey string) string {
	return prefix.Format(action, dir, podKey)
}

// ParsePrefix decodes an NFLOG prefix written by FormatPrefix.
func ParsePrefix(s string) (prefix.Fields, error) { return prefix.Parse(s) }
