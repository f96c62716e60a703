package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/nftnl"
	"github.com/nftguard/nftguard/internal/dataplane/render"
	"github.com/nftguard/nftguard/internal/message"
)

// Programmer is what the agent needs from the dataplane: apply a desired
// table as one transaction, and tell whether the kernel still holds what was
// last applied.
type Programmer interface {
	Apply(desired *model.Table) (nftnl.Stats, error)
	// Verify lists the differences between the kernel table and the last
	// applied one (a flushed chain, a deleted element or table); the next
	// Apply repairs them.
	Verify() (nftnl.Drift, error)
	// Delete removes the table (uninstall).
	Delete() error
}

// Revoker marks the conntrack entries of the connections a table denies as
// revoked, and clears the mark of those it allows again (MarkRevoker).
type Revoker interface {
	Revoke(tab *model.Table) (Revocation, error)
}

// Counters reports the audit log's totals for the status.
type Counters interface {
	Totals() audit.Totals
}

var (
	programDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "nftguard_agent_program_duration_seconds",
		Help:    "Time to render and program the node's rule set (one netlink transaction).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	})
	programFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nftguard_agent_program_failures_total",
		Help: "Rule sets the agent could not program, by reason.",
	}, []string{"reason"})
	revokedFlows = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nftguard_agent_revoked_connections_total",
		Help: "Established connections the agent revoked because a changed rule set denies them (change=revoked), or restored because a later one allows them again (change=restored).",
	}, []string{"change"})
	revokeFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nftguard_agent_revocation_failures_total",
		Help: "Passes over the conntrack table that could not mark every connection the rule set denies; the next reconcile tries again.",
	})
	driftRepairs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nftguard_agent_drift_repairs_total",
		Help: "Times the agent found the table changed behind its back (through a change notification or the periodic resync) and restored it.",
	})
	programmedGeneration = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "nftguard_agent_programmed_generation",
		Help: "Generation of the NodeRuleSet the node's table holds.",
	})
)

func init() {
	metrics.Registry.MustRegister(programDuration, programFailures, driftRepairs, programmedGeneration, revokedFlows, revokeFailures)
}

// Reconciler programs the node's NodeRuleSet into nftables and reports the
// outcome in the NodeRuleSet's status. It reads only its own NodeRuleSet and
// the AddressGroups it references; when it cannot program a rule set the
// previous one stays in force.
type Reconciler struct {
	Client client.Client
	// APIReader reads around the cache: a group the cache has not seen yet
	// is looked up before it is reported missing.
	APIReader  client.Reader
	NodeName   string
	Programmer Programmer
	Render     render.Options
	Resolver   *Resolver
	Counters   Counters
	// Groups, when set, is the cache transform's view of the groups this
	// node references; the reconciler keeps it current.
	Groups *GroupFilter
	// ResyncPeriod is how often the table is checked for drift and the
	// status counters refreshed.
	ResyncPeriod time.Duration
	Now          func() time.Time
	// Attachments, when set, is the CNI plugin's side of the agent: pod
	// addresses come from the runtime's ADDs, and traffic of pod-range
	// addresses that are not ready is dropped. Nil: the rule set's
	// addresses are used and nothing is held (the node says so in its
	// status).
	Attachments *Attachments
	// PodCIDRs are the node's pod ranges when its rule set carries none
	// (Node.spec.podCIDRs is empty).
	PodCIDRs []string
	// Revoker, when set, revokes the established connections a changed
	// table now denies, after each Apply that changed something, and again
	// after a pass that failed (nil: established connections are kept).
	Revoker Revoker
	// revokePending is set when a revocation pass failed: the next
	// reconcile runs one whether or not the table changed.
	revokePending bool
	// Parts are the optional parts whose conditions the status carries
	// (the drop log, the endpoints); Wake writes them when they change.
	Parts []Part
	wake  chan event.GenericEvent
	once  sync.Once

	mu sync.Mutex
	// fetched holds groups read from the API because the cache had stripped
	// them (only the single worker running Reconcile touches it).
	fetched map[string]*v1alpha1.AddressGroup
	// renderer renders with the Render options, reusing what did not change
	// since the last rule set (only the worker running Reconcile uses it).
	renderer   *render.Renderer
	programmed int64  // generation in the kernel, 0 if none yet
	inputs     string // key of the rule set and groups in the kernel
	lastApply  time.Time
	lastTable  tableCounts
	// leftOut is what the last program left out (missing groups), or nil.
	leftOut *v1alpha1.LeftOut
}

