package model

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
)

// Packet is the first packet of a connection as the filter hooks see it:
// after DNAT, so a connection through a Service has its backend as Dst.
type Packet struct {
	Src, Dst netip.Addr
	Proto    uint8
	Dport    uint16
}

// Decide evaluates the table's base chains of hook h, in priority order,
// for the first packet of a new connection, as the kernel would: true when
// every base chain lets it through. A statement Decide cannot evaluate is
// an error (the caller must then not act on the answer). It reads the
// table only; the rate limit and the log of a drop rule do not change the
// verdict.
func (t *Table) Decide(h Hook, p Packet) (bool, error) { return NewDecider(t).Decide(h, p) }

// Decider decides many packets against one table: it indexes the table's
// sets once (exact keys by map; ranges stay lists). The table must not
// change while it is used.
type Decider struct {
	t     *Table
	exact map[string]map[string]*Element
	// ranges holds the sets of one-field ranges whose elements are sorted
	// and disjoint (as rendered): they are searched by halving.
	ranges map[string]bool
	base   map[Hook][]*Chain
}

// NewDecider indexes t.
func NewDecider(t *Table) *Decider {
	d := &Decider{t: t, exact: map[string]map[string]*Element{}, ranges: map[string]bool{}, base: map[Hook][]*Chain{}}
	for _, s := range t.Sets {
		if s.Kind.IsRBTree() && disjointRanges(s.Elements) {
			d.ranges[s.Name] = true
		}
		m := map[string]*Element{}
		for i := range s.Elements {
			if e := &s.Elements[i]; e.KeyEnd == nil {
				m[string(e.Key)] = e
			}
		}
		d.exact[s.Name] = m
	}
	for _, c := range t.Chains {
		if c.Hook != "" {
			d.base[c.Hook] = append(d.base[c.Hook], c)
		}
	}
	for _, cs := range d.base {
		slices.SortStableFunc(cs, func(a, b *Chain) int { return cmp.Compare(a.Priority, b.Priority) })
	}
	return d
}

// Decide is Table.Decide.
func (d *Decider) Decide(h Hook, p Packet) (bool, error) {
	for _, c := range d.base[h] {
		v, err := d.run(c, p, 0)
		if err != nil {
			return false, err
		}
		if v == VerdictDrop {
			return false, nil
		}
	}
	return true, nil
}

// maxDepth bounds jumps and gotos (the kernel allows 16 levels).
const maxDepth = 16

// run evaluates chain c and returns accept, drop, or return (the chain
// ended without a verdict: the base chain's policy, accept, applies).
func (d *Decider) run(c *Chain, p Packet, depth int) (VerdictKind, error) {
	t := d.t
	if depth > maxDepth {
		return "", fmt.Errorf("chain %s: jumps nest deeper than %d", c.Name, maxDepth)
	}
	for _, r := range c.Rules {
		v, matched, err := d.rule(r, p)
		if err != nil {
			return "", fmt.Errorf("chain %s, rule %q: %w", c.Name, r, err)
		}
		if !matched || v == nil {
			continue
		}
		switch v.Kind {
		case VerdictAccept, VerdictDrop:
			return v.Kind, nil
		case VerdictReturn:
			return VerdictReturn, nil
		case VerdictJump, VerdictGoto:
			next := t.Chain(v.Chain)
			if next == nil {
				return "", fmt.Errorf("chain %s: %s to missing chain %s", c.Name, v.Kind, v.Chain)
			}
			res, err := d.run(next, p, depth+1)
			if err != nil {
				return "", err
			}
			if res != VerdictReturn || v.Kind == VerdictGoto {
				return res, nil
			}
		default:
			return "", fmt.Errorf("chain %s: verdict %q", c.Name, v.Kind)
		}
	}
	return VerdictReturn, nil
}

// rule reports whether r's matches hold for p and its verdict (nil for
// none, as for a log rule).
func (d *Decider) rule(r *Rule, p Packet) (*Verdict, bool, error) {
	var verdict *Verdict
	for _, s := range r.Stmts {
		switch s := s.(type) {
		case Verdict:
			verdict = &s
		case CtState:
			// A new connection is new: neither established, related
			// nor invalid.
			if s.Bits&CtNew == 0 {
				return nil, false, nil
			}
		case CtMark:
			// A new connection carries no conntrack mark yet.
			return nil, false, nil
		case ICMPv6Types:
			if p.Proto != ProtoICMPv6 || !p.Dst.Is6() {
				return nil, false, nil
			}
			return nil, false, fmt.Errorf("ICMPv6 types are not decided")
		case AddrIs:
			if addrOfField(p, s.Field) != s.Addr {
				return nil, false, nil
			}
		case AddrInSet:
			a := addrOfField(p, s.Field)
			if !familyIs(a, s.Family) {
				return nil, false, nil
			}
			in, err := d.contains(s.Set, a.AsSlice())
			if err != nil {
				return nil, false, err
			}
			if in == s.Invert {
				return nil, false, nil
			}
		case TaggedAddrInSet:
			a := addrOfField(p, s.Field)
			if !familyIs(a, s.Family) {
				return nil, false, nil
			}
			key := binary.NativeEndian.AppendUint32(nil, s.Tag)
			in, err := d.contains(s.Set, append(key, a.AsSlice()...))
			if err != nil || !in {
				return nil, false, err
			}
		case AddrVmap:
			a := addrOfField(p, s.Field)
			if !familyIs(a, s.Family) {
				return nil, false, nil
			}
			v, err := d.lookup(s.Vmap, a.AsSlice())
			if err != nil || v == nil {
				return nil, false, err
			}
			return v, true, nil
		case EndpointInSet:
			if !familyIs(p.Dst, s.Family) {
				return nil, false, nil
			}
			in, err := d.contains(s.Set, append(p.Dst.AsSlice(), portKey(p.Proto, p.Dport)...))
			if err != nil || !in {
				return nil, false, err
			}
		case TaggedEndpointInSet:
			a := addrOfField(p, s.Field)
			if !familyIs(a, s.Family) {
				return nil, false, nil
			}
			key := binary.NativeEndian.AppendUint32(nil, s.Tag)
			key = append(append(key, a.AsSlice()...), portKey(p.Proto, p.Dport)...)
			in, err := d.contains(s.Set, key)
			if err != nil || !in {
				return nil, false, err
			}
		case PortsInSet:
			in, err := d.contains(s.Set, portKey(p.Proto, p.Dport))
			if err != nil || !in {
				return nil, false, err
			}
		case PortsVmap:
			v, err := d.lookup(s.Vmap, portKey(p.Proto, p.Dport))
			if err != nil || v == nil {
				return nil, false, err
			}
			return v, true, nil
		case ProtoIs:
			if p.Proto != s.Proto {
				return nil, false, nil
			}
		case DportIn:
			if p.Proto != s.Proto || p.Dport < s.From || p.Dport > s.To {
				return nil, false, nil
			}
		case LimitRate, NFLog, Counter:
			// Side effects only.
		default:
			return nil, false, fmt.Errorf("statement %T is not decided", s)
		}
	}
	return verdict, true, nil
}

