package localcluster

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// blackholeTable is the table BlackholeAPIServer writes in the control
// plane's network namespace.
const blackholeTable = "localcluster-blackhole"

// BlackholeAPIServer makes the real-node cluster's API server unreachable
// the way a dead network path is: in the control plane's network namespace
// every packet to its port that does not come over loopback is dropped,
// with no reset, established connections included. The control plane's own
// components and the harness (which reach it over loopback) keep it. The
// returned function lifts it.
func (c *Cluster) BlackholeAPIServer() (lift func() error, err error) {
	if c.apiURL == "" || c.cfg.Name == "" {
		return nil, errors.New("no cluster")
	}
	ns, err := netns.GetFromPath(netnsPath(controlPlaneNetNS(c.cfg.Name)))
	if err != nil {
		return nil, fmt.Errorf("the control plane's network namespace (real nodes only): %w", err)
	}
	defer ns.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return nil, err
	}
	tab := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: blackholeTable})
	prio := nftables.ChainPriority(-300)
	policy := nftables.ChainPolicyAccept
	ch := conn.AddChain(&nftables.Chain{Name: "input", Table: tab, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: &prio, Policy: &policy})
	lo := make([]byte, unix.IFNAMSIZ)
	copy(lo, "lo")
	// iifname != "lo" meta l4proto tcp tcp dport 6443 drop
	conn.AddRule(&nftables.Rule{Table: tab, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: lo},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(apiServerPort)},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	if err := conn.Flush(); err != nil {
		return nil, fmt.Errorf("writing the blackhole: %w", err)
	}
	return func() error {
		ns, err := netns.GetFromPath(netnsPath(controlPlaneNetNS(c.cfg.Name)))
		if err != nil {
			return err
		}
		defer ns.Close()
		conn, err := nftables.New(nftables.WithNetNSFd(int(ns)))
		if err != nil {
			return err
		}
		conn.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: blackholeTable})
		return conn.Flush()
	}, nil
}

// APIServerAddress is the address the real-node cluster's nodes and pods
// reach the API server at (in the control plane's network namespace).
func (c *Cluster) APIServerAddress() netip.AddrPort {
	return netip.AddrPortFrom(controlPlaneIPv4, apiServerPort)
}