type tableCounts struct{ chains, rules, elements int }

// +kubebuilder:rbac:groups=nftguard.io,resources=noderulesets,verbs=get;list;watch
// +kubebuilder:rbac:groups=nftguard.io,resources=noderulesets/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=nftguard.io,resources=addressgroups,verbs=get;list;watch

// Reconcile programs the rule set if it changed, repairs drift, and writes status.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	logger := log.FromContext(ctx)
	if req.Name != r.NodeName {
		return reconcile.Result{}, nil
	}
	rs := &v1alpha1.NodeRuleSet{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: r.NodeName}, rs); err != nil {
		if apierrors.IsNotFound(err) {
			if r.Attachments != nil && r.Attachments.Status(ctx) != nil {
				// A node with no rule set yet: program an empty one, so that
				// nftguard's own pods can start and every other pod is held.
				logger.Info("No NodeRuleSet for this node yet; programming an empty one", "node", r.NodeName)
				empty := &v1alpha1.NodeRuleSet{ObjectMeta: metav1.ObjectMeta{Name: r.NodeName}}
				if c := r.program(ctx, empty, nil, "empty", nil); c.Status != metav1.ConditionTrue {
					return reconcile.Result{RequeueAfter: min(5*time.Second, r.resync())}, nil
				}
				return reconcile.Result{RequeueAfter: r.resync()}, nil
			}
			// No rule set (yet, or any more): keep whatever the table holds.
			logger.Info("No NodeRuleSet for this node; keeping the current table", "node", r.NodeName)
			return reconcile.Result{RequeueAfter: r.resync()}, nil
		}
		return reconcile.Result{}, fmt.Errorf("reading NodeRuleSet %s: %w", r.NodeName, err)
	}
	if _, ok := rs.Annotations[v1alpha1.UninstallAnnotation]; ok {
		return r.uninstall(ctx, rs)
	}
	if r.Attachments != nil {
		r.Attachments.resume()
	}

	if r.Groups != nil {
		r.Groups.SetReferenced(rs.Spec.AddressGroups)
	}
	groups, inputs, missing, groupsErr := r.groups(ctx, rs)
	if r.Attachments != nil {
		inputs += "/cni:" + strconv.FormatUint(r.Attachments.currentVersion(), 10)
	}
	r.mu.Lock()
	upToDate := groupsErr == nil && r.inputs == inputs
	r.mu.Unlock()
	if upToDate {
		drift, err := r.Programmer.Verify()
		if err != nil {
			logger.Error(err, "Checking the table for drift")
			drift = nftnl.Drift{err.Error()}
		}
		if len(drift) > 0 {
			logger.Info("Table changed behind the agent's back; restoring it", "generation", rs.Generation, "drift", drift)
			driftRepairs.Inc()
			upToDate = false
		}
	}
	var cond metav1.Condition
	switch {
	case groupsErr != nil:
		cond = r.fail(ctx, rs, v1alpha1.ReasonProgramFailed, groupsErr)
	case !upToDate && len(missing) > 0:
		// Degrade per policy: program everything but the rules that need
		// the missing groups; their policies' pods stay isolated.
		target, left := withoutMissing(rs, missing)
		log.FromContext(ctx).Info("Address groups missing; programming the rule set without the rules that reference them",
			"generation", rs.Generation, "addressGroups", left.AddressGroups, "policies", left.Policies)
		programFailures.WithLabelValues(v1alpha1.ReasonAddressGroupMissing).Inc()
		cond = r.program(ctx, target, groups, inputs, left)
	case !upToDate:
		cond = r.program(ctx, rs, groups, inputs, nil)
	default:
		cond = r.programmedCondition(rs)
	}
	if err := r.writeStatus(ctx, rs, append([]metav1.Condition{cond}, r.pluginConditions(rs)...)...); err != nil {
		return reconcile.Result{}, err
	}
	after := r.resync()
	if r.Attachments != nil {
		release, next := r.Attachments.enforceBound()
		if release {
			r.Attachments.poke()
		}
		if next > 0 {
			after = min(after, next)
		}
	}
	if cond.Status != metav1.ConditionTrue || len(missing) > 0 {
		// Retry: a missing group may appear, a transient kernel error may pass.
		return reconcile.Result{RequeueAfter: min(5*time.Second, after)}, nil
	}
	return reconcile.Result{RequeueAfter: after}, nil
}

