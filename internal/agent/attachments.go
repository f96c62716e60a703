package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/cni"
	"github.com/nftguard/nftguard/internal/cni/install"
	"github.com/nftguard/nftguard/internal/message"
)

// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// adoptedPrefix starts the container ID of the attachments the agent makes
// up for pods that were running before the plugin was chained.
const adoptedPrefix = "nftguard-adopted-"

var (
	podsNotReady = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "nftguard_agent_pods_not_ready",
		Help: "Pods with a CNI attachment on this node whose addresses are not ready (their traffic is dropped).",
	})
	podsHeldTooLong = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nftguard_agent_pods_not_ready_timeouts_total",
		Help: "Pods that stayed not ready longer than the not-ready bound.",
	})
	podsReleased = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nftguard_agent_pods_released_total",
		Help: "Pods made ready without their rules because they stayed not ready past --not-ready-release (fail open, by configuration).",
	})
	addReadyDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "nftguard_agent_cni_add_duration_seconds",
		Help:    "Time from a CNI ADD reaching the agent to the pod's addresses being ready (pods that became ready within the ADD).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	})
)

func init() {
	metrics.Registry.MustRegister(podsNotReady, podsHeldTooLong, podsReleased, addReadyDuration)
}

// ConntrackFlusher deletes the conntrack entries of addresses, in both
// directions: a reused address must not inherit a previous owner's
// established flows.
type ConntrackFlusher interface {
	Flush(addrs []netip.Addr) error
}

// Attachments is the agent's side of the CNI plugin (cni.Handler). It
// records each pod's attachment, has the reconciler program the pod at
// once, from the rule set the node already holds, and tells the reconciler
// which addresses of the node's pod ranges are ready: those of attachments
// whose pod the rule set lists (by UID), and those of pods in nftguard's own
// namespace. Everything else in the pod ranges is dropped.
type Attachments struct {
	Registry *cni.Registry
	// Namespace is nftguard's own namespace: its pods are ready from their
	// ADD, whether the rule set lists them or not, so that a controller that
	// is not running can always start again.
	Namespace string
	// AddWait bounds how long an ADD waits for its pod to be programmed
	// before it returns (the pod then stays not ready until it is).
	AddWait time.Duration
	// NotReadyWarning is how long a pod may stay not ready before the agent
	// reports it (an Event on the pod, a metric); NotReadyRelease, when not
	// zero, is how long before the agent makes it ready without its rules
	// (fail open, by configuration; zero keeps it closed).
	NotReadyWarning time.Duration
	NotReadyRelease time.Duration
	// Conntrack deletes the entries of addresses whose owner changed.
	Conntrack ConntrackFlusher
	// Installer, when set, is the agent's own installer of the plugin: it
	// reports whether the runtime's configuration chains the plugin
	// (CNIChained), and removes the plugin on uninstall. Nil: the
	// configuration is managed outside the agent.
	Installer PluginInstaller
	// Events reports pods held too long (nil: no Events).
	Events events.EventRecorder
	Log    logr.Logger
	// Now is the clock (tests).
	Now func() time.Time

	trigger chan event.GenericEvent

	mu sync.Mutex
	// version counts registry changes; programmed is the version the
	// kernel holds, started whether the table was programmed at all.
	version    uint64
	programmed uint64
	started    bool
	// uninstalled is set while the node is uninstalled: the table is gone,
	// so ADDs wait for nothing.
	uninstalled bool
	// ready maps each ready address in the kernel to its pod UID.
	ready map[netip.Addr]string
	// changed is closed (and replaced) whenever the kernel changes.
	changed chan struct{}
	// held tracks attachments whose pod is not ready: since when, and
	// whether it was reported or released.
	held map[string]*heldPod
	// listed is the set of pod UIDs the last pass's rule set lists.
	listed map[string]bool
	// gone holds the UIDs of listed pods whose real attachment the runtime
	// deleted: the rule set's addresses of such a pod are stale, so it is
	// never adopted.
	gone map[string]bool
}

// PluginInstaller puts the plugin in the runtime's configuration and takes
// it out (install.Installer).
type PluginInstaller interface {
	// Check reports whether the runtime's configuration chains the plugin.
	Check() install.Status
	// Uninstall removes the plugin's entry, then its binary, and keeps
	// them out until Resume.
	Uninstall() ([]string, error)
	// Resume chains the plugin again after Uninstall; it reports whether
	// it was uninstalled.
	Resume() bool
}

type heldPod struct {
	since    time.Time
	ref      cni.Attachment
	warned   bool
	released bool
}

