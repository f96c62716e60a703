package controller

import (
	"fmt"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
)

// Options configures the controllers Setup registers.
type Options struct {
	// MaxObjectBytes bounds a written NodeRuleSet or AddressGroup spec.
	MaxObjectBytes int
	// MaxGroupEntries bounds the addresses or endpoints of one AddressGroup
	// object; a larger group is split into shards
	// (compiler.DefaultMaxGroupEntries when 0).
	MaxGroupEntries int
	// ExemptNamespaces are namespaces whose pods no DefaultDeny or
	// NetworkPolicy isolates: nftguard's own, so that no policy can cut its
	// controller off the API server.
	ExemptNamespaces []string
	// DropCounts, when set, gives the packets a policy's isolation logged
	// (the drops API's counts), for DefaultDeny status.
	DropCounts DropCounter
	// DropCountsInterval bounds how often a DefaultDeny's status is
	// written for its counts alone (default 30 s).
	DropCountsInterval time.Duration
}

// DropCounter returns the packets the isolation of policy
// ("DefaultDeny/<name>") dropped and audited, and since when it counts.
type DropCounter func(policy string) (dropped, audited uint64, since time.Time)

// Setup registers nftguard's reconcilers with a manager.
func Setup(mgr ctrl.Manager, opts Options) error {
	state := NewState()
	rs := &RuleSetReconciler{
		Client:           mgr.GetClient(),
		Recorder:         mgr.GetEventRecorder("nftguard-controller"),
		State:            state,
		MaxObjectBytes:   opts.MaxObjectBytes,
		MaxGroupEntries:  opts.MaxGroupEntries,
		ExemptNamespaces: opts.ExemptNamespaces,
	}
	if err := rs.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the rule-set controller: %w", err)
	}
	st := &StatusReconciler{
		Client:             mgr.GetClient(),
		Recorder:           mgr.GetEventRecorder("nftguard-controller"),
		State:              state,
		DropCounts:         opts.DropCounts,
		DropCountsInterval: opts.DropCountsInterval,
		ExemptNamespaces:   opts.ExemptNamespaces,
	}
	if err := st.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the status controller: %w", err)
	}
	return nil
}
