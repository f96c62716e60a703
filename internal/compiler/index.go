package compiler

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"weak"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftguard/nftguard/api/v1alpha1"
)

// Directions are indexed 0 (ingress) and 1 (egress) in per-direction arrays.
const (
	ingress = 0
	egress  = 1
)

var directions = [2]v1alpha1.Direction{v1alpha1.DirectionIngress, v1alpha1.DirectionEgress}

// nsName is the namespace and name of a pod or NetworkPolicy.
type nsName struct{ ns, name string }

func compareNsNames(a, b nsName) int {
	if c := cmp.Compare(a.ns, b.ns); c != 0 {
		return c
	}
	return cmp.Compare(a.name, b.name)
}

// podInfo is what the compiler keeps of an eligible pod.
type podInfo struct {
	key    nsName
	uid    string
	node   string
	labels labels.Set
	ips    []netip.Addr // normalised, unique, in the pod's order
	ipStrs []string
	ports  []containerPort // named container ports, in resolution order
	// Room for the addresses of most pods, saving two allocations.
	addrBuf [2]netip.Addr
	strBuf  [2]string
}

// containerPort is a named container port.
type containerPort struct {
	name  string
	proto v1alpha1.Protocol
	port  int32
}

// newPodInfo returns nil for a pod that is neither a target nor a peer: not
// scheduled, hostNetwork or terminated. A scheduled pod without a valid IP
// yet is a target (its node lists it by UID, so that its agent can program
// it the moment its sandbox has addresses) and a peer of no rule. The
// podInfo shares the pod's labels unless copyLabels is set.
func newPodInfo(p *corev1.Pod, copyLabels bool) *podInfo {
	if p == nil || p.Spec.NodeName == "" || p.Spec.HostNetwork {
		return nil
	}
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil
	}
	raw := make([]string, 0, 2)
	for _, ip := range p.Status.PodIPs {
		raw = append(raw, ip.IP)
	}
	if len(raw) == 0 && p.Status.PodIP != "" {
		raw = append(raw, p.Status.PodIP)
	}
	info := &podInfo{
		key:    nsName{p.Namespace, p.Name},
		uid:    string(p.UID),
		node:   p.Spec.NodeName,
		labels: labels.Set(p.Labels),
	}
	info.ips, info.ipStrs = info.addrBuf[:0], info.strBuf[:0]
	for _, s := range raw {
		a, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		a = a.WithZone("")
		if slices.Contains(info.ips, a) {
			continue
		}
		info.ips = append(info.ips, a)
		// Strings are immutable: keep the pod's when it is the canonical
		// form already.
		var buf [64]byte
		if t := a.AppendTo(buf[:0]); string(t) != s {
			s = string(t)
		}
		info.ipStrs = append(info.ipStrs, s)
	}
	if copyLabels {
		info.labels = maps.Clone(info.labels)
	}
	n := 0
	for _, list := range [][]corev1.Container{p.Spec.Containers, p.Spec.InitContainers} {
		for i := range list {
			n += len(list[i].Ports)
		}
	}
	if n > 0 {
		info.ports = make([]containerPort, 0, n)
	}
	for _, list := range [][]corev1.Container{p.Spec.Containers, p.Spec.InitContainers} {
		for i := range list {
			for _, cp := range list[i].Ports {
				if cp.Name == "" || cp.ContainerPort <= 0 || cp.ContainerPort > 65535 {
					continue
				}
				proto := v1alpha1.Protocol(cp.Protocol)
				if proto == "" {
					proto = v1alpha1.ProtocolTCP
				}
				info.ports = append(info.ports, containerPort{cp.Name, proto, cp.ContainerPort})
			}
		}
	}
	return info
}

// namedPort returns the number a container port name and protocol resolve to
// on the pod: the first declaring container, regular containers before init
// (and sidecar) containers.
func (p *podInfo) namedPort(name string, proto v1alpha1.Protocol) (int32, bool) {
	for _, cp := range p.ports {
		if cp.name == name && cp.proto == proto {
			return cp.port, true
		}
	}
	return 0, false
}

