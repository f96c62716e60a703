package realnodes

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/test/localcluster"
)

// blackholeTable is the table blackholeAPIServer writes in the control
// plane's network namespace.
const blackholeTable = "localcluster-blackhole"

// blackholeAPIServer makes the real-node cluster's API server unreachable
// the way a dead network path is: in the control plane's network namespace
// every packet to its port that does not come over loopback is dropped,
// with no reset, established connections included. The control plane's own
// components and the harness (which reach it over loopback) keep it. The
// returned function lifts it.
func blackholeAPIServer(c *localcluster.Cluster) (lift func() error, err error) {
	path := localcluster.NetNSPath(c.ControlPlaneNetNS())
	conn, closeNS, err := nftIn(path)
	if err != nil {
		return nil, err
	}
	defer closeNS()
	tab := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: blackholeTable})
	prio := nftables.ChainPriority(-300)
	policy := nftables.ChainPolicyAccept
	ch := conn.AddChain(&nftables.Chain{Name: "input", Table: tab, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: &prio, Policy: &policy})
	lo := make([]byte, unix.IFNAMSIZ)
	copy(lo, "lo")
	// iifname != "lo" meta l4proto tcp tcp dport <port> drop
	conn.AddRule(&nftables.Rule{Table: tab, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: lo},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(c.APIServerAddress().Port())},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	if err := conn.Flush(); err != nil {
		return nil, fmt.Errorf("writing the blackhole: %w", err)
	}
	return func() error {
		conn, closeNS, err := nftIn(path)
		if err != nil {
			return err
		}
		defer closeNS()
		conn.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: blackholeTable})
		return conn.Flush()
	}, nil
}

// nftIn opens an nftables connection in the network namespace at path.
func nftIn(path string) (*nftables.Conn, func(), error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, nil, fmt.Errorf("network namespace %s: %w", path, err)
	}
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		ns.Close()
		return nil, nil, err
	}
	return conn, func() { ns.Close() }, nil
}
