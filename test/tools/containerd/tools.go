//go:build tools

// Package tools pins containerd v2 and the CNI plugins that the real-node
// local cluster runs. containerd's go.mod carries exclude lines, which make
// `go install module@version` refuse it; a module of our own that requires it
// builds its commands instead. It is a module of its own so that containerd's
// dependencies never move those of the Kubernetes components in ../go.mod.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/containernetworking/plugins/plugins/main/ptp"
)
