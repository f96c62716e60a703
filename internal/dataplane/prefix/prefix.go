// Package prefix formats and parses the NFLOG prefix that the dataplane puts
// on the log rule at the end of every isolated pod chain, so that the audit
// reader can tell what a logged packet was (dropped or audited, ingress or
// egress, which pod). It imports nothing beyond the standard library.
//
// The format is fixed: nftguard:<action>:<dir>:<podkey>, where action is
// drop or audit, dir is in or eg, and podkey is PodKey(namespace, name).
package prefix

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// Tag is the first field of every nftguard NFLOG prefix.
const Tag = "nftguard"

// PodKeyLen is the length of a pod key in hex characters.
const PodKeyLen = 12

// Action is what the rule did with the logged packet.
type Action string

const (
	// ActionDrop marks packets an Enforce isolation dropped.
	ActionDrop Action = "drop"
	// ActionAudit marks packets an Audit isolation let pass that Enforce would drop.
	ActionAudit Action = "audit"
)

// Direction is the direction of the logged packet, seen from the pod.
type Direction string

const (
	// Ingress is traffic towards the pod.
	Ingress Direction = "in"
	// Egress is traffic from the pod.
	Egress Direction = "eg"
)

// Fields are the parts of a prefix.
type Fields struct {
	Action    Action
	Direction Direction
	PodKey    string
}

// PodKey is the first 12 hex characters of sha256("<namespace>/<name>").
func PodKey(namespace, name string) string {
	sum := sha256.Sum256([]byte(namespace + "/" + name))
	return hex.EncodeToString(sum[:])[:PodKeyLen]
}

// Format returns the prefix for a log rule. It does not validate its input.
func Format(action Action, dir Direction, podKey string) string {
	return Tag + ":" + string(action) + ":" + string(dir) + ":" + podKey
}

// String returns the prefix the fields stand for.
func (f Fields) String() string { return Format(f.Action, f.Direction, f.PodKey) }

// Parse decodes a prefix written by Format. Trailing NUL bytes and spaces
// (as some NFLOG readers deliver them) are ignored.
func Parse(s string) (Fields, error) {
	s = strings.TrimRight(s, "\x00 ")
	parts := strings.Split(s, ":")
	if len(parts) != 4 || parts[0] != Tag {
		return Fields{}, fmt.Errorf("not an nftguard log prefix: %q", s)
	}
	f := Fields{Action: Action(parts[1]), Direction: Direction(parts[2]), PodKey: parts[3]}
	switch f.Action {
	case ActionDrop, ActionAudit:
	default:
		return Fields{}, fmt.Errorf("log prefix %q: unknown action %q", s, parts[1])
	}
	switch f.Direction {
	case Ingress, Egress:
	default:
		return Fields{}, fmt.Errorf("log prefix %q: unknown direction %q", s, parts[2])
	}
	if !isPodKey(f.PodKey) {
		return Fields{}, fmt.Errorf("log prefix %q: pod key %q is not %d lowercase hex characters", s, parts[3], PodKeyLen)
	}
	return f, nil
}

func isPodKey(s string) bool {
	if len(s) != PodKeyLen {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