// same reports whether two versions of a pod compile the same.
func (p *podInfo) same(q *podInfo) bool {
	return p.key == q.key && p.uid == q.uid && p.node == q.node && maps.Equal(p.labels, q.labels) &&
		slices.Equal(p.ipStrs, q.ipStrs) && slices.Equal(p.ports, q.ports)
}

// ruleSpec is one ingress or egress rule of a NetworkPolicy or DefaultDeny,
// in a form common to both.
type ruleSpec struct {
	ports []portSpec
	peers []peerSpec
}

// portSpec is a NetworkPolicyPort.
type portSpec struct {
	protocol v1alpha1.Protocol // "": TCP
	port     *intstr.IntOrString
	endPort  *int32
}

// peerSpec is a NetworkPolicyPeer.
type peerSpec struct {
	podSel, nsSel *metav1.LabelSelector
	block         bool
	cidr          string
	except        []string
}

// policy is a NetworkPolicy or a DefaultDeny.
type policy struct {
	key    string // "NetworkPolicy/<ns>/<name>" or "DefaultDeny/<name>"
	ns     string // a NetworkPolicy's namespace
	dd     bool
	audit  bool            // an Audit DefaultDeny
	nsSel  labels.Selector // DefaultDeny only
	podSel labels.Selector // nil: every pod
	types  [2]bool
	rules  [2][]ruleSpec // only for the directions in types
	// The compiled rules: a NetworkPolicy's, and a DefaultDeny's per
	// namespace.
	tmpl   *policyTemplate
	nsTmpl map[string]*policyTemplate
}

func (p *policy) selects(ix *index, pod *podInfo) bool {
	if p.dd {
		if !p.nsSel.Matches(ix.nsLabels(pod.key.ns)) {
			return false
		}
	} else if pod.key.ns != p.ns {
		return false
	}
	return p.podSel == nil || p.podSel.Matches(pod.labels)
}

// template returns the policy's rules compiled for pods of namespace ns.
func (p *policy) template(ix *index, ns string) *policyTemplate {
	if !p.dd {
		if p.tmpl == nil {
			p.tmpl = ix.compileTemplate(p, p.ns)
		}
		return p.tmpl
	}
	if t, ok := p.nsTmpl[ns]; ok {
		return t
	}
	t := ix.compileTemplate(p, ns)
	p.nsTmpl[ns] = t
	return t
}

func (ix *index) newNetworkPolicy(np *networkingv1.NetworkPolicy) *policy {
	p := &policy{
		key:    v1alpha1.NetworkPolicyKey(np.Namespace, np.Name),
		ns:     np.Namespace,
		podSel: ix.selector(&np.Spec.PodSelector),
	}
	if len(np.Spec.PolicyTypes) == 0 {
		p.types[ingress] = true
		p.types[egress] = len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			p.types[ingress] = true
		case networkingv1.PolicyTypeEgress:
			p.types[egress] = true
		}
	}
	if p.types[ingress] {
		for _, r := range np.Spec.Ingress {
			p.rules[ingress] = append(p.rules[ingress], npRule(r.Ports, r.From))
		}
	}
	if p.types[egress] {
		for _, r := range np.Spec.Egress {
			p.rules[egress] = append(p.rules[egress], npRule(r.Ports, r.To))
		}
	}
	return p
}

func (ix *index) newDefaultDeny(dd *v1alpha1.DefaultDeny) *policy {
	p := &policy{
		key:    v1alpha1.DefaultDenyKey(dd.Name),
		dd:     true,
		audit:  dd.Spec.Mode == v1alpha1.ModeAudit,
		nsSel:  ix.selector(dd.Spec.NamespaceSelector.ToMeta()),
		nsTmpl: map[string]*policyTemplate{},
	}
	if dd.Spec.PodSelector != nil {
		// An invalid podSelector (stored before admission checked label
		// syntax) narrows nothing: every pod of the selected namespaces is
		// isolated, closed rather than open. An invalid namespaceSelector
		// cannot be scoped to a tenant and selects nothing.
		if sel, ok := ix.selectorOK(dd.Spec.PodSelector.ToMeta()); ok {
			p.podSel = sel
		}
	}
	if len(dd.Spec.PolicyTypes) == 0 {
		p.types = [2]bool{true, true}
	}
	for _, t := range dd.Spec.PolicyTypes {
		switch t {
		case v1alpha1.PolicyTypeIngress:
			p.types[ingress] = true
		case v1alpha1.PolicyTypeEgress:
			p.types[egress] = true
		}
	}
	if p.types[ingress] {
		for _, r := range dd.Spec.AllowedIngress {
			p.rules[ingress] = append(p.rules[ingress], ddRule(r.Ports, r.From))
		}
	}
	if p.types[egress] {
		for _, r := range dd.Spec.AllowedEgress {
			p.rules[egress] = append(p.rules[egress], ddRule(r.Ports, r.To))
		}
	}
	return p
}

