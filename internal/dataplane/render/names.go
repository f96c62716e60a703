package render

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/nftguard/nftguard/internal/dataplane/model"
)

// maxNameLen bounds every chain and set name (the kernel allows 256).
const maxNameLen = 64

// objName returns prefix+s when s is made of letters, digits, '.' and '-'
// (Kubernetes names, content hashes) and the result leaves room for a suffix of
// reserve bytes within maxNameLen. Otherwise it returns prefix, as much of s
// as fits (unsafe characters replaced by '-') and '_' with 12 hex characters
// of sha256(s); readable names never contain '_', so the two forms never
// collide.
func objName(prefix, s string, reserve int) string {
	if safeName(s) && len(prefix)+len(s)+reserve <= maxNameLen {
		return prefix + s
	}
	sum := sha256.Sum256([]byte(s))
	hash := hex.EncodeToString(sum[:])[:12]
	keep := maxNameLen - reserve - len(prefix) - 1 - len(hash)
	head := []byte(s)
	if len(head) > keep {
		head = head[:keep]
	}
	for i, c := range head {
		if !safeChar(c) {
			head[i] = '-'
		}
	}
	return prefix + string(head) + "_" + hash
}

func safeName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !safeChar(s[i]) {
			return false
		}
	}
	return !strings.HasPrefix(s, "-") && !strings.HasPrefix(s, ".")
}

func safeChar(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.'
}

// Derived names. A rule chain leaves room for the "-ports", "-net4" and
// "-net6" suffixes of its sets.
const ruleSetSuffixLen = len("-ports")

func RuleChainName(ruleID string) string { return objName("rule-", ruleID, ruleSetSuffixLen) }

// peersChainName names the chain of a rule's peers without its ports, which
// port dispatch jumps to.
func peersChainName(ruleID string) string { return objName("peers-", ruleID, 0) }

func PodChainName(dir, namespace, name string) string {
	return objName(dir+"-", namespace+"."+name, 0)
}

func GroupSetName(fam model.Family, interval bool, group string) string {
	p := "ag"
	if interval {
		p = "agn"
	}
	if fam == model.IPv6 {
		return objName(p+"6-", group, 0)
	}
	return objName(p+"4-", group, 0)
}

func endpointSetName(fam model.Family, group string) string {
	if fam == model.IPv6 {
		return objName("ep6-", group, 0)
	}
	return objName("ep4-", group, 0)
}

// PodPortMapName names a pod direction's port dispatch map (sets and chains
// have separate names, but a distinct prefix reads better).
func PodPortMapName(dir, namespace, name string) string {
	return objName(dir+"p-", namespace+"."+name, 0)
}

// segmentChainName names the chain of a port segment after the rules it
// jumps to.
func segmentChainName(ids []string) string {
	sum := sha256.Sum256([]byte(strings.Join(ids, "\n")))
	return "ports-" + hex.EncodeToString(sum[:8])
}