var _ cni.Handler = (*Attachments)(nil)
var _ cni.StatusChecker = (*Attachments)(nil)

// init prepares the internal state; the reconciler calls it in setup.
func (a *Attachments) init() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.changed == nil {
		a.changed = make(chan struct{})
		a.ready = map[netip.Addr]string{}
		a.held = map[string]*heldPod{}
		a.gone = map[string]bool{}
		a.trigger = make(chan event.GenericEvent, 1)
	}
}

func (a *Attachments) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// poke asks the reconciler to program the node now, without blocking.
func (a *Attachments) poke() {
	select {
	case a.trigger <- event.GenericEvent{Object: &v1alpha1.NodeRuleSet{}}:
	default: // a pass is already queued
	}
}

// bump records a registry change and asks for a pass; it returns the
// version a pass has to program for the change to be in the kernel.
func (a *Attachments) bump() uint64 {
	a.mu.Lock()
	a.version++
	v := a.version
	a.mu.Unlock()
	a.poke()
	return v
}

// wait blocks until done() holds (checked under the lock after every pass),
// the deadline passes or ctx ends; it reports whether done() held.
func (a *Attachments) wait(ctx context.Context, deadline time.Time, done func() bool) bool {
	timer := time.NewTimer(deadline.Sub(a.now()))
	defer timer.Stop()
	for {
		a.mu.Lock()
		ok, ch := done(), a.changed
		a.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-timer.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// Status reports whether the agent can take ADDs: once it has programmed
// the node's table, or deleted it for uninstall. Before that (a node that
// just booted) a pod would start with no table at all.
func (a *Attachments) Status(context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.started && !a.uninstalled {
		return errors.New("the agent has not programmed this node's table yet")
	}
	return nil
}

// Add records the attachment, waits for a pass that programs it, deletes
// the conntrack entries of its addresses (a previous owner's flows), and
// waits, up to AddWait, for the pod to be ready. A pod the rule set does
// not list yet (the controller is behind or down) is not an error: it
// starts, and its traffic is dropped until it is listed.
func (a *Attachments) Add(ctx context.Context, att cni.Attachment) error {
	logger := logr.FromContextOrDiscard(ctx)
	if err := a.Status(ctx); err != nil {
		return err
	}
	start := a.now()
	if err := a.Registry.Add(att); err != nil {
		return fmt.Errorf("recording the attachment: %w", err)
	}
	// The runtime now knows the pod under a real attachment: what was
	// adopted for it goes, so that its old sandbox's addresses are free.
	var released []netip.Addr
	for _, old := range a.Registry.Snapshot() {
		if isAdopted(old) && old.PodUID == att.PodUID {
			if _, err := a.Registry.Del(old.Key()); err != nil {
				return fmt.Errorf("forgetting the adopted attachment of the pod: %w", err)
			}
			released = append(released, old.IPs...)
		}
	}
	if a.isUninstalled() {
		// Nothing filters this node: there is nothing to wait for.
		return nil
	}
	v := a.bump()
	deadline := start.Add(a.addWait())
	a.wait(ctx, deadline, func() bool { return a.programmed >= v || a.uninstalled })
	if a.Conntrack != nil {
		if err := a.Conntrack.Flush(append(slices.Clone(att.IPs), released...)); err != nil {
			logger.Error(err, "Deleting the conntrack entries of the pod's addresses")
		}
	}
	ips := slices.Clone(att.IPs)
	if a.wait(ctx, deadline, func() bool { return a.isReady(att.PodUID, ips) }) {
		addReadyDuration.Observe(a.now().Sub(start).Seconds())
		logger.V(1).Info("Pod programmed and ready", "duration", a.now().Sub(start))
		return nil
	}
	logger.Info("Pod is not in this node's rule set yet; its traffic is dropped until it is", "waited", a.now().Sub(start))
	return nil
}

func (a *Attachments) addWait() time.Duration {
	if a.AddWait > 0 {
		return a.AddWait
	}
	return 3 * time.Second
}

// isReady reports whether every address is ready for the pod (a.mu held).
func (a *Attachments) isReady(uid string, ips []netip.Addr) bool {
	for _, ip := range ips {
		if a.ready[ip] != uid {
			return false
		}
	}
	return true
}

// Del forgets the attachment, waits for a pass that drops its addresses
// from the ready sets, and deletes their conntrack entries. Deleting an
// unknown attachment succeeds.
func (a *Attachments) Del(ctx context.Context, att cni.Attachment) error {
	old, ok := a.Registry.Get(att.Key())
	removed, err := a.Registry.Del(att.Key())
	if err != nil {
		return fmt.Errorf("forgetting the attachment: %w", err)
	}
	if !removed || !ok {
		return nil
	}
	a.forget(old)
	a.settle(ctx, old.IPs)
	return nil
}

// replayDeleted applies the DELs the plugin recorded while it could not
// reach the agent (cni.RecordDeleted): their attachments are forgotten, as
// a DEL forgets them, so that their pods are not adopted again and their
// addresses are not ready until GC. Before the first pass (programmed
// false) only their conntrack entries need deleting; later, the entries go
// once a pass has dropped the addresses from the ready sets.
func (a *Attachments) replayDeleted(ctx context.Context, programmed bool) {
	gone, err := a.Registry.ReplayDeleted()
	if err != nil {
		a.Log.Error(err, "Replaying the DELs recorded while the agent was not reachable")
	}
	if len(gone) == 0 {
		return
	}
	var addrs []netip.Addr
	for _, att := range gone {
		a.forget(att)
		addrs = append(addrs, att.IPs...)
	}
	a.Log.Info("Replayed the DELs recorded while the agent was not reachable", "attachments", len(gone), "addresses", len(addrs))
	if programmed {
		a.settle(ctx, addrs)
	} else {
		a.flush(ctx, addrs)
	}
}

// settle waits for a pass that programs the registry's current version,
// then deletes the conntrack entries of addrs.
func (a *Attachments) settle(ctx context.Context, addrs []netip.Addr) {
	v := a.bump()
	a.wait(ctx, a.now().Add(a.addWait()), func() bool { return a.programmed >= v || a.uninstalled })
	a.flush(ctx, addrs)
}

// flush deletes the conntrack entries of released addresses.
func (a *Attachments) flush(ctx context.Context, addrs []netip.Addr) {
	if a.Conntrack != nil && len(addrs) > 0 {
		if err := a.Conntrack.Flush(addrs); err != nil {
			logr.FromContextOrDiscard(ctx).Error(err, "Deleting the conntrack entries of released addresses")
		}
	}
}

// Check succeeds if the agent holds the attachment with exactly its addresses.
func (a *Attachments) Check(_ context.Context, att cni.Attachment) error {
	return a.Registry.Check(att)
}

// GC forgets every attachment the runtime does not list, except those the
// agent adopted for pods that predate the plugin (the runtime knows them
// under other keys) while their pod is still listed.
func (a *Attachments) GC(ctx context.Context, valid []cni.AttachmentKey) error {
	a.mu.Lock()
	listed := a.listed
	a.mu.Unlock()
	keep := slices.Clone(valid)
	var addrs []netip.Addr
	validSet := map[cni.AttachmentKey]bool{}
	for _, k := range valid {
		validSet[k] = true
	}
	var forgotten []cni.Attachment
	for _, att := range a.Registry.Snapshot() {
		switch {
		case isAdopted(att) && listed[att.PodUID]:
			keep = append(keep, att.Key())
		case !validSet[att.Key()]:
			addrs = append(addrs, att.IPs...)
			forgotten = append(forgotten, att)
		}
	}
	removed, err := a.Registry.GC(keep)
	if err != nil {
		return fmt.Errorf("collecting stale attachments: %w", err)
	}
	if len(removed) > 0 {
		for _, att := range forgotten {
			a.forget(att)
		}
		logr.FromContextOrDiscard(ctx).Info("Forgot stale attachments", "attachments", len(removed))
		a.settle(ctx, addrs)
	}
	return nil
}

// forget records that the runtime deleted a real attachment of a pod.
func (a *Attachments) forget(att cni.Attachment) {
	if att.PodUID == "" || isAdopted(att) {
		return
	}
	a.mu.Lock()
	a.gone[att.PodUID] = true
	a.mu.Unlock()
}

// uninstall takes the plugin out of the runtime's configuration (entry,
// then binary) before the reconciler deletes the table: once nftguard is
// deleted, no pod's ADD may depend on an agent that is gone. If the
// uninstall is cancelled, the pods started meanwhile are adopted.
func (a *Attachments) uninstall() error {
	if a.Installer != nil {
		changed, err := a.Installer.Uninstall()
		if err != nil {
			return fmt.Errorf("removing the CNI plugin from the runtime's configuration: %w", err)
		}
		if len(changed) > 0 {
			a.Log.Info("Removed the CNI plugin for uninstall", "paths", changed)
		}
	}
	a.mu.Lock()
	a.uninstalled = true
	close(a.changed)
	a.changed = make(chan struct{})
	a.mu.Unlock()
	return nil
}

// resume chains the plugin again after an uninstall was cancelled.
func (a *Attachments) resume() {
	if a.Installer != nil && a.Installer.Resume() {
		a.Log.Info("Uninstall cancelled; chaining the CNI plugin again")
	}
}

// isUninstalled reports whether the node is uninstalled.
func (a *Attachments) isUninstalled() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.uninstalled
}

// currentVersion is the registry's version now.
func (a *Attachments) currentVersion() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.version
}

