package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// prefixMagic starts every NFLOG prefix the dataplane writes.
const prefixMagic = "nftguard"

// podKeyLen is the length of a pod key: 12 hex characters (48 bits).
const podKeyLen = 12

// Prefix is the decoded NFLOG prefix of a logged packet:
// "nftguard:<action>:<dir>:<podkey>", where action is drop or audit, dir is
// in or eg, and podkey names the local pod whose chain logged the packet
// (see PodKey).
type Prefix struct {
	Action    Action
	Direction Direction
	PodKey    string
}

// String formats p as the dataplane writes it.
func (p Prefix) String() string {
	dir := "in"
	if p.Direction == Egress {
		dir = "eg"
	}
	return prefixMagic + ":" + string(p.Action) + ":" + dir + ":" + p.PodKey
}

// PodKey is the key of a pod in NFLOG prefixes: the first 12 hex characters
// of the SHA-256 of "<namespace>/<name>".
func PodKey(namespace, name string) string {
	sum := sha256.Sum256([]byte(namespace + "/" + name))
	return hex.EncodeToString(sum[:podKeyLen/2])
}

// ParsePrefix decodes an NFLOG prefix. Trailing NUL bytes and spaces are
// ignored; anything else that does not follow the format is an error.
func ParsePrefix(s string) (Prefix, error) {
	s = strings.TrimRight(s, "\x00 ")
	parts := strings.Split(s, ":")
	if len(parts) != 4 || parts[0] != prefixMagic {
		return Prefix{}, fmt.Errorf("prefix %q is not nftguard:<action>:<dir>:<podkey>", s)
	}
	var p Prefix
	switch parts[1] {
	case "drop":
		p.Action = ActionDrop
	case "audit":
		p.Action = ActionAudit
	default:
		return Prefix{}, fmt.Errorf("prefix %q: unknown action %q", s, parts[1])
	}
	switch parts[2] {
	case "in":
		p.Direction = Ingress
	case "eg":
		p.Direction = Egress
	default:
		return Prefix{}, fmt.Errorf("prefix %q: unknown direction %q", s, parts[2])
	}
	if !isPodKey(parts[3]) {
		return Prefix{}, fmt.Errorf("prefix %q: pod key %q is not %d lowercase hex characters", s, parts[3], podKeyLen)
	}
	p.PodKey = parts[3]
	return p, nil
}

func isPodKey(s string) bool {
	if len(s) != podKeyLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
