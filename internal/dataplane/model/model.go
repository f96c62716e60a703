package model

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"weak"
)

// TableName is the name of the one table nftguard owns, in family inet.
const TableName = "nftguard"

// Names of the fixed objects of the table.
const (
	ChainEgressForward  = "egress-forward"
	ChainEgressInput    = "egress-input"
	ChainIngressForward = "ingress-forward"
	MapIngress4         = "in4"
	MapIngress6         = "in6"
	MapEgress4          = "eg4"
	MapEgress6          = "eg6"
	// The node's pod ranges (interval sets) and the addresses in them the
	// agent has marked ready; present only when the pod ranges are known.
	SetPodRanges4 = "podnets4"
	SetPodRanges6 = "podnets6"
	SetReady4     = "ready4"
	SetReady6     = "ready6"
	// SetPodInterfaces holds the host side of every pod interface the CNI
	// plugin reported (the egress-input chain drops the router
	// advertisements and redirects that arrive on them).
	SetPodInterfaces = "podifs"
)

// Hook is the netfilter hook of a base chain.
type Hook string

const (
	HookForward Hook = "forward"
	HookInput   Hook = "input"
	HookOutput  Hook = "output"
)

// Table is a model of table inet nftguard: what Render wants in the kernel,
// or what the Programmer read back from it.
type Table struct {
	// Sets holds sets and verdict maps, sorted by name.
	Sets []*Set
	// Chains holds the base chains first, then regular chains sorted by name.
	Chains []*Chain
}

// Chain is a base chain (Hook set: type filter, policy accept) or a regular chain.
type Chain struct {
	Name     string
	Hook     Hook
	Priority int32
	Rules    []*Rule

	// KernelSig describes a chain read from the kernel; see Signature.
	KernelSig string
}

// Rule is one rule: matches, then statements, then at most one verdict.
type Rule struct {
	Stmts []Stmt

	// id identifies the rule's content. Rendered rules compute it from their
	// text; rules read from the kernel carry it in their user data (empty
	// for rules nftguard did not write).
	id string
	// handle is the kernel's handle of a rule read from the kernel.
	handle uint64
}

// SetKind is the type of a set or map.
type SetKind int

const (
	// SetIPv4 is a hash set of IPv4 addresses (type ipv4_addr).
	SetIPv4 SetKind = iota + 1
	// SetIPv6 is a hash set of IPv6 addresses (type ipv6_addr).
	SetIPv6
	// SetIPv4Interval is an interval set of IPv4 ranges (flags interval).
	SetIPv4Interval
	// SetIPv6Interval is an interval set of IPv6 ranges (flags interval).
	SetIPv6Interval
	// SetEndpointIPv4 is a set of ipv4_addr . inet_proto . inet_service.
	SetEndpointIPv4
	// SetEndpointIPv6 is a set of ipv6_addr . inet_proto . inet_service.
	SetEndpointIPv6
	// SetPorts is an interval set of inet_proto . inet_service (port ranges).
	SetPorts
	// MapIPv4Verdict is a verdict map keyed by IPv4 address.
	MapIPv4Verdict
	// MapIPv6Verdict is a verdict map keyed by IPv6 address.
	MapIPv6Verdict
	// SetTaggedIPv4 is a hash set of group tag . IPv4 address (type
	// mark . ipv4_addr).
	SetTaggedIPv4
	// SetTaggedIPv6 is a hash set of group tag . IPv6 address.
	SetTaggedIPv6
	// MapPortsVerdict is a verdict map keyed by protocol . port ranges
	// (a pod direction's dispatch on the destination port).
	MapPortsVerdict
	// SetIfnames is a hash set of interface names (type ifname).
	SetIfnames
	// MapIPv4VerdictInterval is a verdict map keyed by disjoint IPv4
	// ranges (flags interval).
	MapIPv4VerdictInterval
	// MapIPv6VerdictInterval is a verdict map keyed by disjoint IPv6
	// ranges.
	MapIPv6VerdictInterval
	// SetTaggedEndpointIPv4 is an interval set of tag . IPv4 address .
	// protocol . port (type mark . ipv4_addr . inet_proto . inet_service,
	// flags interval): the tag and address exact, protocol and ports
	// ranges.
	SetTaggedEndpointIPv4
	// SetTaggedEndpointIPv6 is SetTaggedEndpointIPv4 for IPv6.
	SetTaggedEndpointIPv6
)

