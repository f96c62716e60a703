package v1alpha1

import (
	"crypto/sha256"
	"encoding/binary"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// An AddressGroup's span is the set of nodes whose rule sets reference it.
// The controller writes the span onto the group as labels, and each agent
// watches AddressGroups with a label selector for its own node, so that the
// API server sends a group only to the nodes that need it (and to the other
// nodes of their buckets), not to every node.
//
// Node names run to 253 characters and label names stop at 63, and a label
// per node would put thousands of labels on a group every node uses, each
// change of which is another write of the group. So nodes are hashed into
// SpanBuckets buckets, and the buckets are packed four to a label: the
// label SpanLabelPrefix+"<k>" holds, as one hexadecimal digit, which of the
// buckets 4k to 4k+3 the group reaches (bit j for bucket 4k+j; the label is
// absent when it reaches none of them). A group every node references thus
// carries at most SpanBuckets/4 labels, and a node selects its groups with
// one set-based requirement on one label.
const (
	// SpanBuckets is how many buckets nodes are hashed into. Up to about
	// that many nodes, a node receives little beyond its own groups; at
	// 5,000 nodes it receives the groups of about 20 (see
	// docs/architecture.md).
	SpanBuckets = 256
	// SpanLabelPrefix starts the labels that carry a group's span.
	SpanLabelPrefix = "span.nftguard.io/"
)

// SpanBucket returns the bucket of a node: the first four bytes of the
// SHA-256 of its name, modulo SpanBuckets. (The low bits of FNV-1a depend
// only on the low bits of its state, so names that differ in their last
// characters, as node names do, fill its buckets unevenly.)
func SpanBucket(node string) int {
	sum := sha256.Sum256([]byte(node))
	return int(binary.BigEndian.Uint32(sum[:4]) % SpanBuckets)
}

// SpanLabels returns the labels that say a group reaches the given buckets
// (each in [0, SpanBuckets)); nil for none.
func SpanLabels(buckets []int) map[string]string {
	var nibbles [SpanBuckets / 4]uint8
	for _, b := range buckets {
		nibbles[b/4] |= 1 << (b % 4)
	}
	var out map[string]string
	for k, n := range nibbles {
		if n == 0 {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[SpanLabelPrefix+strconv.Itoa(k)] = strconv.FormatUint(uint64(n), 16)
	}
	return out
}

// IsSpanLabel reports whether a label key is one of the span's.
func IsSpanLabel(key string) bool { return strings.HasPrefix(key, SpanLabelPrefix) }

// SpanSelector returns the label selector of the groups that reach a node's
// bucket: its bucket's label holds one of the eight digits with the
// bucket's bit set.
func SpanSelector(node string) labels.Selector {
	b := SpanBucket(node)
	var values []string
	for n := 1; n < 16; n++ {
		if n&(1<<(b%4)) != 0 {
			values = append(values, strconv.FormatUint(uint64(n), 16))
		}
	}
	req, err := labels.NewRequirement(SpanLabelPrefix+strconv.Itoa(b/4), selection.In, values)
	if err != nil {
		panic(err) // the key and values are valid by construction
	}
	return labels.NewSelector().Add(*req)
}
