// Command nftguard is nftguard's CNI plugin. Chained after the pod network
// plugin, it tells the node's agent, over a unix socket, which addresses the
// pod network plugin gave each pod (with the pod's UID, namespace and name),
// so that the agent programs the pod before it sends its first packet. ADD
// fails while the agent is not reachable: the runtime retries, and the pod
// does not start unprotected. See docs/cni-plugin.md.
package main

import (
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/nftguard/nftguard/internal/cni"
)

// supported are the CNI spec versions the plugin speaks (GC and STATUS
// need 1.1.0).
var supported = version.PluginSupports(cni.SupportedVersions...)

func main() { os.Exit(run()) }

func run() int {
	funcs := skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus}
	if e := skel.PluginMainFuncsWithError(funcs, supported, "CNI plugin nftguard: tells the nftguard agent each pod's addresses (chain it after the pod network plugin)"); e != nil {
		if err := e.Print(); err != nil {
			fmt.Fprintf(os.Stderr, "nftguard: writing the error result: %v\n", err)
		}
		return 1
	}
	return 0
}