func npRule(ports []networkingv1.NetworkPolicyPort, peers []networkingv1.NetworkPolicyPeer) ruleSpec {
	var rs ruleSpec
	for _, p := range ports {
		ps := portSpec{port: p.Port, endPort: p.EndPort}
		if p.Protocol != nil {
			ps.protocol = v1alpha1.Protocol(*p.Protocol)
		}
		rs.ports = append(rs.ports, ps)
	}
	for _, p := range peers {
		ps := peerSpec{podSel: p.PodSelector, nsSel: p.NamespaceSelector}
		if p.IPBlock != nil {
			ps.block, ps.cidr, ps.except = true, p.IPBlock.CIDR, p.IPBlock.Except
		}
		rs.peers = append(rs.peers, ps)
	}
	return rs
}

func ddRule(ports []v1alpha1.NetworkPolicyPort, peers []v1alpha1.NetworkPolicyPeer) ruleSpec {
	var rs ruleSpec
	for _, p := range ports {
		ps := portSpec{port: p.Port, endPort: p.EndPort}
		if p.Protocol != nil {
			ps.protocol = *p.Protocol
		}
		rs.ports = append(rs.ports, ps)
	}
	for _, p := range peers {
		ps := peerSpec{podSel: p.PodSelector.ToMeta(), nsSel: p.NamespaceSelector.ToMeta()}
		if p.IPBlock != nil {
			ps.block, ps.cidr, ps.except = true, p.IPBlock.CIDR, p.IPBlock.Except
		}
		rs.peers = append(rs.peers, ps)
	}
	return rs
}

// index holds the eligible objects of a snapshot and what is derived from them.
type index struct {
	nodes      map[string][]string   // node -> its pod CIDRs, canonical
	exempt     map[string]bool       // namespaces whose pods no policy selects
	namespaces map[string]labels.Set // labels of the known namespaces, name label included
	pods       map[nsName]*podInfo
	podsByNs   map[string]map[nsName]*podInfo
	podsByNode map[string]map[nsName]*podInfo
	podsByIP   map[netip.Addr][]*podInfo // nil unless an Engine asks for it
	nps        map[nsName]*policy
	npsByNs    map[string]map[string]*policy // namespace -> name -> policy
	dds        map[string]*policy
	groups     map[[8]byte]*groupDef // every group definition a template uses, by name
	selectors  map[string]cachedSelector
	// nsMatches caches, per namespace selector, the namespaces with pods it
	// matches; any change of namespace labels or of the set of namespaces
	// with pods clears it.
	nsMatches map[string][]string
	nsList    []namespaceLabels // the namespaces with pods; nil when not computed
	// The policies by key, cached for selecting: a namespace's
	// NetworkPolicies (dropped when they change) and the DefaultDenies (nil
	// when not computed).
	npsSorted map[string][]*policy
	ddsSorted []*policy
	buf       []byte          // scratch space for keys
	ports     []v1alpha1.Port // scratch space for a pod's resolved ports
	entries   []groupEntry    // scratch space for a group's entries
	hashes    []uint64        // and for their hashes
	nb        *nodeBuilder    // scratch space for compileNode
	// maxInlineBlocks is Options.MaxInlineBlocks, or its default.
	maxInlineBlocks int
	// blockGroups holds the block groups by id, weakly (see blockGroup);
	// liveBlockGroups is how many were live when it was last swept.
	blockGroups     map[[8]byte]weak.Pointer[groupDef]
	liveBlockGroups int
}

