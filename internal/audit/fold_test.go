package audit

import (
	"net/netip"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func udpFlow(src string, sport uint16, dst string, dport uint16) flow {
	return flow{
		ev: Event{
			Action: ActionDrop, Direction: Ingress, Protocol: ProtocolUDP,
			Src: Endpoint{IP: netip.MustParseAddr(src), Port: sport},
			Dst: Endpoint{IP: netip.MustParseAddr(dst), Port: dport},
		},
		podKey: "5356176b92c3",
	}
}

func counts(fs []flow) []uint64 {
	out := make([]uint64, len(fs))
	for i, f := range fs {
		out[i] = f.ev.Count
	}
	return out
}

func TestFolderFoldsRepeats(t *testing.T) {
	f := newFolder(time.Second, 100)
	// Three packets of one flow from different source ports.
	for i, at := range []time.Duration{0, 300 * time.Millisecond, 999 * time.Millisecond} {
		if closed := f.add(t0.Add(at), udpFlow("198.18.0.1", uint16(40000+i), "198.18.0.2", 53)); closed != nil {
			t.Fatalf("packet %d closed %v", i, closed)
		}
	}
	if got := f.expire(t0.Add(time.Second - time.Nanosecond)); len(got) != 0 {
		t.Fatalf("flow closed before its window: %v", got)
	}
	got := f.expire(t0.Add(time.Second))
	if len(got) != 1 || got[0].ev.Count != 3 {
		t.Fatalf("expire = %v, want one flow with count 3", counts(got))
	}
	// The line keeps the first packet's source port.
	if got[0].ev.Src.Port != 40000 {
		t.Errorf("source port %d, want the first packet's 40000", got[0].ev.Src.Port)
	}
	if f.len() != 0 {
		t.Errorf("%d flows still open", f.len())
	}
}

func TestFolderWindowBoundary(t *testing.T) {
	f := newFolder(time.Second, 100)
	fl := udpFlow("198.18.0.1", 1, "198.18.0.2", 53)
	f.add(t0, fl)
	f.add(t0.Add(500*time.Millisecond), fl)
	// A packet exactly one window after the first closes the flow and
	// opens a new one.
	closed := f.add(t0.Add(time.Second), fl)
	if len(closed) != 1 || closed[0].ev.Count != 2 {
		t.Fatalf("add at the boundary closed %v, want one flow with count 2", counts(closed))
	}
	f.add(t0.Add(1500*time.Millisecond), fl)
	if got := f.expire(t0.Add(1999 * time.Millisecond)); len(got) != 0 {
		t.Fatalf("second window closed early: %v", counts(got))
	}
	if got := f.expire(t0.Add(2 * time.Second)); len(got) != 1 || got[0].ev.Count != 2 {
		t.Fatalf("second window = %v, want one flow with count 2", counts(got))
	}
}

func TestFolderSeparatesFlows(t *testing.T) {
	f := newFolder(time.Second, 100)
	base := udpFlow("198.18.0.1", 1, "198.18.0.2", 53)
	variants := []func(*flow){
		func(*flow) {},
		func(fl *flow) { fl.ev.Dst.Port = 54 },
		func(fl *flow) { fl.ev.Src.IP = netip.MustParseAddr("198.18.0.3") },
		func(fl *flow) { fl.ev.Dst.IP = netip.MustParseAddr("198.18.0.4") },
		func(fl *flow) { fl.ev.Protocol = ProtocolTCP },
		func(fl *flow) { fl.ev.Action = ActionAudit },
		func(fl *flow) { fl.ev.Direction = Egress },
		func(fl *flow) { fl.podKey = "8187477f90b2" },
	}
	for i, v := range variants {
		fl := base
		v(&fl)
		fl.ev.Src.Port = uint16(1000 + i)
		// Each variant twice: folded with itself, apart from the others.
		f.add(t0.Add(time.Duration(i)*time.Millisecond), fl)
		f.add(t0.Add(time.Duration(i)*time.Millisecond+1), fl)
	}
	got := f.expire(t0.Add(time.Hour))
	if len(got) != len(variants) {
		t.Fatalf("%d flows, want %d", len(got), len(variants))
	}
	for i, fl := range got {
		if fl.ev.Count != 2 || fl.ev.Src.Port != uint16(1000+i) {
			t.Errorf("flow %d: count %d, source port %d; want 2 and %d (first-seen order)", i, fl.ev.Count, fl.ev.Src.Port, 1000+i)
		}
	}
}

func TestFolderExpiresOnlyClosedWindows(t *testing.T) {
	f := newFolder(time.Second, 100)
	f.add(t0, udpFlow("198.18.0.1", 1, "198.18.0.2", 1))
	f.add(t0.Add(600*time.Millisecond), udpFlow("198.18.0.1", 1, "198.18.0.2", 2))
	got := f.expire(t0.Add(1200 * time.Millisecond))
	if len(got) != 1 || got[0].ev.Dst.Port != 1 {
		t.Fatalf("expire = %+v, want only the flow to port 1", got)
	}
	got = f.closeAll()
	if len(got) != 1 || got[0].ev.Dst.Port != 2 {
		t.Fatalf("closeAll = %+v, want the flow to port 2", got)
	}
}

func TestFolderBoundsOpenFlows(t *testing.T) {
	f := newFolder(time.Second, 2)
	f.add(t0, udpFlow("198.18.0.1", 1, "198.18.0.2", 1))
	f.add(t0, udpFlow("198.18.0.1", 1, "198.18.0.2", 2))
	closed := f.add(t0, udpFlow("198.18.0.1", 1, "198.18.0.2", 3))
	if len(closed) != 2 || closed[0].ev.Dst.Port != 1 || closed[1].ev.Dst.Port != 2 {
		t.Fatalf("third flow closed %+v, want the two open ones in order", closed)
	}
	if f.len() != 1 {
		t.Errorf("%d flows open, want 1", f.len())
	}
}