func isAdopted(att cni.Attachment) bool {
	return strings.HasPrefix(att.ContainerID, adoptedPrefix)
}

// view is what a pass programs: the rule set with each listed pod's
// addresses taken from its attachments, plus the pods of nftguard's own
// namespace and released pods, and the version of the registry it reflects.
type view struct {
	spec    v1alpha1.NodeRuleSetSpec
	version uint64
	// flush are the addresses of adopted attachments dropped in this pass:
	// their conntrack entries are deleted once it is programmed.
	flush []netip.Addr
	// podIfs are the host side of the pods' interfaces (nil without the
	// plugin: unknown).
	podIfs []string
}

// specFor returns the rule set a pass programs when the plugin is in use.
// The addresses of a listed pod are those its attachments own (the
// runtime's word, not kubelet's status, which lags and may be stale);
// pods of nftguard's namespace and released pods are added as pods no
// policy isolates. Pods that started without the plugin are adopted, from
// the rule set's addresses.
func (a *Attachments) specFor(in v1alpha1.NodeRuleSetSpec) (view, error) {
	flush, err := a.adopt(in)
	if err != nil {
		return view{}, err
	}
	a.mu.Lock()
	v := a.version
	a.mu.Unlock()
	atts := a.Registry.Snapshot()
	owned := cni.PodAddresses(atts)
	spec := in
	spec.Pods = make([]v1alpha1.LocalPod, 0, len(in.Pods))
	listed := map[string]bool{}
	for _, p := range in.Pods {
		if p.UID == "" {
			// Listed by a controller that predates UIDs: kubelet's addresses.
			spec.Pods = append(spec.Pods, p)
			continue
		}
		listed[p.UID] = true
		p.IPs = addrStrings(owned[p.UID])
		spec.Pods = append(spec.Pods, p)
	}
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.listed = listed
	seen := map[string]bool{}
	for _, att := range atts {
		if att.PodUID == "" || listed[att.PodUID] || len(att.IPs) == 0 {
			continue
		}
		if seen[att.PodUID] {
			continue
		}
		seen[att.PodUID] = true
		h := a.held[att.PodUID]
		if h == nil {
			h = &heldPod{since: now, ref: att}
			a.held[att.PodUID] = h
		}
		if att.Namespace == a.Namespace && a.Namespace != "" || h.released {
			spec.Pods = append(spec.Pods, v1alpha1.LocalPod{Namespace: att.Namespace, Name: att.Name, UID: att.PodUID,
				IPs: addrStrings(owned[att.PodUID])})
		}
	}
	for uid := range a.held {
		if listed[uid] || !seen[uid] {
			delete(a.held, uid)
		}
	}
	for uid := range a.gone {
		if !listed[uid] {
			delete(a.gone, uid) // the pod is gone from the rule set too
		}
	}
	return view{spec: spec, version: v, flush: flush, podIfs: cni.HostInterfaces(atts)}, nil
}

