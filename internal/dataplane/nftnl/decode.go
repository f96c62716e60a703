package nftnl

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// reader reads table inet nftguard back from the kernel with plain netlink
// dumps. Every request names the table, so no other table is ever read.
// (google/nftables v0.3.0 lists chains of every table, decodes the key type
// of a verdict map as its data type, and drops the verdicts of map
// elements; this reader has none of those gaps.)
type reader struct {
	netns int // network namespace fd; 0 for the current one
	nl    *netlink.Conn
}

func (r *reader) close() {
	if r.nl != nil {
		_ = r.nl.Close()
		r.nl = nil
	}
}

func (r *reader) request(msgType uint16, dump bool, attrs ...netlink.Attribute) ([]netlink.Message, error) {
	if r.nl == nil {
		c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: r.netns})
		if err != nil {
			return nil, fmt.Errorf("opening netfilter netlink socket: %w", err)
		}
		r.nl = c
	}
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, err
	}
	flags := netlink.Request
	if dump {
		flags |= netlink.Dump
	}
	msgs, err := r.nl.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | int(msgType)), Flags: flags},
		Data:   append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, data...),
	})
	if err != nil {
		if !netlink.IsNotExist(err) {
			r.close() // the socket may hold the rest of a reply
		}
		return nil, err
	}
	return msgs, nil
}

func strAttr(typ uint16, s string) netlink.Attribute {
	return netlink.Attribute{Type: typ, Data: append([]byte(s), 0)}
}

func decoder(m netlink.Message) (*netlink.AttributeDecoder, error) {
	if len(m.Data) < 4 {
		return nil, errors.New("short nftables message")
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	return ad, nil
}

// tableExists reports whether table inet nftguard exists.
func (r *reader) tableExists() (bool, error) {
	_, err := r.request(unix.NFT_MSG_GETTABLE, false, strAttr(unix.NFTA_TABLE_NAME, model.TableName))
	if netlink.IsNotExist(err) {
		return false, nil
	}
	return err == nil, err
}

// chains returns the table's chains, without rules, in kernel order.
func (r *reader) chains() ([]*model.Chain, error) {
	msgs, err := r.request(unix.NFT_MSG_GETCHAIN, true, strAttr(unix.NFTA_CHAIN_TABLE, model.TableName))
	if err != nil {
		return nil, fmt.Errorf("listing chains: %w", err)
	}
	var out []*model.Chain
	for _, m := range msgs {
		ad, err := decoder(m)
		if err != nil {
			return nil, err
		}
		var name, typ string
		var hooked, hasPolicy bool
		var hook, policy uint32
		var prio int32
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_CHAIN_NAME:
				name = ad.String()
			case unix.NFTA_CHAIN_TYPE:
				typ = ad.String()
			case unix.NFTA_CHAIN_POLICY:
				policy, hasPolicy = ad.Uint32(), true
			case unix.NFTA_CHAIN_HOOK:
				hooked = true
				ad.Nested(func(hd *netlink.AttributeDecoder) error {
					hd.ByteOrder = binary.BigEndian
					for hd.Next() {
						switch hd.Type() {
						case unix.NFTA_HOOK_HOOKNUM:
							hook = hd.Uint32()
						case unix.NFTA_HOOK_PRIORITY:
							prio = int32(hd.Uint32())
						}
					}
					return nil
				})
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decoding chain: %w", err)
		}
		out = append(out, kernelChain(name, hooked, typ, hook, prio, hasPolicy, policy))
	}
	return out, nil
}

// rules returns the rules of one chain, or of every chain of the table when
// chain is empty, keyed by chain name, in order, with handles and ids.
func (r *reader) rules(chain string) (map[string][]*model.Rule, error) {
	attrs := []netlink.Attribute{strAttr(unix.NFTA_RULE_TABLE, model.TableName)}
	if chain != "" {
		attrs = append(attrs, strAttr(unix.NFTA_RULE_CHAIN, chain))
	}
	msgs, err := r.request(unix.NFT_MSG_GETRULE, true, attrs...)
	if err != nil {
		return nil, fmt.Errorf("listing rules: %w", err)
	}
	out := map[string][]*model.Rule{}
	for _, m := range msgs {
		ad, err := decoder(m)
		if err != nil {
			return nil, err
		}
		var name, comment string
		var exprs []rawExpr
		var exprErr error
		var handle uint64
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_RULE_CHAIN:
				name = ad.String()
			case unix.NFTA_RULE_HANDLE:
				handle = ad.Uint64()
			case unix.NFTA_RULE_USERDATA:
				comment = commentOf(ad.Bytes())
			case unix.NFTA_RULE_EXPRESSIONS:
				exprs, exprErr = parseExprs(ad.Bytes())
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decoding rule: %w", err)
		}
		// A rule is nftguard's when its expressions decode to statements
		// whose id is the one in its comment. Anything else (added by
		// hand, changed, written by an incompatible version) never equals
		// a rendered rule, so it is replaced.
		var stmts []model.Stmt
		id := fmt.Sprintf("foreign-%d", handle)
		if s, ok := decompile(exprs); ok && exprErr == nil {
			stmts = s
			if model.KernelRule(stmts, "", 0).ID() == comment {
				id = comment
			}
		}
		out[name] = append(out[name], model.KernelRule(stmts, id, handle))
	}
	return out, nil
}

