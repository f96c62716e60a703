package model

import (
	"fmt"
	"strings"
)

// ObjectKind is what an nf_tables notification is about.
type ObjectKind string

const (
	ObjectTable    ObjectKind = "table"
	ObjectChain    ObjectKind = "chain"
	ObjectRule     ObjectKind = "rule"
	ObjectSet      ObjectKind = "set"
	ObjectElements ObjectKind = "elements"
	// ObjectGeneration ends a transaction: the kernel's new ruleset
	// generation and the process that committed it.
	ObjectGeneration ObjectKind = "generation"
)

// Notification is one change the kernel announced to the nf_tables
// multicast group, in any table: a change of nftguard's own table that no
// Apply made is drift to repair at once.
type Notification struct {
	// Deleted is set for a deletion, clear for a creation (or an update,
	// which the kernel announces as a creation).
	Deleted bool
	Object  ObjectKind
	// Family is the table's family ("inet", "ip", ...) and Table its name.
	Family, Table string
	// Name is the chain or set changed, the chain of a rule, or the set of
	// elements.
	Name string
	// Handle and RuleID identify a rule: its kernel handle, and the id in
	// its comment (empty for rules nftguard did not write).
	Handle uint64
	RuleID string
	// Generation, PID and Process describe the end of a transaction: the
	// ruleset generation it made and the task that committed it (PID is
	// the kernel's id of the committing thread, so a process tells its own
	// transactions by its threads, /proc/self/task/<PID>).
	Generation uint32
	PID        uint32
	Process    string
	// PortID is the netlink port id of the socket the change came on
	// (every notification of a transaction carries it): a writer tells its
	// own transactions by it, whatever they contain.
	PortID uint32
}

// Ours reports whether the notification is about table inet nftguard.
func (n Notification) Ours() bool { return n.Family == "inet" && n.Table == TableName }

// String describes the notification like `nft monitor` does.
func (n Notification) String() string {
	if n.Object == ObjectGeneration {
		return fmt.Sprintf("# new generation %d by process %d (%s)", n.Generation, n.PID, n.Process)
	}
	var b strings.Builder
	if n.Deleted {
		b.WriteString("delete ")
	} else {
		b.WriteString("add ")
	}
	b.WriteString(string(n.Object))
	fmt.Fprintf(&b, " %s %s", n.Family, n.Table)
	if n.Name != "" {
		b.WriteString(" " + n.Name)
	}
	if n.Handle != 0 {
		fmt.Fprintf(&b, " handle %d", n.Handle)
	}
	if n.RuleID != "" {
		fmt.Fprintf(&b, " comment %q", n.RuleID)
	}
	return b.String()
}
