package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/nftguard/nftguard/internal/cni"
)

// errStatusUnavailable is the CNI STATUS error code "the plugin is not
// available": it cannot serve ADD.
const errStatusUnavailable = 50

// netConf is the plugin's configuration: the standard fields, and where
// and how long to wait for the agent.
type netConf struct {
	types.PluginConf
	// Socket is the agent's unix socket (default cni.DefaultSocket).
	Socket string `json:"socket,omitempty"`
	// Timeout bounds each request to the agent, as a Go duration such as
	// "10s" (default cni.DefaultTimeout).
	Timeout string `json:"timeout,omitempty"`
	// StateDir is the agent's state directory, where a DEL the agent
	// cannot take is recorded for it to replay (none when empty).
	StateDir string `json:"stateDir,omitempty"`

	timeout time.Duration
}

// parseConf decodes the configuration on stdin and fills in defaults; the
// prevResult is left raw (see parsePrevResult).
func parseConf(stdin []byte) (*netConf, error) {
	conf := &netConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "decoding the nftguard network configuration", err.Error())
	}
	if conf.Socket == "" {
		conf.Socket = cni.DefaultSocket
	}
	conf.timeout = cni.DefaultTimeout
	if conf.Timeout != "" {
		d, err := time.ParseDuration(conf.Timeout)
		if err != nil || d <= 0 {
			return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("nftguard timeout %q is not a positive duration such as \"10s\"", conf.Timeout), "")
		}
		conf.timeout = d
	}
	return conf, nil
}

// parsePrevResult decodes the pod network plugin's result, which ADD and
// CHECK need.
func (c *netConf) parsePrevResult() error {
	if c.RawPrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "nftguard must be chained after the pod network plugin",
			"its configuration has no prevResult: put nftguard after the pod network plugin in the conflist's plugins")
	}
	if err := version.ParsePrevResult(&c.PluginConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, "decoding the pod network plugin's result", err.Error())
	}
	return nil
}

// client returns a client of the agent whose requests give up after the
// configured timeout.
func (c *netConf) client() *cni.Client { return cni.NewClient(c.Socket, c.timeout) }

// podArgs are the CNI_ARGS Kubernetes runtimes pass (the field names are
// the argument names); others are ignored.
type podArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE types.UnmarshallableString
	K8S_POD_NAME      types.UnmarshallableString
	K8S_POD_UID       types.UnmarshallableString
}

func parseArgs(s string) (podArgs, error) {
	var a podArgs
	a.IgnoreUnknown = true
	if err := types.LoadArgs(s, &a); err != nil {
		return podArgs{}, types.NewError(types.ErrInvalidEnvironmentVariables, "parsing CNI_ARGS", err.Error())
	}
	return a, nil
}

// attachment describes the runtime's request; IPs are left to the caller.
func attachment(args *skel.CmdArgs, pod podArgs) cni.Attachment {
	return cni.Attachment{
		ContainerID: args.ContainerID,
		IfName:      args.IfName,
		PodUID:      string(pod.K8S_POD_UID),
		Namespace:   string(pod.K8S_POD_NAMESPACE),
		Name:        string(pod.K8S_POD_NAME),
		Netns:       args.Netns,
	}
}

// sandboxAddresses returns the addresses a result gives the sandbox: those
// of interfaces inside it, and those whose interface the result does not
// say (a plugin may leave the index out).
func sandboxAddresses(prev types.Result) ([]netip.Addr, error) {
	r, err := types100.NewResultFromResult(prev)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "converting the pod network plugin's result", err.Error())
	}
	var out []netip.Addr
	for _, ipc := range r.IPs {
		if i := ipc.Interface; i != nil && *i >= 0 && *i < len(r.Interfaces) && r.Interfaces[*i].Sandbox == "" {
			continue // on the host side of the pair
		}
		addr, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			return nil, types.NewError(types.ErrDecodingFailure, "the pod network plugin's result has an invalid address", ipc.Address.String())
		}
		out = append(out, addr.Unmap())
	}
	return out, nil
}

// hostInterfaces returns the interfaces a result puts on the host side
// (no sandbox): the host end of the pod's veth pair, a bridge.
func hostInterfaces(prev types.Result) ([]string, error) {
	r, err := types100.NewResultFromResult(prev)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "converting the pod network plugin's result", err.Error())
	}
	var out []string
	for _, i := range r.Interfaces {
		if i == nil || i.Sandbox != "" || i.Name == "" {
			continue
		}
		if !cni.ValidIfname(i.Name) {
			return nil, types.NewError(types.ErrDecodingFailure, "the pod network plugin's result has an invalid interface name", i.Name)
		}
		out = append(out, i.Name)
	}
	return out, nil
}