// sets returns the table's sets and maps with their elements.
func (r *reader) sets() ([]*model.Set, error) {
	msgs, err := r.request(unix.NFT_MSG_GETSET, true, strAttr(unix.NFTA_SET_TABLE, model.TableName))
	if err != nil {
		return nil, fmt.Errorf("listing sets: %w", err)
	}
	var out []*model.Set
	for _, m := range msgs {
		ad, err := decoder(m)
		if err != nil {
			return nil, err
		}
		var name string
		var flags, keyType, keyLen, dataType, capacity uint32
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_SET_NAME:
				name = ad.String()
			case unix.NFTA_SET_DESC:
				ad.Nested(func(d *netlink.AttributeDecoder) error {
					for d.Next() {
						if d.Type() == unix.NFTA_SET_DESC_SIZE {
							capacity = d.Uint32()
						}
					}
					return nil
				})
			case unix.NFTA_SET_FLAGS:
				flags = ad.Uint32()
			case unix.NFTA_SET_KEY_TYPE:
				keyType = ad.Uint32()
			case unix.NFTA_SET_KEY_LEN:
				keyLen = ad.Uint32()
			case unix.NFTA_SET_DATA_TYPE:
				dataType = ad.Uint32()
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decoding set: %w", err)
		}
		kind := kindOf(flags, keyType, keyLen, dataType)
		s := &model.Set{Name: name, Kind: kind, Capacity: capacity}
		if kind == 0 {
			s.KernelSig = fmt.Sprintf("flags %#x key %d/%d data %#x", flags, keyType, keyLen, dataType)
			out = append(out, s)
			continue
		}
		elems, err := r.elements(name)
		if err != nil {
			return nil, err
		}
		s.Elements = modelElements(kind, elems)
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *model.Set) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

// elements dumps the elements of one set, verdicts included.
func (r *reader) elements(set string) ([]kernelElement, error) {
	msgs, err := r.request(unix.NFT_MSG_GETSETELEM, true,
		strAttr(unix.NFTA_SET_ELEM_LIST_TABLE, model.TableName), strAttr(unix.NFTA_SET_ELEM_LIST_SET, set))
	if err != nil {
		return nil, fmt.Errorf("listing elements of set %s: %w", set, err)
	}
	var out []kernelElement
	for _, m := range msgs {
		ad, err := decoder(m)
		if err != nil {
			return nil, err
		}
		for ad.Next() {
			if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				continue
			}
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					var e kernelElement
					list.Nested(func(el *netlink.AttributeDecoder) error {
						el.ByteOrder = binary.BigEndian
						for el.Next() {
							switch el.Type() {
							case unix.NFTA_SET_ELEM_KEY:
								e.key = dataValue(el)
							case nftaSetElemKeyEnd:
								e.keyEnd = dataValue(el)
							case unix.NFTA_SET_ELEM_FLAGS:
								e.end = el.Uint32()&unix.NFT_SET_ELEM_INTERVAL_END != 0
							case unix.NFTA_SET_ELEM_DATA:
								// A verdict the decoder cannot read
								// becomes one no rendered element
								// has: drift, repaired by a rewrite.
								v, ok := decodeVerdict(el.Bytes())
								if !ok {
									v = model.Verdict{Kind: "undecodable"}
								}
								e.verdict = &v
							}
						}
						return nil
					})
					out = append(out, e)
				}
				return nil
			})
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decoding elements of set %s: %w", set, err)
		}
	}
	return out, nil
}

// dataValue reads the NFTA_DATA_VALUE inside a nested data attribute.
func dataValue(ad *netlink.AttributeDecoder) []byte {
	var v []byte
	ad.Nested(func(d *netlink.AttributeDecoder) error {
		for d.Next() {
			if d.Type() == unix.NFTA_DATA_VALUE {
				v = slices.Clone(d.Bytes())
			}
		}
		return nil
	})
	return v
}

// kernelChain describes a chain read from the kernel (without rules). Its
// KernelSig says what the kernel holds; a chain nftguard would write
// differently never matches the rendered one (model.Chain.Signature).
func kernelChain(name string, hooked bool, typ string, hook uint32, prio int32, hasPolicy bool, policy uint32) *model.Chain {
	c := &model.Chain{Name: name}
	if !hooked {
		c.KernelSig = "regular"
		return c
	}
	pol := "accept"
	if hasPolicy && policy == nfDrop {
		pol = "drop"
	}
	c.Hook, c.Priority = hookName(hook), prio
	c.KernelSig = fmt.Sprintf("type %s hook %s priority %d policy %s", typ, c.Hook, prio, pol)
	return c
}

// readTable reads the whole table, or returns nil when it does not exist.
func (r *reader) readTable() (*model.Table, error) {
	ok, err := r.tableExists()
	if err != nil {
		return nil, fmt.Errorf("reading table inet %s: %w", model.TableName, err)
	}
	if !ok {
		return nil, nil
	}
	chains, err := r.chains()
	if err != nil {
		return nil, err
	}
	rules, err := r.rules("")
	if err != nil {
		return nil, err
	}
	for _, c := range chains {
		c.Rules = rules[c.Name]
	}
	sets, err := r.sets()
	if err != nil {
		return nil, err
	}
	return &model.Table{Chains: chains, Sets: sets}, nil
}