// portKey is a protocol and port as the port sets hold them: the protocol
// in a 4-byte register, then the port (big-endian) in another.
func portKey(proto uint8, port uint16) []byte {
	k := make([]byte, 8)
	k[0] = proto
	binary.BigEndian.PutUint16(k[4:], port)
	return k
}

func addrOfField(p Packet, f AddrField) netip.Addr {
	if f == Saddr {
		return p.Src
	}
	return p.Dst
}

func familyIs(a netip.Addr, f Family) bool {
	return a.IsValid() && (f == IPv4) == a.Is4()
}

// contains reports whether set name holds key (in a range, for the
// interval kinds).
func (d *Decider) contains(name string, key []byte) (bool, error) {
	e, err := d.find(name, key)
	return e != nil, err
}

// find returns the element of set name holding key, or nil.
func (d *Decider) find(name string, key []byte) (*Element, error) {
	s := d.t.Set(name)
	if s == nil {
		return nil, fmt.Errorf("missing set %s", name)
	}
	if e := d.exact[name][string(key)]; e != nil {
		return e, nil
	}
	if d.ranges[name] {
		// The first range ending at or after key holds it, if any does.
		i, _ := slices.BinarySearchFunc(s.Elements, key, func(e Element, k []byte) int { return bytes.Compare(e.KeyEnd, k) })
		if i < len(s.Elements) && match(s.Kind, s.Elements[i], key) {
			return &s.Elements[i], nil
		}
		return nil, nil
	}
	for i := range s.Elements {
		if e := &s.Elements[i]; e.KeyEnd != nil && match(s.Kind, *e, key) {
			return e, nil
		}
	}
	return nil, nil
}

// disjointRanges reports whether every element is a range, sorted, each
// ending before the next starts.
func disjointRanges(es []Element) bool {
	for i := range es {
		if es[i].KeyEnd == nil || len(es[i].KeyEnd) != len(es[i].Key) || bytes.Compare(es[i].Key, es[i].KeyEnd) > 0 {
			return false
		}
		if i > 0 && bytes.Compare(es[i-1].KeyEnd, es[i].Key) >= 0 {
			return false
		}
	}
	return true
}

// lookup returns the verdict of the map element holding key, or nil.
func (d *Decider) lookup(name string, key []byte) (*Verdict, error) {
	e, err := d.find(name, key)
	if err != nil || e == nil {
		return nil, err
	}
	if e.Verdict == nil {
		return nil, fmt.Errorf("map %s: element without a verdict", name)
	}
	return e.Verdict, nil
}

// match reports whether element e of a set of kind k holds key. The port
// kinds concatenate two ranges, protocol and port, each matched on its
// own, as the kernel's concatenated interval sets do.
func match(k SetKind, e Element, key []byte) bool {
	if e.KeyEnd == nil {
		return bytes.Equal(e.Key, key)
	}
	if len(e.Key) != len(key) || len(e.KeyEnd) != len(key) {
		return false
	}
	if k.IsConcatInterval() {
		// Each field (padded to 4 bytes) within its own range: the
		// address of a tagged endpoint is one field of 4 or 16 bytes.
		for _, f := range concatFields(k) {
			if !within(e.Key[f[0]:f[1]], key[f[0]:f[1]], e.KeyEnd[f[0]:f[1]]) {
				return false
			}
		}
		return true
	}
	return within(e.Key, key, e.KeyEnd)
}

// concatFields returns the byte ranges of the fields of a concatenated
// interval kind's key.
func concatFields(k SetKind) [][2]int {
	switch k {
	case SetTaggedEndpointIPv4:
		return [][2]int{{0, 4}, {4, 8}, {8, 12}, {12, 16}}
	case SetTaggedEndpointIPv6:
		return [][2]int{{0, 4}, {4, 20}, {20, 24}, {24, 28}}
	}
	return [][2]int{{0, 4}, {4, 8}} // protocol . port
}

func within(from, v, to []byte) bool {
	return bytes.Compare(from, v) <= 0 && bytes.Compare(v, to) <= 0
}
