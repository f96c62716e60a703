// Package ownns tells nftguard's binaries the namespace they run in: the
// namespace no policy may cut off.
package ownns

import (
	"os"
	"strings"
)

// Default is the namespace config/default installs into.
const Default = "nftguard-system"

// serviceAccountFile holds the namespace of a pod's service account.
const serviceAccountFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// Namespace is POD_NAMESPACE (the manifests set it), else the service
// account's namespace, else Default.
func Namespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	if b, err := os.ReadFile(serviceAccountFile); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b))
	}
	return Default
}