// pluginConditions are the conditions on how the node holds pods until they
// are programmed: FirstPacketIsolation, and CNIChained when the agent
// chains the plugin itself.
func (r *Reconciler) pluginConditions(rs *v1alpha1.NodeRuleSet) []metav1.Condition {
	first := metav1.Condition{Type: v1alpha1.ConditionFirstPacket, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonHeldUntilReady,
		ObservedGeneration: rs.Generation}
	ranges := r.podCIDRs(rs)
	switch {
	case r.Attachments == nil:
		first.Status, first.Reason = metav1.ConditionFalse, v1alpha1.ReasonPluginDisabled
		first.Message = "The agent runs without the nftguard CNI plugin: a new pod's traffic is not filtered until this node has programmed it"
	case len(ranges) == 0:
		first.Status, first.Reason = metav1.ConditionFalse, v1alpha1.ReasonPodRangesUnknown
		first.Message = "Node.spec.podCIDRs is empty and the agent has no --pod-cidrs: a new pod's traffic is not filtered until this node has programmed it"
	default:
		first.Message = fmt.Sprintf("Traffic of addresses in %s passes only once their pod is programmed", strings.Join(ranges, ", "))
	}
	conds := []metav1.Condition{first}
	if r.Attachments != nil && r.Attachments.Installer != nil {
		st := r.Attachments.Installer.Check()
		c := metav1.Condition{Type: v1alpha1.ConditionCNIChained, Status: metav1.ConditionFalse, Reason: st.Reason,
			Message: st.Message, ObservedGeneration: rs.Generation}
		if st.Chained {
			c.Status = metav1.ConditionTrue
		}
		conds = append(conds, c)
	}
	return conds
}

// podCIDRs are the node's pod ranges: the rule set's, else the flag's.
func (r *Reconciler) podCIDRs(rs *v1alpha1.NodeRuleSet) []string {
	if len(rs.Spec.PodCIDRs) > 0 {
		return rs.Spec.PodCIDRs
	}
	return r.PodCIDRs
}

// uninstall deletes the node's table and reports Programmed=False with
// reason Uninstalled, for as long as the NodeRuleSet carries the uninstall
// annotation: traffic on the node is then not filtered at all. Removing the
// annotation programs the rule set again.
func (r *Reconciler) uninstall(ctx context.Context, rs *v1alpha1.NodeRuleSet) (reconcile.Result, error) {
	r.mu.Lock()
	had := r.inputs != "" || r.programmed != 0
	r.inputs, r.programmed, r.leftOut = "", 0, nil // the next Apply after uninstall starts afresh
	r.mu.Unlock()
	cond := metav1.Condition{Type: v1alpha1.ConditionProgrammed, Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonUninstalled,
		Message: "Table inet nftguard deleted for uninstall; this node filters no traffic", ObservedGeneration: rs.Generation}
	if r.Attachments != nil {
		cond.Message = "CNI plugin removed and table inet nftguard deleted for uninstall; this node filters no traffic"
	}
	if err := r.uninstallPlugin(); err != nil {
		// The table stays: deleting it with the plugin still chained would
		// leave pods to an agent about to be deleted.
		cond = r.fail(ctx, rs, v1alpha1.ReasonProgramFailed, err)
	} else if err := r.Programmer.Delete(); err != nil {
		cond = r.fail(ctx, rs, v1alpha1.ReasonProgramFailed, fmt.Errorf("deleting the table for uninstall: %w", err))
	} else if had {
		log.FromContext(ctx).Info("Deleted the table for uninstall", "generation", rs.Generation)
		programmedGeneration.Set(0)
	}
	if err := r.writeStatus(ctx, rs, cond); err != nil {
		return reconcile.Result{}, err
	}
	if cond.Reason != v1alpha1.ReasonUninstalled {
		return reconcile.Result{RequeueAfter: min(5*time.Second, r.resync())}, nil
	}
	return reconcile.Result{RequeueAfter: r.resync()}, nil
}

