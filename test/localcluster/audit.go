package localcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// AuditMark is a position in every node's drop log.
type AuditMark map[string]int64

// AuditLine is one line of a node's drop log.
type AuditLine struct {
	Node string
	Line string
}

// MarkAuditLogs records the current end of every agent's drop log, so that
// AuditLinesSince returns only what was written afterwards.
func (c *Cluster) MarkAuditLogs() AuditMark {
	m := AuditMark{}
	for _, n := range c.Nodes() {
		if n.AuditLog == "" {
			continue
		}
		if fi, err := os.Stat(n.AuditLog); err == nil {
			m[n.Name] = fi.Size()
		} else {
			m[n.Name] = 0
		}
	}
	return m
}

// AuditLinesSince returns the complete lines written to the drop logs after
// mark for which match (nil: any) holds.
func (c *Cluster) AuditLinesSince(mark AuditMark, match func(string) bool) []AuditLine {
	var out []AuditLine
	for _, n := range c.Nodes() {
		if n.AuditLog == "" {
			continue
		}
		f, err := os.Open(n.AuditLog)
		if err != nil {
			continue
		}
		off := mark[n.Name]
		if fi, err := f.Stat(); err == nil && fi.Size() < off {
			off = 0 // rotated
		}
		b, _ := io.ReadAll(io.NewSectionReader(f, off, 1<<30))
		f.Close()
		if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
			b = b[:i]
		} else {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if l != "" && (match == nil || match(l)) {
				out = append(out, AuditLine{Node: n.Name, Line: l})
			}
		}
	}
	return out
}

// WaitAuditLines waits until a line matching match appears in a drop log
// after mark, or ctx ends, and returns what matched by then.
func (c *Cluster) WaitAuditLines(ctx context.Context, mark AuditMark, match func(string) bool) []AuditLine {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if lines := c.AuditLinesSince(mark, match); len(lines) > 0 {
			return lines
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// MatchFlow matches drop-log lines (JSON, docs/audit-log schema) about
// packets from src to dst:dstPort over protocol.
func MatchFlow(src, dst netip.Addr, dstPort uint16, protocol corev1.Protocol) func(string) bool {
	return func(line string) bool {
		var e struct {
			Protocol string `json:"protocol"`
			Src      struct {
				IP netip.Addr `json:"ip"`
			} `json:"src"`
			Dst struct {
				IP   netip.Addr `json:"ip"`
				Port uint16     `json:"port"`
			} `json:"dst"`
		}
		if json.Unmarshal([]byte(line), &e) != nil {
			return false
		}
		return e.Src.IP == src && e.Dst.IP == dst && e.Dst.Port == dstPort && strings.EqualFold(e.Protocol, string(protocol))
	}
}
