package nftnl

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"
	"testing"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/dataplane/dptest"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/nfttest"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

// libraryElements is nfttest.Elements, failing the test on an error.
func libraryElements(t *testing.T, kind model.SetKind, elems []model.Element) []nftables.SetElement {
	t.Helper()
	out, err := nfttest.Elements(kind, elems)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// libraryQueue queues one change through google/nftables, which is how
// changes were written before the batch encoder; it serves as the
// reference the encoder is checked against.
func libraryQueue(t *testing.T, c *nftables.Conn, o model.Op, setID uint32) {
	t.Helper()
	tab := nfttest.Table()
	chain := &nftables.Chain{Name: o.Name, Table: tab}
	var err error
	switch o.Kind {
	case model.OpAddTable:
		c.AddTable(tab)
	case model.OpFlushTable:
		c.FlushTable(tab)
	case model.OpAddChain:
		c.AddChain(nfttest.Chain(o.Chain))
	case model.OpFlushChain:
		c.FlushChain(chain)
	case model.OpDelChain:
		c.DelChain(chain)
	case model.OpAddSet:
		s := nfttest.Set(o.Set)
		s.ID, s.Size = setID, o.Capacity
		if err = c.AddSet(s, nil); err == nil && len(o.Set.Elements) > 0 {
			err = c.SetAddElements(s, libraryElements(t, o.Set.Kind, o.Set.Elements))
		}
	case model.OpFlushSet:
		c.FlushSet(&nftables.Set{Table: tab, Name: o.Name})
	case model.OpDelSet:
		c.DelSet(&nftables.Set{Table: tab, Name: o.Name})
	case model.OpAddElements:
		err = c.SetAddElements(nfttest.Set(o.Set), libraryElements(t, o.Set.Kind, o.Elems))
	case model.OpDelElements:
		err = c.SetDeleteElements(nfttest.Set(o.Set), libraryElements(t, o.Set.Kind, o.Elems))
	case model.OpAddRule, model.OpInsertRule:
		exprs, cerr := nfttest.Rule(o.Rule)
		if cerr != nil {
			t.Fatal(cerr)
		}
		r := &nftables.Rule{Table: tab, Chain: chain, Exprs: exprs, UserData: nfttest.UserData(o.Rule)}
		if o.Kind == model.OpInsertRule {
			r.Position = o.Handle
			c.InsertRule(r)
		} else {
			c.AddRule(r)
		}
	case model.OpDelRule:
		err = c.DelRule(&nftables.Rule{Table: tab, Chain: chain, Handle: o.Handle})
	default:
		t.Fatalf("unknown change %d", o.Kind)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// libraryMessages returns the messages google/nftables sends for one
// change, without the batch begin and end.
func libraryMessages(t *testing.T, o model.Op, setID uint32) []netlink.Message {
	var sent []netlink.Message
	c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		if req == nil {
			return []netlink.Message{{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 4)}}, nil
		}
		sent = append(sent, req[1:len(req)-1]...)
		return nil, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	libraryQueue(t, c, o, setID)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	return sent
}

// encodedMessages returns the messages of a batch, begin and end
// included, checking their framing.
func encodedMessages(t *testing.T, buf []byte) []syscall.NetlinkMessage {
	t.Helper()
	msgs, err := syscall.ParseNetlinkMessage(buf)
	if err != nil {
		t.Fatalf("batch does not parse: %v", err)
	}
	if len(msgs) < 3 || msgs[0].Header.Type != unix.NFNL_MSG_BATCH_BEGIN || msgs[len(msgs)-1].Header.Type != unix.NFNL_MSG_BATCH_END {
		t.Fatalf("batch of %d messages without begin and end", len(msgs))
	}
	for i, m := range msgs {
		if i > 0 && m.Header.Seq != msgs[i-1].Header.Seq+1 {
			t.Fatalf("message %d numbered %d after %d", i, m.Header.Seq, msgs[i-1].Header.Seq)
		}
		ack := m.Header.Flags&unix.NLM_F_ACK != 0
		if ack != (i == len(msgs)-2) {
			t.Fatalf("message %d of %d: acknowledge flag %t", i, len(msgs), ack)
		}
	}
	return msgs
}

// sameAttributes compares two attribute lists. Nested attributes are
// compared attribute by attribute, and the NLA_F_NESTED flag itself is
// ignored: google/nftables sets it on some plain attributes (element flags)
// and leaves it off some nested ones (concatenation field lengths); the
// kernel ignores it.
func sameAttributes(a, b []byte, path string) error {
	for len(a) > 0 || len(b) > 0 {
		if len(a) < 4 || len(b) < 4 {
			return fmt.Errorf("%s: %d bytes left against %d", path, len(a), len(b))
		}
		la, lb := int(binary.NativeEndian.Uint16(a)), int(binary.NativeEndian.Uint16(b))
		ta, tb := binary.NativeEndian.Uint16(a[2:]), binary.NativeEndian.Uint16(b[2:])
		here := fmt.Sprintf("%s/%d", path, ta&^unix.NLA_F_NESTED)
		if ta&^unix.NLA_F_NESTED != tb&^unix.NLA_F_NESTED || la != lb || la < 4 || la > len(a) || lb > len(b) {
			return fmt.Errorf("%s: attribute type %#x length %d, want type %#x length %d", path, ta, la, tb, lb)
		}
		pa, pb := a[4:la], b[4:lb]
		if !bytes.Equal(pa, pb) {
			if (ta|tb)&unix.NLA_F_NESTED == 0 {
				return fmt.Errorf("%s: % x, want % x", here, pa, pb)
			}
			if err := sameAttributes(pa, pb, here); err != nil {
				return err
			}
		}
		pad := (la + 3) &^ 3
		a, b = a[min(pad, len(a)):], b[min(pad, len(b)):]
	}
	return nil
}

// encodeSample returns a table using every statement, set kind and port
// dispatch.
func encodeSample(t *testing.T) *model.Table { return encodeSampleWith(t, false) }

// encodeSampleWith is encodeSample, with the identity layout when
// identities is set (busy's rules then also include an ipBlock, a CIDR
// group, a rule without ports and one without peers).
func encodeSampleWith(t *testing.T, identities bool) *model.Table {
	spec, groups := dptest.SampleWithPodRanges()
	var ids []string
	for i := range 10 {
		id := fmt.Sprintf("d-%d", i)
		ids = append(ids, id)
		spec.Rules = append(spec.Rules, ingressRule(id, group("shop-frontend"),
			v1alpha1.Port{Protocol: v1alpha1.ProtocolTCP, Port: int32(100 + 10*i), EndPort: int32(105 + 10*i)}))
	}
	if identities {
		groups["nets"] = v1alpha1.AddressGroupSpec{Addresses: []string{"198.18.4.0/24", "fd00::4:0/112", "198.18.4.7"}}
		spec.AddressGroups = append(spec.AddressGroups, "nets")
		spec.Rules = append(spec.Rules,
			ingressRule("d-block", []v1alpha1.Peer{{IPBlock: &v1alpha1.IPBlock{CIDR: "198.19.0.0/16", Except: []string{"198.19.1.0/24"}}}}, dptest.TCP(443)),
			ingressRule("d-nets", group("nets")),
			ingressRule("d-open", nil, dptest.TCP(9090)))
		ids = append(ids, "d-block", "d-nets", "d-open")
	}
	spec.Pods = append(spec.Pods, v1alpha1.LocalPod{Namespace: "shop", Name: "busy", IPs: []string{"198.18.0.14", "fd00::14"},
		Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Rules: ids}})
	tab, err := render.Render(spec, groups, render.Options{LogGroup: 7, LogRate: 5, LogBurst: 10, RevokedMark: testRevokedMark,
		PodInterfaces: []string{"veth1a2b3c4d", "cni0"}, Identities: identities})
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

// TestEncodeMatchesLibrary encodes every change of a table, and changes
// of every other kind, and compares each message with what google/nftables
// builds for it.
func TestEncodeMatchesLibrary(t *testing.T) {
	kinds := map[model.SetKind]bool{}
	for _, identities := range []bool{false, true} {
		encodeMatchesLibrary(t, encodeSampleWith(t, identities), kinds)
	}
	for _, k := range []model.SetKind{model.SetIPv4Interval, model.SetIPv6Interval, model.SetEndpointIPv4, model.SetEndpointIPv6, model.SetPorts, model.MapPortsVerdict, model.SetTaggedIPv4, model.SetTaggedIPv6, model.MapIPv4Verdict, model.MapIPv6Verdict, model.SetIfnames,
		model.MapIPv4VerdictInterval, model.MapIPv6VerdictInterval, model.SetTaggedEndpointIPv4, model.SetTaggedEndpointIPv6} {
		if !kinds[k] {
			t.Errorf("sample tables have no set of kind %s", k)
		}
	}

	// Delete the table.
	b := newBatch(1, 0)
	b.delTable()
	buf, ackSeq, _, _ := b.finish()
	msgs := encodedMessages(t, buf)
	if len(msgs) != 3 || msgs[1].Header.Type != unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_DELTABLE || ackSeq != msgs[1].Header.Seq {
		t.Fatalf("delete table: %+v, acknowledged %d", msgs, ackSeq)
	}
}

// encodeMatchesLibrary checks every change of tab, recording the kinds of
// its sets.
func encodeMatchesLibrary(t *testing.T, tab *model.Table, kinds map[model.SetKind]bool) {
	ops := model.Diff(nil, tab).Ops
	for _, s := range tab.Sets {
		kinds[s.Kind] = true
		if s.Kind.Sized() {
			ops = append(ops, model.Op{Kind: model.OpAddSet, Name: s.Name, Set: s, Capacity: model.SetCapacity(len(s.Elements))})
		}
		if len(s.Elements) > 0 {
			ops = append(ops, model.Op{Kind: model.OpAddElements, Name: s.Name, Set: s, Elems: s.Elements},
				model.Op{Kind: model.OpDelElements, Name: s.Name, Set: s, Elems: s.Elements[:1]},
				model.Op{Kind: model.OpFlushSet, Name: s.Name}, model.Op{Kind: model.OpDelSet, Name: s.Name})
		}
	}
	c := tab.Chains[len(tab.Chains)-1]
	ops = append(ops,
		model.Op{Kind: model.OpInsertRule, Name: c.Name, Rule: c.Rules[0], Handle: 7},
		model.Op{Kind: model.OpInsertRule, Name: c.Name, Rule: c.Rules[0]},
		// The measuring copy's counters.
		model.Op{Kind: model.OpInsertRule, Name: c.Name, Rule: model.Counted(tab).Chains[len(tab.Chains)-1].Rules[0]},
		model.Op{Kind: model.OpDelRule, Name: c.Name, Handle: 9},
		model.Op{Kind: model.OpFlushChain, Name: c.Name}, model.Op{Kind: model.OpDelChain, Name: c.Name},
		model.Op{Kind: model.OpFlushTable})

	for _, o := range ops {
		b := newBatch(100, 0)
		encode(b, o)
		buf, _, ok, err := b.finish()
		if err != nil || !ok {
			t.Fatalf("%s: %v (ok %t)", o, err, ok)
		}
		got := encodedMessages(t, buf)
		got = got[1 : len(got)-1]
		want := libraryMessages(t, o, b.setID)
		if len(got) != len(want) {
			t.Fatalf("%s: %d messages, want %d", o, len(got), len(want))
		}
		for i := range got {
			g, w := got[i], want[i]
			const ignore = unix.NLM_F_ACK | unix.NLM_F_ECHO
			if g.Header.Type != uint16(w.Header.Type) || g.Header.Flags&^ignore != uint16(w.Header.Flags)&^ignore {
				t.Fatalf("%s: message %d type %#x flags %#x, want %#x %#x", o, i, g.Header.Type, g.Header.Flags, uint16(w.Header.Type), uint16(w.Header.Flags))
			}
			if !bytes.Equal(g.Data[:4], w.Data[:4]) {
				t.Fatalf("%s: message %d header % x, want % x", o, i, g.Data[:4], w.Data[:4])
			}
			if err := sameAttributes(g.Data[4:], w.Data[4:], o.String()); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestEncodeLargeSet: the elements of a large set are cut into messages
// whose element list fits its 16-bit attribute length, and none is lost.
func TestEncodeLargeSet(t *testing.T) {
	for _, kind := range []model.SetKind{model.SetIPv4, model.SetIPv6Interval} {
		s := &model.Set{Name: "big", Kind: kind}
		for i := range 20000 {
			a := netip.AddrFrom16([16]byte{0xfd, 15: byte(i), 14: byte(i >> 8)})
			e := model.Element{Key: a.AsSlice(), KeyEnd: a.AsSlice()}
			if kind == model.SetIPv4 {
				e = model.Element{Key: []byte{198, 19, byte(i >> 8), byte(i)}}
			}
			s.Elements = append(s.Elements, e)
		}
		b := newBatch(1, 0)
		encode(b, model.Op{Kind: model.OpAddSet, Name: s.Name, Set: s})
		buf, _, _, err := b.finish()
		if err != nil {
			t.Fatal(err)
		}
		msgs := encodedMessages(t, buf)
		elems := 0
		for _, m := range msgs[2 : len(msgs)-1] {
			ad, err := netlink.NewAttributeDecoder(m.Data[4:])
			if err != nil {
				t.Fatal(err)
			}
			for ad.Next() {
				if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
					continue
				}
				if n := len(ad.Bytes()); n > maxMessageBytes+100 {
					t.Fatalf("%s: element list of %d bytes", kind, n)
				}
				list, err := netlink.NewAttributeDecoder(ad.Bytes())
				if err != nil {
					t.Fatal(err)
				}
				for list.Next() {
					elems++
				}
			}
		}
		want := len(kernelElements(t, kind, s.Elements))
		if elems != want || len(msgs) < 5 {
			t.Fatalf("%s: %d elements in %d messages, want %d", kind, elems, len(msgs)-3, want)
		}
	}
}

// TestEncodeOversizedAttribute: a nested attribute longer than its 16-bit
// length fails the batch rather than going out with a wrapped length.
func TestEncodeOversizedAttribute(t *testing.T) {
	b := newBatch(1, 0)
	b.change(unix.NFT_MSG_NEWSETELEM, unix.NLM_F_CREATE)
	n := b.nest(unix.NFTA_SET_ELEM_LIST_ELEMENTS)
	b.bytes(1, make([]byte, 70000))
	b.end(n)
	b.close()
	if _, _, _, err := b.finish(); err == nil {
		t.Fatal("a 70,000-byte nested attribute was encoded")
	}
}