// uninstallPlugin takes the CNI plugin out of the node, if the agent
// serves it.
func (r *Reconciler) uninstallPlugin() error {
	if r.Attachments == nil {
		return nil
	}
	return r.Attachments.uninstall()
}

// fail reports a rule set the agent did not program; the previous one stays.
func (r *Reconciler) fail(ctx context.Context, rs *v1alpha1.NodeRuleSet, reason string, err error) metav1.Condition {
	programFailures.WithLabelValues(reason).Inc()
	log.FromContext(ctx).Error(err, "Not programming the rule set; the previous one stays in force", "generation", rs.Generation, "reason", reason)
	return metav1.Condition{Type: v1alpha1.ConditionProgrammed, Status: metav1.ConditionFalse, Reason: reason,
		Message: err.Error() + "; the previous rule set stays in force", ObservedGeneration: rs.Generation}
}

// program renders and applies the rule set; the condition says how it went.
// inputs identifies the rule set and group generations programmed.
func (r *Reconciler) program(ctx context.Context, rs *v1alpha1.NodeRuleSet, groups map[string]v1alpha1.AddressGroupSpec, inputs string, left *v1alpha1.LeftOut) metav1.Condition {
	logger := log.FromContext(ctx)
	start := r.now()
	if r.renderer == nil {
		r.renderer = render.NewRenderer(r.Render)
	}
	vw, err := r.effectiveSpec(rs)
	if err != nil {
		return r.fail(ctx, rs, v1alpha1.ReasonProgramFailed, fmt.Errorf("recording the pods that predate the CNI plugin: %w", err))
	}
	r.renderer.SetPodInterfaces(vw.podIfs)
	table, err := r.renderer.Render(vw.spec, groups)
	if err != nil {
		return r.fail(ctx, rs, v1alpha1.ReasonRenderFailed, fmt.Errorf("rendering generation %d: %w", rs.Generation, err))
	}
	stats, err := r.Programmer.Apply(table)
	if err != nil {
		r.mu.Lock()
		r.inputs = "" // the kernel may hold anything now: program again
		r.mu.Unlock()
		return r.fail(ctx, rs, v1alpha1.ReasonProgramFailed, fmt.Errorf("programming generation %d: %w", rs.Generation, err))
	}
	programDuration.Observe(r.now().Sub(start).Seconds())
	programmedGeneration.Set(float64(rs.Generation))
	chains, rules, elements := stats.Chains, stats.Rules, stats.SetElements
	r.mu.Lock()
	r.programmed = rs.Generation
	r.inputs = inputs
	r.lastApply = r.now()
	r.lastTable = tableCounts{chains, rules, elements}
	r.leftOut = left
	r.mu.Unlock()
	if r.Attachments != nil {
		r.Attachments.programmedView(vw)
		r.Attachments.flush(ctx, vw.flush)
	}
	if r.Revoker != nil && (stats.Changes != (model.Changes{}) || r.revokePending) {
		// The table changed: connections it would not let start now are
		// revoked, rather than kept by conntrack. An unchanged table (an
		// agent that restarts over its own) revokes nothing.
		done, err := r.Revoker.Revoke(table)
		revokedFlows.WithLabelValues("revoked").Add(float64(done.Revoked))
		revokedFlows.WithLabelValues("restored").Add(float64(done.Restored))
		r.revokePending = err != nil
		switch {
		case err != nil:
			revokeFailures.Inc()
			logger.Error(err, "Revoking established connections the rule set now denies", "revoked", done.Revoked, "restored", done.Restored)
		case done != (Revocation{}):
			logger.Info("Revoked established connections the rule set now denies", "generation", rs.Generation, "revoked", done.Revoked, "restored", done.Restored)
		}
	}
	if r.Resolver != nil {
		r.Resolver.SetRuleSet(&rs.Spec)
	}
	logger.Info("Programmed rule set", "generation", rs.Generation, "pods", len(rs.Spec.Pods), "rules", len(rs.Spec.Rules),
		"chains", chains, "setElements", elements, "full", stats.Full, "transactions", stats.Transactions, "duration", r.now().Sub(start))
	return r.programmedCondition(rs)
}