// Set is a named set or verdict map with its elements.
type Set struct {
	Name     string
	Kind     SetKind
	Elements []Element

	// CoOwned marks a set that another writer fills (a CNI plugin, say):
	// nftguard declares it and creates it when it is missing, with
	// Elements as its first elements, but the elements in the kernel are
	// the other writer's. Diffs never add or remove them, a drift check
	// never reports them, and a rebuild neither flushes nor deletes the
	// set; only a set of the wrong kind is replaced (it could not be used
	// as declared).
	CoOwned bool

	// KernelSig describes a set read from the kernel whose type nftguard
	// does not know; such a set never matches a rendered one.
	KernelSig string
	// Capacity is the size a set read from the kernel was created with
	// (0: none, no limit); see SetCapacity.
	Capacity uint32

	// Delta, when set, says how the set was made from an earlier one; a
	// diff against that set takes its changes from here instead of
	// comparing the two element lists.
	Delta *SetDelta
}

// SetDelta gives a set's elements as those of Base with Removed taken out
// and Added put in, each sorted, as ElementDelta(Base.Elements, Elements)
// returns them (a map element whose verdict changes is in both). Whoever
// makes the set vouches for that: a renderer that changed a large map in
// a few places, say, which knows what it changed. Base is weak, so that a
// chain of sets, each made from the last, holds none of the earlier ones.
type SetDelta struct {
	Base           weak.Pointer[Set]
	Removed, Added []Element
}

// DeltaFrom returns the changes that turn set k into s: s's Delta when it
// was made from k itself, else a comparison of their elements.
func (s *Set) DeltaFrom(k *Set) (removed, added []Element) {
	if d := s.Delta; d != nil && k != nil && d.Base.Value() == k {
		return d.Removed, d.Added
	}
	return ElementDelta(k.Elements, s.Elements)
}

// Element is one element of a set, in the kernel's key layout (network byte
// order, each field of a concatenation padded to 4 bytes).
type Element struct {
	Key []byte
	// KeyEnd is the inclusive end of a range; set for every element of the
	// interval kinds (equal to Key for a single value), nil otherwise.
	KeyEnd []byte
	// Verdict is the value of a verdict map element.
	Verdict *Verdict
}

// VerdictKind is a verdict.
type VerdictKind string

const (
	VerdictAccept VerdictKind = "accept"
	VerdictDrop   VerdictKind = "drop"
	VerdictJump   VerdictKind = "jump"
	VerdictGoto   VerdictKind = "goto"
	VerdictReturn VerdictKind = "return"
)

// Verdict is a verdict with its target chain for jump and goto.
type Verdict struct {
	Kind  VerdictKind
	Chain string
}

func (v Verdict) String() string {
	if v.Chain != "" {
		return string(v.Kind) + " " + v.Chain
	}
	return string(v.Kind)
}

