// Command coredns is CoreDNS with the plugins a cluster's kube-dns needs and
// nothing else (the upstream build links every cloud provider's DNS API). It
// serves the real-node local cluster's kube-dns Service.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// The directives in the order upstream's plugin.cfg gives them: a plugin's
// place in this list decides where it sits in every server's chain.
func init() {
	dnsserver.Directives = []string{
		"reload", "ready", "health", "errors", "log", "loadbalance", "cache", "hosts", "kubernetes",
	}
}

func main() {
	coremain.Run()
}
