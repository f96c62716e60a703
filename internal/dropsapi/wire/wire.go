// Package wire holds the drops API's names and wire types: what the drops
// server, the agents that push to it and the clients that read it share.
// It imports no server code, so that agents and clients stay small.
package wire

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftguard/nftguard/internal/audit"
)

const (
	// Group and Version of the aggregated API.
	Group   = "drops.nftguard.io"
	Version = "v1alpha1"
	// GroupVersion is Group/Version.
	GroupVersion = Group + "/" + Version
	// APIServiceName is the name of the APIService object.
	APIServiceName = Version + "." + Group

	// ResourceDrops lists drop and audit flows; ResourceDropCounts the
	// packets counted per policy. Both are namespaced and can be listed
	// cluster-wide.
	ResourceDrops      = "drops"
	ResourceDropCounts = "dropcounts"

	// Audience is the token audience agents push with.
	Audience = "drops.nftguard.io"
	// PushPath is where agents push lines.
	PushPath = "/push/" + Version + "/lines"

	// NodeNameExtra is the user extra that the API server sets, for tokens
	// bound to a pod or a node, to the node's name.
	NodeNameExtra = "authentication.kubernetes.io/node-name"
)

// DropList is the answer to a list of drops: the matching lines of every
// node the server holds, grouped by flow.
type DropList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata"`
	// Nodes lists the nodes whose lines the server holds.
	Nodes []string `json:"nodes"`
	// Items are the flows, the busiest first.
	Items []audit.Flow `json:"items"`
	// Lost counts records missing from the nodes' logs in the window, by
	// reason. Only cluster-wide lists show it: losses belong to no namespace.
	Lost map[audit.LostReason]uint64 `json:"lost,omitempty"`
	// Oldest is the time of the oldest line every node still covers; when it
	// is after the query's since, older lines have been forgotten.
	Oldest time.Time `json:"oldest,omitzero"`
	// Truncated is true when some node's window no longer reaches since.
	Truncated bool `json:"truncated,omitempty"`
	// Redacted counts the flows whose peer pod name was withheld because the
	// user may not list pods in the peer's namespace.
	Redacted int `json:"redacted,omitempty"`
}

// Drop is one line, as a watch of drops delivers it.
type Drop struct {
	metav1.TypeMeta `json:",inline"`
	// Line is the drop log line, in the audit log's schema.
	Line audit.Event `json:"line"`
}

// WatchEvent is one event of a watch of drops: type ADDED and a Drop, or
// type ERROR and a metav1.Status.
type WatchEvent struct {
	Type   string `json:"type"`
	Object any    `json:"object"`
}

// DropCount is the packets one policy dropped (or, in Audit mode, would
// have dropped) in one namespace and direction since the server started.
type DropCount struct {
	// Policy is "NetworkPolicy/<namespace>/<name>" or "DefaultDeny/<name>",
	// or "" for packets of pods no known policy isolates.
	Policy    string          `json:"policy"`
	Namespace string          `json:"namespace"`
	Direction audit.Direction `json:"direction"`
	Action    audit.Action    `json:"action"`
	Packets   uint64          `json:"packets"`
}

// DropCountList answers a list of dropcounts.
type DropCountList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata"`
	// Since is when this server started counting.
	Since metav1.Time `json:"since"`
	Items []DropCount `json:"items"`
}

// PushRequest is a batch of lines from one agent. Lines carry consecutive
// sequence numbers from First within Stream, which an agent draws anew
// each time it starts: the server keeps what it has not seen yet.
type PushRequest struct {
	Node   string        `json:"node"`
	Stream string        `json:"stream"`
	First  uint64        `json:"first"`
	Lines  []audit.Event `json:"lines"`
}

// PushResponse says which sequence number the server expects next: every
// line before it is held.
type PushResponse struct {
	Next uint64 `json:"next"`
}