// Set returns the set or map with that name, or nil.
func (t *Table) Set(name string) *Set {
	for _, s := range t.Sets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Chain returns the chain with that name, or nil.
func (t *Table) Chain(name string) *Chain {
	for _, c := range t.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Counts returns the number of chains, rules and set elements (an interval
// counts as one element).
func (t *Table) Counts() (chains, rules, elements int) {
	if t == nil {
		return 0, 0, 0
	}
	for _, c := range t.Chains {
		rules += len(c.Rules)
	}
	for _, s := range t.Sets {
		elements += len(s.Elements)
	}
	return len(t.Chains), rules, elements
}

// IsBase reports whether the chain is hooked.
func (c *Chain) IsBase() bool { return c.Hook != "" }

// Signature is what must match for a kernel chain to be reused as is.
func (c *Chain) Signature() string {
	if c.KernelSig != "" {
		return c.KernelSig
	}
	if !c.IsBase() {
		return "regular"
	}
	return fmt.Sprintf("type filter hook %s priority %d policy accept", c.Hook, c.Priority)
}

// String returns the rule in nft syntax.
func (r *Rule) String() string {
	if r.Stmts == nil && r.handle != 0 {
		return fmt.Sprintf("# rule not written by nftguard (handle %d)", r.handle)
	}
	return string(r.appendText(nil))
}

// appendText appends the text of the rule's statements to b.
func (r *Rule) appendText(b []byte) []byte {
	for i, s := range r.Stmts {
		if i > 0 {
			b = append(b, ' ')
		}
		b = s.appendText(b)
	}
	return b
}

// ruleIDVersion changes whenever the expressions a rule text compiles to
// change, so that a new agent rewrites rules an older one wrote.
const ruleIDVersion = "1"

// ID identifies the rule's content (a hash of its text). The kernel copy of a
// rule carries it as its comment.
func (r *Rule) ID() string {
	if r.id == "" {
		r.Identify(make([]byte, 0, 128))
	}
	return r.id
}

// Identify sets the rule's id if it has none, hashing its text in buf (a
// scratch buffer), and returns buf for the next rule.
func (r *Rule) Identify(buf []byte) []byte {
	if r.id != "" {
		return buf
	}
	buf = append(buf[:0], ruleIDVersion+"\n"...)
	if r.Stmts == nil && r.handle != 0 {
		buf = append(buf, r.String()...)
	} else {
		buf = r.appendText(buf)
	}
	sum := sha256.Sum256(buf)
	var id [16]byte
	hex.Encode(id[:], sum[:8])
	r.id = string(id[:])
	return buf
}

// NewRule returns a rule of statements.
func NewRule(stmts ...Stmt) *Rule { return &Rule{Stmts: stmts} }

// KernelRule returns a rule read from the kernel: its statements (nil when
// they were not recognised), its id and its handle.
func KernelRule(stmts []Stmt, id string, handle uint64) *Rule {
	return &Rule{Stmts: stmts, id: id, handle: handle}
}

// Counted returns a copy of t, for measuring only, with a counter first in
// every rule: every packet that a rule is evaluated for counts there, matched
// or not, so the counters' sum grows by the rules a packet walks. Sets are
// shared with t.
func Counted(t *Table) *Table {
	out := &Table{Sets: t.Sets, Chains: make([]*Chain, len(t.Chains))}
	for i, c := range t.Chains {
		cc := *c
		cc.Rules = make([]*Rule, len(c.Rules))
		for j, r := range c.Rules {
			cc.Rules[j] = NewRule(append([]Stmt{Counter{}}, r.Stmts...)...)
		}
		out.Chains[i] = &cc
	}
	return out
}

// CountedRules returns the sum of the packet counts of the rules' counters
// in a table read back from the kernel: for a table made by Counted, the
// rule evaluations of every packet since it was programmed.
func CountedRules(t *Table) uint64 {
	var n uint64
	for _, c := range t.Chains {
		for _, r := range c.Rules {
			for _, s := range r.Stmts {
				if c, ok := s.(Counter); ok {
					n += c.Packets
				}
			}
		}
	}
	return n
}

// Handle is the kernel handle of a rule read back from the kernel, else 0.
func (r *Rule) Handle() uint64 { return r.handle }

func (k SetKind) String() string {
	switch k {
	case SetIPv4:
		return "ipv4_addr"
	case SetIPv6:
		return "ipv6_addr"
	case SetIPv4Interval:
		return "ipv4_addr interval"
	case SetIPv6Interval:
		return "ipv6_addr interval"
	case SetEndpointIPv4:
		return "ipv4_addr . inet_proto . inet_service"
	case SetEndpointIPv6:
		return "ipv6_addr . inet_proto . inet_service"
	case SetPorts:
		return "inet_proto . inet_service interval"
	case MapIPv4Verdict:
		return "ipv4_addr : verdict"
	case MapIPv6Verdict:
		return "ipv6_addr : verdict"
	case SetTaggedIPv4:
		return "mark . ipv4_addr"
	case SetTaggedIPv6:
		return "mark . ipv6_addr"
	case MapPortsVerdict:
		return "inet_proto . inet_service : verdict"
	case SetIfnames:
		return "ifname"
	case MapIPv4VerdictInterval:
		return "ipv4_addr : verdict interval"
	case MapIPv6VerdictInterval:
		return "ipv6_addr : verdict interval"
	case SetTaggedEndpointIPv4:
		return "mark . ipv4_addr . inet_proto . inet_service interval"
	case SetTaggedEndpointIPv6:
		return "mark . ipv6_addr . inet_proto . inet_service interval"
	}
	return "unknown"
}

// IsMap reports whether the kind is a verdict map.
func (k SetKind) IsMap() bool {
	return k == MapIPv4Verdict || k == MapIPv6Verdict || k == MapPortsVerdict || k == MapIPv4VerdictInterval || k == MapIPv6VerdictInterval
}

// IsInterval reports whether elements are ranges.
func (k SetKind) IsInterval() bool {
	return k.IsRBTree() || k.IsConcatInterval()
}

// IsRBTree reports whether the kernel stores the kind as start and end
// elements (one-field interval sets) rather than as key and key end.
func (k SetKind) IsRBTree() bool {
	return k == SetIPv4Interval || k == SetIPv6Interval || k == MapIPv4VerdictInterval || k == MapIPv6VerdictInterval
}

// IsConcatInterval reports whether the kind is an interval set of a
// concatenation, stored as key and inclusive key end, each field a range.
func (k SetKind) IsConcatInterval() bool {
	return k == SetPorts || k == MapPortsVerdict || k == SetTaggedEndpointIPv4 || k == SetTaggedEndpointIPv6
}

// Sized reports whether sets of the kind are created with a declared size:
// the shared sets, which hold most elements of a node. Given a size, the
// kernel allocates a set's hash table once; without one it starts at four
// buckets and doubles it about a dozen times while a cold start adds the
// elements (13% of a cold start). The kernel refuses elements beyond the
// size, so the Programmer replaces a set before it could fill (DiffSized).
func (k SetKind) Sized() bool { return k == SetTaggedIPv4 || k == SetTaggedIPv6 }

// MinSetCapacity is the smallest size a sized set is declared with.
const MinSetCapacity = 1024

// SetCapacity is the size a sized set of n elements is created with: the
// power of two at or above twice n, so that the set can take at least as
// many elements again, its old and new elements together, before it is
// replaced.
func SetCapacity(n int) uint32 {
	c := uint32(MinSetCapacity)
	for int(c) < 2*n {
		c <<= 1
	}
	return c
}

// KeyLen is the length of a key in bytes.
func (k SetKind) KeyLen() int {
	switch k {
	case SetIPv4, SetIPv4Interval, MapIPv4Verdict:
		return 4
	case SetIPv6, SetIPv6Interval, MapIPv6Verdict:
		return 16
	case SetEndpointIPv4:
		return 12
	case SetEndpointIPv6:
		return 24
	case SetPorts, SetTaggedIPv4, MapPortsVerdict:
		return 8
	case SetTaggedIPv6:
		return 20
	case SetIfnames:
		return IfnameLen
	case MapIPv4VerdictInterval:
		return 4
	case MapIPv6VerdictInterval:
		return 16
	case SetTaggedEndpointIPv4:
		return 16
	case SetTaggedEndpointIPv6:
		return 28
	}
	return 0
}

// declaration is the type line(s) of the set in nft syntax.
func (k SetKind) declaration() []string {
	switch k {
	case SetIPv4, SetIPv6, SetEndpointIPv4, SetEndpointIPv6, SetTaggedIPv4, SetTaggedIPv6, SetIfnames:
		return []string{"type " + k.String()}
	case SetIPv4Interval:
		return []string{"type ipv4_addr", "flags interval"}
	case SetIPv6Interval:
		return []string{"type ipv6_addr", "flags interval"}
	case SetPorts:
		return []string{"type inet_proto . inet_service", "flags interval"}
	case MapPortsVerdict:
		return []string{"type inet_proto . inet_service : verdict", "flags interval"}
	case MapIPv4Verdict, MapIPv6Verdict:
		return []string{"type " + k.String()}
	case MapIPv4VerdictInterval:
		return []string{"type ipv4_addr : verdict", "flags interval"}
	case MapIPv6VerdictInterval:
		return []string{"type ipv6_addr : verdict", "flags interval"}
	case SetTaggedEndpointIPv4:
		return []string{"type mark . ipv4_addr . inet_proto . inet_service", "flags interval"}
	case SetTaggedEndpointIPv6:
		return []string{"type mark . ipv6_addr . inet_proto . inet_service", "flags interval"}
	}
	return []string{"type unknown"}
}

// elementKey identifies an element for diffs (key, range end and verdict).
func (e Element) elementKey() string {
	var b strings.Builder
	b.Write(e.Key)
	b.WriteByte(0xff)
	b.Write(e.KeyEnd)
	if e.Verdict != nil {
		b.WriteByte(0xff)
		b.WriteString(e.Verdict.String())
	}
	return b.String()
}

// Format prints an element the way nft does.
func (k SetKind) Format(e Element) string {
	switch k {
	case SetIPv4, SetIPv6:
		return addrString(e.Key)
	case SetIPv4Interval, SetIPv6Interval:
		return RangeString(addrOf(e.Key), addrOf(e.KeyEnd))
	case SetEndpointIPv4, SetEndpointIPv6:
		n := len(e.Key) - 8
		if n != 4 && n != 16 {
			return fmt.Sprintf("0x%x", e.Key)
		}
		return addrString(e.Key[:n]) + " . " + ProtoName(e.Key[n]) + " . " +
			strconv.Itoa(int(binary.BigEndian.Uint16(e.Key[n+4:])))
	case SetPorts, MapPortsVerdict:
		if len(e.Key) != 8 || len(e.KeyEnd) != 8 {
			return fmt.Sprintf("0x%x", e.Key)
		}
		from := binary.BigEndian.Uint16(e.Key[4:])
		to := binary.BigEndian.Uint16(e.KeyEnd[4:])
		ports := strconv.Itoa(int(from))
		if to != from {
			ports += "-" + strconv.Itoa(int(to))
		}
		proto := ProtoName(e.Key[0])
		if e.KeyEnd[0] != e.Key[0] {
			proto += "-" + ProtoName(e.KeyEnd[0])
		}
		if k == MapPortsVerdict {
			return proto + " . " + ports + " : " + verdictString(e.Verdict)
		}
		return proto + " . " + ports
	case SetTaggedIPv4, SetTaggedIPv6:
		if len(e.Key) != 4+4 && len(e.Key) != 4+16 {
			return fmt.Sprintf("0x%x", e.Key)
		}
		return fmt.Sprintf("0x%08x . %s", binary.NativeEndian.Uint32(e.Key), addrString(e.Key[4:]))
	case MapIPv4Verdict, MapIPv6Verdict:
		return addrString(e.Key) + " : " + verdictString(e.Verdict)
	case SetIfnames:
		return strconv.Quote(IfnameOf(e.Key))
	case MapIPv4VerdictInterval, MapIPv6VerdictInterval:
		return RangeString(addrOf(e.Key), addrOf(e.KeyEnd)) + " : " + verdictString(e.Verdict)
	case SetTaggedEndpointIPv4, SetTaggedEndpointIPv6:
		n := len(e.Key) - 12
		if (n != 4 && n != 16) || len(e.KeyEnd) != len(e.Key) {
			return fmt.Sprintf("0x%x", e.Key)
		}
		return fmt.Sprintf("0x%08x . %s . ", binary.NativeEndian.Uint32(e.Key), addrString(e.Key[4:4+n])) +
			SetPorts.Format(Element{Key: e.Key[4+n:], KeyEnd: e.KeyEnd[4+n:]})
	}
	return fmt.Sprintf("0x%x", e.Key)
}

// verdictString prints a map element's verdict, "?" for none.
func verdictString(v *Verdict) string {
	if v == nil {
		return "?"
	}
	return v.String()
}

// IfnameLen is the length of an interface name key: IFNAMSIZ, the name
// padded with NULs.
const IfnameLen = 16

// IfnameKey returns the key of an interface name, or false for a name the
// kernel could not have (empty, or too long).
func IfnameKey(name string) ([]byte, bool) {
	if name == "" || len(name) >= IfnameLen || strings.IndexByte(name, 0) >= 0 {
		return nil, false
	}
	k := make([]byte, IfnameLen)
	copy(k, name)
	return k, true
}

// IfnameOf returns the interface name of a key.
func IfnameOf(k []byte) string {
	if i := bytes.IndexByte(k, 0); i >= 0 {
		k = k[:i]
	}
	return string(k)
}

func addrOf(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a
}

func addrString(b []byte) string {
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return fmt.Sprintf("0x%x", b)
	}
	return a.String()
}

// String prints the table in nft syntax, like `nft list table inet nftguard`.
// Sets and maps come first, sorted by name, then chains.
func (t *Table) String() string {
	var b strings.Builder
	b.WriteString("table inet " + TableName + " {\n")
	first := true
	sep := func() {
		if !first {
			b.WriteString("\n")
		}
		first = false
	}
	for _, s := range t.Sets {
		sep()
		word := "set"
		if s.Kind.IsMap() {
			word = "map"
		}
		fmt.Fprintf(&b, "\t%s %s {\n", word, s.Name)
		for _, line := range s.Kind.declaration() {
			fmt.Fprintf(&b, "\t\t%s\n", line)
		}
		if len(s.Elements) > 0 {
			const lead = "\t\telements = { "
			b.WriteString(lead)
			for i, e := range s.Elements {
				if i > 0 {
					b.WriteString(",\n\t\t\t     ")
				}
				b.WriteString(s.Kind.Format(e))
			}
			b.WriteString(" }\n")
		}
		b.WriteString("\t}\n")
	}
	for _, c := range t.Chains {
		sep()
		fmt.Fprintf(&b, "\tchain %s {\n", c.Name)
		if c.IsBase() {
			fmt.Fprintf(&b, "\t\ttype filter hook %s priority %s; policy accept;\n", c.Hook, priorityString(c.Priority))
		}
		for _, r := range c.Rules {
			fmt.Fprintf(&b, "\t\t%s\n", r.String())
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

func priorityString(p int32) string {
	switch {
	case p == 0:
		return "filter"
	case p > 0:
		return fmt.Sprintf("filter + %d", p)
	default:
		return fmt.Sprintf("filter - %d", -p)
	}
}

// RangeString prints a range as a prefix when it is one, as "a-b" otherwise,
// and as a bare address when it holds one address.
func RangeString(from, to netip.Addr) string {
	if from == to {
		return from.String()
	}
	if bits, ok := rangePrefixBits(from, to); ok {
		return netip.PrefixFrom(from, bits).String()
	}
	return from.String() + "-" + to.String()
}

// rangePrefixBits returns the prefix length of a range that is exactly one prefix.
func rangePrefixBits(from, to netip.Addr) (int, bool) {
	for bits := 0; bits <= from.BitLen(); bits++ {
		p := netip.PrefixFrom(from, bits)
		if p.Masked().Addr() != from {
			continue
		}
		if LastAddr(p) == to {
			return bits, true
		}
	}
	return 0, false
}

// LastAddr returns the last address of a prefix.
func LastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