// adopt records attachments for the pods the rule set lists with addresses
// while the runtime gave the agent none: pods that were running before the
// plugin was chained (installing nftguard cuts no running pod), and pods
// started while it was not (before the agent chained it, or while the pod
// network's installer had taken the entry out). Such a pod is dropped until
// the rule set lists its address, and from then on its policies decide:
// the same as a pod held until it is listed. Addresses an attachment claims
// are never adopted, nor pods whose real attachment the runtime deleted.
// Adopted attachments of pods the rule set no longer lists are dropped;
// adopt returns their addresses.
func (a *Attachments) adopt(spec v1alpha1.NodeRuleSetSpec) ([]netip.Addr, error) {
	atts := a.Registry.Snapshot()
	owned := cni.PodAddresses(atts)
	claimed := map[netip.Addr]bool{}
	for _, ips := range owned {
		for _, ip := range ips {
			claimed[ip] = true
		}
	}
	listed := map[string]bool{}
	for _, p := range spec.Pods {
		listed[p.UID] = true
	}
	var dropped []netip.Addr
	for _, att := range atts {
		if isAdopted(att) && !listed[att.PodUID] {
			if _, err := a.Registry.Del(att.Key()); err != nil {
				return nil, fmt.Errorf("forgetting the adopted attachment of %s/%s: %w", att.Namespace, att.Name, err)
			}
			dropped = append(dropped, att.IPs...)
		}
	}
	a.mu.Lock()
	gone := maps.Clone(a.gone)
	a.mu.Unlock()
	n := 0
	for _, p := range spec.Pods {
		if _, has := owned[p.UID]; has || p.UID == "" || len(p.IPs) == 0 || gone[p.UID] {
			continue
		}
		var ips []netip.Addr
		for _, s := range p.IPs {
			if ip, err := netip.ParseAddr(s); err == nil && !claimed[ip] {
				ips = append(ips, ip)
			}
		}
		if len(ips) == 0 {
			continue
		}
		if err := a.Registry.Add(cni.Attachment{ContainerID: adoptedPrefix + p.UID, IfName: "eth0",
			PodUID: p.UID, Namespace: p.Namespace, Name: p.Name, IPs: ips}); err != nil {
			return nil, fmt.Errorf("adopting pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		n++
	}
	if n > 0 || len(dropped) > 0 {
		a.Log.Info("Adopted the pods that started without the CNI plugin", "adopted", n, "dropped", len(dropped))
	}
	return dropped, nil
}

// programmedView records what a successful pass put in the kernel.
func (a *Attachments) programmedView(vw view) {
	ready := map[netip.Addr]string{}
	for _, p := range vw.spec.Pods {
		for _, s := range p.IPs {
			if ip, err := netip.ParseAddr(s); err == nil {
				ready[ip] = p.UID
			}
		}
	}
	a.mu.Lock()
	a.ready = ready
	a.programmed = max(a.programmed, vw.version)
	a.started = true
	a.uninstalled = false
	close(a.changed)
	a.changed = make(chan struct{})
	notReady := 0
	for _, h := range a.held {
		if !h.released {
			notReady++
		}
	}
	a.mu.Unlock()
	podsNotReady.Set(float64(notReady))
}

// enforceBound reports pods held longer than NotReadyWarning and releases
// those held longer than NotReadyRelease; it returns whether a pass is
// needed (a pod was released) and when to look again.
func (a *Attachments) enforceBound() (bool, time.Duration) {
	now := a.now()
	next := time.Duration(0)
	later := func(d time.Duration) {
		if d > 0 && (next == 0 || d < next) {
			next = d
		}
	}
	var warn, release []cni.Attachment
	a.mu.Lock()
	for _, h := range a.held {
		age := now.Sub(h.since)
		if a.NotReadyWarning > 0 && !h.warned {
			if age >= a.NotReadyWarning {
				h.warned = true
				warn = append(warn, h.ref)
			} else {
				later(a.NotReadyWarning - age)
			}
		}
		if a.NotReadyRelease > 0 && !h.released {
			if age >= a.NotReadyRelease {
				h.released = true
				release = append(release, h.ref)
			} else {
				later(a.NotReadyRelease - age)
			}
		}
	}
	a.mu.Unlock()
	for _, att := range warn {
		podsHeldTooLong.Inc()
		a.Log.Info("Pod not ready past the bound; its traffic is still dropped", "pod", att.Namespace+"/"+att.Name, "uid", att.PodUID,
			"bound", a.NotReadyWarning)
		a.event(att, corev1.EventTypeWarning, v1alpha1.ReasonNotReady, fmt.Sprintf(
			"nftguard drops this pod's traffic: the pod is not in its node's rule set after %s (is the nftguard controller running?)", a.NotReadyWarning))
	}
	for _, att := range release {
		podsReleased.Inc()
		a.Log.Info("Releasing a pod that stayed not ready: its traffic passes without its policies", "pod", att.Namespace+"/"+att.Name,
			"uid", att.PodUID, "bound", a.NotReadyRelease)
		a.event(att, corev1.EventTypeWarning, v1alpha1.ReasonReleased, fmt.Sprintf(
			"nftguard lets this pod's traffic pass without its policies: it was not in its node's rule set after %s (--not-ready-release)", a.NotReadyRelease))
	}
	return len(release) > 0, next
}

func (a *Attachments) event(att cni.Attachment, typ, reason, msg string) {
	if a.Events == nil || att.Name == "" || att.Namespace == "" {
		return
	}
	pod := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Namespace: att.Namespace, Name: att.Name, UID: types.UID(att.PodUID)},
	}
	a.Events.Eventf(pod, nil, typ, reason, "Enforce", "%s", message.Bound(msg))
}

func addrStrings(ips []netip.Addr) []string {
	if len(ips) == 0 {
		return nil
	}
	out := make([]string, len(ips))
	for i, ip := range ips {
		out[i] = ip.String()
	}
	return out
}