// podAttachment is what ADD and CHECK send: the request, the pod (whose UID
// is required) and the sandbox's addresses from prevResult.
func podAttachment(args *skel.CmdArgs) (*netConf, cni.Attachment, error) {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return nil, cni.Attachment{}, err
	}
	if err := conf.parsePrevResult(); err != nil {
		return nil, cni.Attachment{}, err
	}
	pod, err := parseArgs(args.Args)
	if err != nil {
		return nil, cni.Attachment{}, err
	}
	if pod.K8S_POD_UID == "" {
		return nil, cni.Attachment{}, types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_ARGS has no K8S_POD_UID",
			"nftguard identifies pods by UID; the container runtime must pass K8S_POD_UID (containerd and CRI-O do)")
	}
	a := attachment(args, pod)
	if a.IPs, err = sandboxAddresses(conf.PrevResult); err != nil {
		return nil, cni.Attachment{}, err
	}
	if a.HostInterfaces, err = hostInterfaces(conf.PrevResult); err != nil {
		return nil, cni.Attachment{}, err
	}
	return conf, a, nil
}

// agentError turns a Client error into a CNI error: code when the agent
// gave no answer (naming the socket), ErrInternal when it refused.
func agentError(conf *netConf, what string, code uint, err error) error {
	if errors.Is(err, cni.ErrUnavailable) {
		return types.NewError(code, fmt.Sprintf("nftguard agent not reachable at %s: %s", conf.Socket, what), err.Error())
	}
	return types.NewError(types.ErrInternal, "nftguard agent refused: "+what, err.Error())
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, a, err := podAttachment(args)
	if err != nil {
		return err
	}
	if err := conf.client().Add(context.Background(), a); err != nil {
		// The runtime retries ADD: the pod starts once the agent runs.
		return agentError(conf, "the pod cannot start before the agent programs it", types.ErrTryAgainLater, err)
	}
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	pod, err := parseArgs(args.Args)
	if err != nil {
		// The key is enough to delete.
		fmt.Fprintf(os.Stderr, "nftguard: DEL of %s/%s: %v\n", args.ContainerID, args.IfName, err)
	}
	a := attachment(args, pod)
	err = conf.client().Del(context.Background(), a)
	if errors.Is(err, cni.ErrUnavailable) {
		// The agent replays the recorded DEL when it runs again, before it
		// takes ADDs, so that the address is not left ready for this pod
		// until GC; failing would only hold up the pod's teardown.
		fmt.Fprintf(os.Stderr, "nftguard: DEL of %s/%s succeeds without the agent, which replays it when it runs: %v\n",
			args.ContainerID, args.IfName, err)
		if conf.StateDir != "" {
			if err := cni.RecordDeleted(conf.StateDir, a.Key(), time.Now()); err != nil {
				fmt.Fprintf(os.Stderr, "nftguard: %v; the agent's GC removes the attachment\n", err)
			}
		}
		return nil
	}
	if err != nil {
		return agentError(conf, "deleting the attachment", types.ErrInternal, err)
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, a, err := podAttachment(args)
	if err != nil {
		return err
	}
	if err := conf.client().Check(context.Background(), a); err != nil {
		return agentError(conf, "checking the attachment", types.ErrTryAgainLater, err)
	}
	return nil
}

func cmdGC(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	valid := make([]cni.AttachmentKey, len(conf.ValidAttachments))
	for i, v := range conf.ValidAttachments {
		valid[i] = cni.AttachmentKey{ContainerID: v.ContainerID, IfName: v.IfName}
	}
	if err := conf.client().GC(context.Background(), valid); err != nil {
		return agentError(conf, "collecting stale attachments", types.ErrTryAgainLater, err)
	}
	return nil
}

func cmdStatus(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if err := conf.client().Status(context.Background()); err != nil {
		if errors.Is(err, cni.ErrUnavailable) {
			return types.NewError(errStatusUnavailable, fmt.Sprintf("nftguard agent not reachable at %s: pods cannot start", conf.Socket), err.Error())
		}
		return types.NewError(errStatusUnavailable, "nftguard agent not ready for pods", err.Error())
	}
	return nil
}
