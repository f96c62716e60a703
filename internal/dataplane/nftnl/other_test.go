package nftnl

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
)

// writeOtherTable creates table inet other with one chain, one rule and one
// set element, as another program would.
func writeOtherTable(ns netns.NsHandle) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return err
	}
	t := c.AddTable(&nftables.Table{Name: "other", Family: nftables.TableFamilyINet})
	ch := c.AddChain(&nftables.Chain{Name: "in", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{&expr.Counter{}}})
	s := &nftables.Set{Table: t, Name: "s", KeyType: nftables.TypeIPAddr}
	if err := c.AddSet(s, []nftables.SetElement{{Key: []byte{198, 18, 9, 9}}}); err != nil {
		return err
	}
	return c.Flush()
}

func checkOtherTable(ns netns.NsHandle) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: "other", Family: nftables.TableFamilyINet}
	rules, err := c.GetRules(t, &nftables.Chain{Name: "in", Table: t})
	if err != nil || len(rules) != 1 {
		return fmt.Errorf("table other: %d rules, %v", len(rules), err)
	}
	elems, err := c.GetSetElements(&nftables.Set{Table: t, Name: "s"})
	if err != nil || len(elems) != 1 {
		return fmt.Errorf("table other: %d elements, %v", len(elems), err)
	}
	return nil
}
