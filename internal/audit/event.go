package audit

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"time"
)

// SchemaVersion is the value of the "schema" field of every line. It changes
// only when a field changes meaning or is removed.
const SchemaVersion = 1

// Action is what happened to a logged packet, or "lost" for a line that
// counts records the log could not show.
type Action string

const (
	// ActionDrop: the packet was dropped.
	ActionDrop Action = "drop"
	// ActionAudit: an Audit isolation would have dropped the packet and let it pass.
	ActionAudit Action = "audit"
	// ActionLost: the line counts records that are missing from the log.
	ActionLost Action = "lost"
)

// Direction is the direction of a packet seen from the local pod whose
// chain logged it.
type Direction string

const (
	Ingress Direction = "ingress"
	Egress  Direction = "egress"
)

// LostReason says why records are missing from the log.
type LostReason string

const (
	// LostRateLimit counts packets the dataplane's in-kernel rate limit kept
	// from being logged. The kernel does not report them to NFLOG readers, so
	// this package never detects them by itself: they appear only when the
	// agent reports them with Logger.ReportRateLimited (for example from a
	// counter on the over-limit branch). Without that, a log line is a sample
	// of the drops above the limit, and its count is a lower bound.
	LostRateLimit LostReason = "ratelimit"
	// LostBuffer counts records the kernel could not queue on the NFLOG
	// socket (receive buffer overrun, ENOBUFS), measured by gaps in the
	// per-group sequence numbers.
	LostBuffer LostReason = "buffer"
	// LostQueue counts records read from the socket and discarded because
	// the internal queue was full (the pipeline fell behind).
	LostQueue LostReason = "queue"
	// LostMalformed counts records with a prefix or packet that could not be
	// decoded (including records other rules logged to the same group).
	LostMalformed LostReason = "malformed"
	// LostWrite counts lines that could not be written to the output.
	LostWrite LostReason = "write"
)

// lostReasons lists every reason, in the order lost lines are written.
var lostReasons = [...]LostReason{LostRateLimit, LostBuffer, LostQueue, LostMalformed, LostWrite}

// Protocol is an IP protocol number. Its text form is "TCP", "UDP", "SCTP",
// "ICMP", "ICMPv6" or, for any other protocol, the decimal number.
type Protocol uint8

const (
	ProtocolICMP   Protocol = 1
	ProtocolTCP    Protocol = 6
	ProtocolUDP    Protocol = 17
	ProtocolICMPv6 Protocol = 58
	ProtocolSCTP   Protocol = 132
)

var protocolNames = map[Protocol]string{
	ProtocolICMP:   "ICMP",
	ProtocolTCP:    "TCP",
	ProtocolUDP:    "UDP",
	ProtocolICMPv6: "ICMPv6",
	ProtocolSCTP:   "SCTP",
}

func (p Protocol) String() string {
	if n, ok := protocolNames[p]; ok {
		return n
	}
	return strconv.Itoa(int(p))
}

// MarshalText implements encoding.TextMarshaler.
func (p Protocol) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Protocol) UnmarshalText(b []byte) error {
	s := string(b)
	for n, name := range protocolNames {
		if name == s {
			*p = n
			return nil
		}
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return fmt.Errorf("unknown protocol %q", s)
	}
	*p = Protocol(n)
	return nil
}

// Endpoint is one side of a logged packet. Unknown fields are empty and
// omitted from JSON; a port is known only for TCP, UDP and SCTP.
type Endpoint struct {
	IP        netip.Addr `json:"ip,omitzero"`
	Port      uint16     `json:"port,omitzero"`
	Namespace string     `json:"namespace,omitempty"`
	Pod       string     `json:"pod,omitempty"`
}

// Event is one line of the audit log: a flow of logged packets folded over
// a window (Action drop or audit), or a count of lost records (Action lost,
// with Reason). Its JSON form is the line.
type Event struct {
	// Time is when the first packet of the line was read from NFLOG, a few
	// milliseconds after it was logged (for a lost line: when the loss was
	// written).
	Time      time.Time
	Node      string
	Action    Action
	Direction Direction
	Protocol  Protocol
	Src       Endpoint
	Dst       Endpoint
	// Policies are the policies isolating the local pod in Direction, as
	// "NetworkPolicy/<namespace>/<name>" or "DefaultDeny/<name>".
	Policies []string
	// Count is the number of packets (or lost records) the line stands for.
	Count  uint64
	Reason LostReason
}

// flowLine and lostLine fix the JSON field names and order of the two kinds
// of line.
type flowLine struct {
	Schema    int       `json:"schema"`
	Time      string    `json:"time"`
	Node      string    `json:"node"`
	Action    Action    `json:"action"`
	Direction Direction `json:"direction"`
	Protocol  Protocol  `json:"protocol"`
	Src       Endpoint  `json:"src"`
	Dst       Endpoint  `json:"dst"`
	Policies  []string  `json:"policies"`
	Count     uint64    `json:"count"`
}

type lostLine struct {
	Schema int        `json:"schema"`
	Time   string     `json:"time"`
	Node   string     `json:"node"`
	Action Action     `json:"action"`
	Count  uint64     `json:"count"`
	Reason LostReason `json:"reason"`
}

// MarshalJSON writes e as one audit log line (without the newline): time in
// RFC 3339 with nanoseconds in UTC, and policies always present (possibly
// empty) on drop and audit lines.
func (e Event) MarshalJSON() ([]byte, error) {
	t := e.Time.UTC().Format(time.RFC3339Nano)
	if e.Action == ActionLost {
		return json.Marshal(lostLine{
			Schema: SchemaVersion, Time: t, Node: e.Node, Action: e.Action,
			Count: e.Count, Reason: e.Reason,
		})
	}
	policies := e.Policies
	if policies == nil {
		policies = []string{}
	}
	return json.Marshal(flowLine{
		Schema: SchemaVersion, Time: t, Node: e.Node, Action: e.Action,
		Direction: e.Direction, Protocol: e.Protocol, Src: e.Src, Dst: e.Dst,
		Policies: policies, Count: e.Count,
	})
}

// UnmarshalJSON reads one audit log line.
func (e *Event) UnmarshalJSON(b []byte) error {
	var l struct {
		flowLine
		Reason LostReason `json:"reason"`
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return err
	}
	if l.Schema != SchemaVersion {
		return fmt.Errorf("unsupported audit log schema %d", l.Schema)
	}
	t, err := time.Parse(time.RFC3339Nano, l.Time)
	if err != nil {
		return err
	}
	*e = Event{
		Time: t, Node: l.Node, Action: l.Action, Direction: l.Direction,
		Protocol: l.Protocol, Src: l.Src, Dst: l.Dst, Policies: l.Policies,
		Count: l.Count, Reason: l.Reason,
	}
	return nil
}
