package audit

import (
	"github.com/nftguard/nftguard/internal/dataplane/prefix"
)

// Prefix is the decoded NFLOG prefix of a logged packet:
// "nftguard:<action>:<dir>:<podkey>" (see package prefix, which the
// dataplane formats its log rules with), in the audit log's terms.
type Prefix struct {
	Action    Action
	Direction Direction
	PodKey    string
}

// String formats p as the dataplane writes it.
func (p Prefix) String() string {
	dir := prefix.Ingress
	if p.Direction == Egress {
		dir = prefix.Egress
	}
	return prefix.Format(prefix.Action(p.Action), dir, p.PodKey)
}

// PodKey is the key of a pod in NFLOG prefixes.
func PodKey(namespace, name string) string { return prefix.PodKey(namespace, name) }

// ParsePrefix decodes an NFLOG prefix. Trailing NUL bytes and spaces are
// ignored; anything else that does not follow the format is an error.
func ParsePrefix(s string) (Prefix, error) {
	f, err := prefix.Parse(s)
	if err != nil {
		return Prefix{}, err
	}
	p := Prefix{Action: Action(f.Action), Direction: Ingress, PodKey: f.PodKey}
	if f.Direction == prefix.Egress {
		p.Direction = Egress
	}
	return p, nil
}