func newIndex(o Options) *index {
	ix := &index{
		nodes:      map[string][]string{},
		namespaces: map[string]labels.Set{},
		pods:       map[nsName]*podInfo{},
		podsByNs:   map[string]map[nsName]*podInfo{},
		podsByNode: map[string]map[nsName]*podInfo{},
		nps:        map[nsName]*policy{},
		npsByNs:    map[string]map[string]*policy{},
		dds:        map[string]*policy{},
		groups:     map[[8]byte]*groupDef{},
		selectors:  map[string]cachedSelector{},
		nsMatches:  map[string][]string{},
		npsSorted:  map[string][]*policy{},
	}
	ix.maxInlineBlocks = o.MaxInlineBlocks
	if ix.maxInlineBlocks <= 0 {
		ix.maxInlineBlocks = DefaultMaxInlineBlocks
	}
	for _, ns := range o.ExemptNamespaces {
		if ix.exempt == nil {
			ix.exempt = map[string]bool{}
		}
		ix.exempt[ns] = true
	}
	return ix
}

// load fills an empty index from a snapshot. Objects sharing a name are
// resolved the same way whatever the input order: the one sorting last by
// UID and resourceVersion wins.
func (ix *index) load(s *Snapshot) {
	ix.pods = make(map[nsName]*podInfo, len(s.Pods))
	for _, n := range s.Nodes {
		if n != nil && n.Name != "" {
			ix.nodes[n.Name] = podCIDRs(n)
		}
	}
	for _, ns := range sortedObjects(s.Namespaces) {
		ix.setNamespace(ns)
	}
	for _, p := range sortedObjects(s.Pods) {
		ix.setPod(nsName{p.Namespace, p.Name}, newPodInfo(p, false))
	}
	for _, np := range sortedObjects(s.NetworkPolicies) {
		ix.setNetworkPolicy(nsName{np.Namespace, np.Name}, ix.newNetworkPolicy(np))
	}
	for _, dd := range sortedObjects(s.DefaultDenies) {
		ix.setDefaultDeny(dd.Name, ix.newDefaultDeny(dd))
	}
}

type object interface {
	comparable
	GetNamespace() string
	GetName() string
	GetUID() types.UID
	GetResourceVersion() string
}

// sortedObjects returns the non-nil objects ordered by namespace, name, UID
// and resourceVersion.
func sortedObjects[T object](in []T) []T {
	var zero T
	out := make([]T, 0, len(in))
	for _, o := range in {
		if o != zero {
			out = append(out, o)
		}
	}
	slices.SortStableFunc(out, func(a, b T) int {
		return cmp.Or(
			cmp.Compare(a.GetNamespace(), b.GetNamespace()),
			cmp.Compare(a.GetName(), b.GetName()),
			cmp.Compare(a.GetUID(), b.GetUID()),
			cmp.Compare(a.GetResourceVersion(), b.GetResourceVersion()),
		)
	})
	return out
}

func (ix *index) setNamespace(ns *corev1.Namespace) {
	l := make(labels.Set, len(ns.Labels)+1)
	for k, v := range ns.Labels {
		l[k] = v
	}
	// The API server sets this label on every namespace; a snapshot built by
	// hand may lack it.
	l[corev1.LabelMetadataName] = ns.Name
	ix.namespaces[ns.Name] = l
	ix.namespacesChanged()
}

func (ix *index) deleteNamespace(name string) {
	delete(ix.namespaces, name)
	ix.namespacesChanged()
}

// nsLabels returns a namespace's labels; a namespace missing from the
// snapshot has only its name label.
func (ix *index) nsLabels(ns string) labels.Set {
	if l, ok := ix.namespaces[ns]; ok {
		return l
	}
	return labels.Set{corev1.LabelMetadataName: ns}
}