// programmedCondition is the Programmed condition of a table that holds
// the rule set's generation, all of it or what the last program left out.
func (r *Reconciler) programmedCondition(rs *v1alpha1.NodeRuleSet) metav1.Condition {
	c := metav1.Condition{Type: v1alpha1.ConditionProgrammed, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonProgrammed,
		Message: fmt.Sprintf("Table holds generation %d", rs.Generation), ObservedGeneration: rs.Generation}
	r.mu.Lock()
	left := r.leftOut
	r.mu.Unlock()
	if left != nil {
		c.Reason = left.Reason
		c.Message = fmt.Sprintf("Table holds generation %d without some rules: %s", rs.Generation, left.Describe())
	}
	return c
}

// withoutMissing is the rule set without the rules that reference missing
// groups, and what was left out.
func withoutMissing(rs *v1alpha1.NodeRuleSet, missing []string) (*v1alpha1.NodeRuleSet, *v1alpha1.LeftOut) {
	gone := map[string]bool{}
	for _, g := range missing {
		gone[g] = true
	}
	policies := map[string]bool{}
	needs := func(r v1alpha1.Rule) bool {
		return slices.ContainsFunc(r.Peers, func(p v1alpha1.Peer) bool { return gone[p.AddressGroup] })
	}
	for _, r := range rs.Spec.Rules {
		if needs(r) {
			for _, p := range r.Policies {
				policies[p] = true
			}
		}
	}
	out := rs.DeepCopy()
	out.Spec = rs.Spec.WithoutRules(needs)
	return out, &v1alpha1.LeftOut{Reason: v1alpha1.ReasonAddressGroupMissing,
		AddressGroups: slices.Sorted(slices.Values(missing)), Policies: slices.Sorted(maps.Keys(policies))}
}

// effectiveSpec is the rule set as this node programs it. Without the CNI
// plugin the pod ranges are dropped: traffic of pod-range addresses that
// are not ready is dropped only on a node whose plugin reports its pods'
// addresses, and without it the rule set's pod addresses are used as they
// are. With the plugin, pods take the addresses of their attachments, and
// the pod ranges fall back to the agent's own.
func (r *Reconciler) effectiveSpec(rs *v1alpha1.NodeRuleSet) (view, error) {
	spec := rs.Spec
	if r.Attachments == nil {
		spec.PodCIDRs = nil
		return view{spec: spec}, nil
	}
	spec.PodCIDRs = r.podCIDRs(rs)
	return r.Attachments.specFor(spec)
}

// groups reads every AddressGroup the rule set references, and returns with
// them a key of the inputs (rule set and group generations): when it equals
// the key last programmed, the kernel already holds this rule set.
func (r *Reconciler) groups(ctx context.Context, rs *v1alpha1.NodeRuleSet) (map[string]v1alpha1.AddressGroupSpec, string, []string, error) {
	out := make(map[string]v1alpha1.AddressGroupSpec, len(rs.Spec.AddressGroups))
	inputs := []string{string(rs.UID), strconv.FormatInt(rs.Generation, 10)}
	if r.fetched == nil {
		r.fetched = map[string]*v1alpha1.AddressGroup{}
	}
	var missing []string
	for _, name := range rs.Spec.AddressGroups {
		ag := &v1alpha1.AddressGroup{}
		// Groups are only read (the Renderer copies what it keeps): no deep
		// copy of every member list on every event.
		err := r.Client.Get(ctx, client.ObjectKey{Name: name}, ag, client.UnsafeDisableDeepCopy)
		stripped := err == nil && ag.Annotations[StrippedAnnotation] != ""
		if stripped {
			// Cached before this node referenced it: use the copy read from
			// the API for this version, or read one.
			if f := r.fetched[name]; f != nil && f.ResourceVersion == ag.ResourceVersion {
				ag = f
				stripped = false
			}
		}
		if (apierrors.IsNotFound(err) || stripped) && r.APIReader != nil {
			ag = &v1alpha1.AddressGroup{}
			if err = r.APIReader.Get(ctx, client.ObjectKey{Name: name}, ag); err == nil {
				r.fetched[name] = ag
			}
		}
		if err != nil {
			if apierrors.IsNotFound(err) {
				missing = append(missing, name)
				continue
			}
			return nil, "", nil, fmt.Errorf("reading AddressGroup %s: %w", name, err)
		}
		out[name] = ag.Spec
		inputs = append(inputs, name, string(ag.UID), strconv.FormatInt(ag.Generation, 10))
	}
	for name := range r.fetched {
		if !slices.Contains(rs.Spec.AddressGroups, name) {
			delete(r.fetched, name)
		}
	}
	if len(missing) > 0 {
		inputs = append(inputs, "missing", strings.Join(missing, ","))
	}
	return out, strings.Join(inputs, "/"), missing, nil
}

// writeStatus patches the node's NodeRuleSet status when it changed; the
// first condition is Programmed.
func (r *Reconciler) writeStatus(ctx context.Context, rs *v1alpha1.NodeRuleSet, conds ...metav1.Condition) error {
	cond := conds[0]
	for _, p := range r.Parts {
		c := p.Condition()
		c.ObservedGeneration = rs.Generation
		conds = append(conds, c)
	}
	want := rs.Status.DeepCopy()
	r.mu.Lock()
	programmed, lastApply, counts, leftOut := r.programmed, r.lastApply, r.lastTable, r.leftOut.DeepCopy()
	r.mu.Unlock()
	if cond.Status == metav1.ConditionTrue {
		want.LeftOut = leftOut
		want.ObservedGeneration = programmed
		want.Pods = int32(len(rs.Spec.Pods))
		want.Rules = int32(len(rs.Spec.Rules))
		want.Chains = int32(counts.chains)
		want.SetElements = int32(counts.elements)
		if !lastApply.IsZero() {
			t := metav1.NewTime(lastApply.Truncate(time.Second))
			want.LastProgrammedTime = &t
		}
	}
	if r.Counters != nil {
		tot := r.Counters.Totals()
		want.Drops = int64(tot.Drops)
		want.AuditEvents = int64(tot.AuditEvents)
	}
	for _, c := range conds {
		c.Message = message.Bound(c.Message)
		meta.SetStatusCondition(&want.Conditions, c)
	}
	if equality.Semantic.DeepEqual(rs.Status, *want) {
		return nil
	}
	patch := client.MergeFrom(rs.DeepCopy())
	rs.Status = *want
	if err := r.Client.Status().Patch(ctx, rs, patch); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("writing NodeRuleSet %s status: %w", rs.Name, err)
	}
	return nil
}

// wakeChannel is the channel Wake sends on.
func (r *Reconciler) wakeChannel() chan event.GenericEvent {
	r.once.Do(func() { r.wake = make(chan event.GenericEvent, 1) })
	return r.wake
}

// Wake asks for a pass (a part's condition changed); safe from any
// goroutine, and cheap when a pass is pending already.
func (r *Reconciler) Wake() {
	select {
	case r.wakeChannel() <- event.GenericEvent{}:
	default:
	}
}

func (r *Reconciler) resync() time.Duration {
	if r.ResyncPeriod > 0 {
		return r.ResyncPeriod
	}
	return time.Minute
}

func (r *Reconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// SetupWithManager watches the node's NodeRuleSet (spec changes) and every
// AddressGroup its current spec references.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.NodeName == "" {
		return errors.New("agent needs a node name")
	}
	self := reconcile.Request{NamespacedName: types.NamespacedName{Name: r.NodeName}}
	referenced := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		rs := &v1alpha1.NodeRuleSet{}
		if err := r.Client.Get(ctx, client.ObjectKey{Name: r.NodeName}, rs); err != nil {
			return nil
		}
		if slices.Contains(rs.Spec.AddressGroups, o.GetName()) {
			return []reconcile.Request{self}
		}
		return nil
	})
	toSelf := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request { return []reconcile.Request{self} })
	b := ctrl.NewControllerManagedBy(mgr)
	if r.Attachments != nil {
		r.Attachments.init()
		b = b.WatchesRawSource(source.Channel(r.Attachments.trigger, toSelf))
	}
	// Wake: the optional parts' conditions changed, or the tamper watch
	// saw another process change the table.
	b = b.WatchesRawSource(source.Channel(r.wakeChannel(), toSelf))
	return b.
		Named("agent").
		WithOptions(controller.Options{MaxConcurrentReconciles: 1, SkipNameValidation: ptr.To(true)}).
		For(&v1alpha1.NodeRuleSet{}, builder.WithPredicates(
			predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetName() == r.NodeName }),
			predicate.Or[client.Object](predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Watches(&v1alpha1.AddressGroup{}, referenced, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Complete(r)
}