// setPod stores, replaces or (info nil) removes a pod.
func (ix *index) setPod(key nsName, info *podInfo) {
	if old := ix.pods[key]; old != nil {
		delete(ix.pods, key)
		delete(ix.podsByNs[key.ns], key)
		if len(ix.podsByNs[key.ns]) == 0 {
			delete(ix.podsByNs, key.ns)
			delete(ix.npsSorted, key.ns)
			ix.namespacesChanged()
		}
		delete(ix.podsByNode[old.node], key)
		if len(ix.podsByNode[old.node]) == 0 {
			delete(ix.podsByNode, old.node)
		}
		if ix.podsByIP != nil {
			for _, a := range old.ips {
				pods := slices.DeleteFunc(ix.podsByIP[a], func(p *podInfo) bool { return p == old })
				if len(pods) == 0 {
					delete(ix.podsByIP, a)
				} else {
					ix.podsByIP[a] = pods
				}
			}
		}
	}
	if info == nil {
		return
	}
	ix.pods[key] = info
	if ix.podsByNs[key.ns] == nil {
		ix.podsByNs[key.ns] = map[nsName]*podInfo{}
		ix.namespacesChanged()
	}
	ix.podsByNs[key.ns][key] = info
	if ix.podsByNode[info.node] == nil {
		ix.podsByNode[info.node] = map[nsName]*podInfo{}
	}
	ix.podsByNode[info.node][key] = info
	if ix.podsByIP != nil {
		for _, a := range info.ips {
			ix.podsByIP[a] = append(ix.podsByIP[a], info)
		}
	}
}

// setNetworkPolicy stores, replaces or (p nil) removes a NetworkPolicy.
func (ix *index) setNetworkPolicy(key nsName, p *policy) {
	delete(ix.npsSorted, key.ns)
	if ix.nps[key] != nil {
		delete(ix.nps, key)
		delete(ix.npsByNs[key.ns], key.name)
		if len(ix.npsByNs[key.ns]) == 0 {
			delete(ix.npsByNs, key.ns)
		}
	}
	if p == nil {
		return
	}
	ix.nps[key] = p
	if ix.npsByNs[key.ns] == nil {
		ix.npsByNs[key.ns] = map[string]*policy{}
	}
	ix.npsByNs[key.ns][key.name] = p
}

// setDefaultDeny stores, replaces or (p nil) removes a DefaultDeny.
func (ix *index) setDefaultDeny(name string, p *policy) {
	ix.ddsSorted = nil
	if p == nil {
		delete(ix.dds, name)
		return
	}
	ix.dds[name] = p
}

// namespaceLabels is a namespace and its labels.
type namespaceLabels struct {
	name   string
	labels labels.Set
}

// namespacesChanged drops what is cached about the namespaces: their
// labels or the set of namespaces with pods changed.
func (ix *index) namespacesChanged() {
	clear(ix.nsMatches)
	ix.nsList = nil
}

// namespacesWithPods returns the namespaces with pods and their labels.
func (ix *index) namespacesWithPods() []namespaceLabels {
	if ix.nsList == nil {
		ix.nsList = make([]namespaceLabels, 0, len(ix.podsByNs))
		for ns := range ix.podsByNs {
			ix.nsList = append(ix.nsList, namespaceLabels{ns, ix.nsLabels(ns)})
		}
	}
	return ix.nsList
}

// selecting appends to out the policies that select a pod, sorted by key:
// none for a pod of an exempt namespace.
func (ix *index) selecting(out []*policy, pod *podInfo) []*policy {
	if ix.exempt[pod.key.ns] {
		return out
	}
	nps, ok := ix.npsSorted[pod.key.ns]
	if !ok {
		nps = sortedPolicies(ix.npsByNs[pod.key.ns])
		ix.npsSorted[pod.key.ns] = nps
	}
	if ix.ddsSorted == nil {
		ix.ddsSorted = sortedPolicies(ix.dds)
	}
	dds := ix.ddsSorted
	for len(nps) > 0 || len(dds) > 0 {
		var p *policy
		if len(dds) == 0 || len(nps) > 0 && nps[0].key < dds[0].key {
			p, nps = nps[0], nps[1:]
		} else {
			p, dds = dds[0], dds[1:]
		}
		if p.selects(ix, pod) {
			out = append(out, p)
		}
	}
	return out
}

// sortedPolicies returns the policies of m sorted by key (not nil).
func sortedPolicies(m map[string]*policy) []*policy {
	out := make([]*policy, 0, len(m))
	for _, p := range m {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b *policy) int { return cmp.Compare(a.key, b.key) })
	return out
}
