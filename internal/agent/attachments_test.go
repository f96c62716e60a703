package agent_test

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/agent"
	"github.com/nftguard/nftguard/internal/cni"
	"github.com/nftguard/nftguard/internal/dataplane/model"
	"github.com/nftguard/nftguard/internal/dataplane/nftnl"
)

// readySet is what the kernel's ready set of a family holds.
func readySet(g Gomega, ns netns.NsHandle, set string) []string {
	t, err := nftnl.ReadTable(int(ns))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(t).NotTo(BeNil(), "no table")
	for _, s := range t.Sets {
		if s.Name != set {
			continue
		}
		out := []string{}
		for _, e := range s.Elements {
			a, ok := netip.AddrFromSlice(e.Key)
			g.Expect(ok).To(BeTrue())
			out = append(out, a.String())
		}
		return out
	}
	g.Expect(set).To(BeEmpty(), "the table has no set %s", set)
	return nil
}

// podInterfaces is what the kernel's pod interface set holds.
func podInterfaces(g Gomega, ns netns.NsHandle) []string {
	t, err := nftnl.ReadTable(int(ns))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(t).NotTo(BeNil(), "no table")
	for _, s := range t.Sets {
		if s.Name == model.SetPodInterfaces {
			out := []string{}
			for _, e := range s.Elements {
				out = append(out, model.IfnameOf(e.Key))
			}
			return out
		}
	}
	g.Expect(t.Sets).To(BeEmpty(), "the table has no set %s", model.SetPodInterfaces)
	return nil
}

// conntrackEntry adds an established-looking UDP entry between two
// addresses to the namespace's conntrack table.
func conntrackEntry(ns netns.NsHandle, src, dst string) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	Expect(err).NotTo(HaveOccurred())
	defer h.Close()
	flow := &netlink.ConntrackFlow{
		FamilyType: unix.AF_INET,
		Forward:    netlink.IPTuple{SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP(dst).To4(), Protocol: unix.IPPROTO_UDP, SrcPort: 4000, DstPort: 53},
		Reverse:    netlink.IPTuple{SrcIP: net.ParseIP(dst).To4(), DstIP: net.ParseIP(src).To4(), Protocol: unix.IPPROTO_UDP, SrcPort: 53, DstPort: 4000},
		TimeOut:    120,
	}
	Expect(h.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, flow)).To(Succeed())
}

// conntrackHas reports whether an entry of the namespace's table holds addr.
func conntrackHas(g Gomega, ns netns.NsHandle, addr string) bool {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	g.Expect(err).NotTo(HaveOccurred())
	defer h.Close()
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	g.Expect(err).NotTo(HaveOccurred())
	for _, f := range flows {
		for _, ip := range []net.IP{f.Forward.SrcIP, f.Forward.DstIP, f.Reverse.SrcIP, f.Reverse.DstIP} {
			if ip.String() == addr {
				return true
			}
		}
	}
	return false
}

var _ = Describe("Agent with the CNI plugin", Ordered, func() {
	const node = "node-cni"
	var (
		nodeNS   netns.NsHandle
		stateDir string
		plugin   *cni.Client
		stop     func()
		// installs: the agent installs the plugin into confDir and binDir.
		installs bool
	)
	confDir := func() string { return filepath.Join(stateDir, "net.d") }
	binDir := func() string { return filepath.Join(stateDir, "bin") }
	start := func() {
		opts := agent.CNIOptions{
			Socket: filepath.Join(stateDir, "cni.sock"), StateDir: filepath.Join(stateDir, "registry"),
			Namespace: "nftguard-system", AddWait: time.Second, NotReadyWarning: 2 * time.Second,
		}
		if installs {
			opts.PluginSource = filepath.Join(stateDir, "image-nftguard")
			opts.ConfDir, opts.BinDir, opts.InstallInterval = confDir(), binDir(), 100*time.Millisecond
		}
		stop = runAgent(agent.Options{
			NodeName: node, MetricsBindAddress: "0", ResyncPeriod: resyncPeriod, NetNS: int(nodeNS),
			AuditLog: filepath.Join(stateDir, "drops.log"), Log: logf.Log.WithName("agent-cni"),
			Registerer: prometheus.NewRegistry(),
			CNI:        opts,
		})
	}
	add := func(id, uid, ns, name string, ips ...string) {
		// The host end of the pod's veth, named after the attachment.
		att := cni.Attachment{ContainerID: id, IfName: "eth0", PodUID: uid, Namespace: ns, Name: name, HostInterfaces: []string{"v" + id}}
		for _, ip := range ips {
			att.IPs = append(att.IPs, netip.MustParseAddr(ip))
		}
		Eventually(func() error { return plugin.Add(ctx, att) }).Should(Succeed())
	}
	condition := func(g Gomega, typ string) *metav1.Condition { return conditionOf(g, node, typ) }
	list := func(pods ...v1alpha1.LocalPod) {
		Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
			rs := &v1alpha1.NodeRuleSet{}
			if err := k8s.Get(ctx, client.ObjectKey{Name: node}, rs); err != nil {
				return err
			}
			rs.Spec.Pods = pods
			return k8s.Update(ctx, rs)
		})).To(Succeed())
	}
	web := v1alpha1.LocalPod{Namespace: "shop", Name: "web", UID: "uid-web",
		Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Policies: []string{"NetworkPolicy/shop/deny"}}}
	free := v1alpha1.LocalPod{Namespace: "shop", Name: "free", UID: "uid-free"}
	late := v1alpha1.LocalPod{Namespace: "shop", Name: "late", UID: "uid-late"}

	BeforeAll(func() {
		nodeNS = newNetNS()
		DeferCleanup(nodeNS.Close)
		Expect(client.IgnoreAlreadyExists(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}))).To(Succeed())
		stateDir = GinkgoT().TempDir()
		plugin = cni.NewClient(filepath.Join(stateDir, "cni.sock"), 5*time.Second)
		// The rule set lists web and free by UID, before they have
		// addresses (their addresses in the rule set are ignored: the
		// plugin's are used), and the node's pod ranges.
		old := free
		old.IPs = []string{"198.18.10.99"}
		Expect(k8s.Create(ctx, &v1alpha1.NodeRuleSet{
			ObjectMeta: metav1.ObjectMeta{Name: node},
			Spec:       v1alpha1.NodeRuleSetSpec{Pods: []v1alpha1.LocalPod{web, old}, PodCIDRs: []string{"198.18.10.0/24", "fd00:10::/64"}},
		})).To(Succeed())
		start()
		DeferCleanup(func() { stop() })
	})

	It("takes ADDs once it has programmed the table", func() {
		Eventually(func() error { return plugin.Status(ctx) }).Should(Succeed())
		Eventually(func(g Gomega) {
			// Only the adopted pod (below) is ready.
			g.Expect(readySet(g, nodeNS, model.SetReady4)).To(ConsistOf("198.18.10.99"))
			g.Expect(readySet(g, nodeNS, model.SetReady6)).To(BeEmpty())
			c := condition(g, v1alpha1.ConditionFirstPacket)
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
			g.Expect(c.Reason).To(Equal(v1alpha1.ReasonHeldUntilReady))
			g.Expect(c.Message).To(ContainSubstring("198.18.10.0/24"))
		}).Should(Succeed())
	})

	It("adopts the pods that ran before the plugin", func() {
		Expect(readySet(Default, nodeNS, model.SetReady4)).To(ConsistOf("198.18.10.99"))
	})

	It("makes a listed pod ready before its ADD returns", func() {
		add("c-free", "uid-free", "shop", "free", "198.18.10.2", "fd00:10::2")
		// The adopted attachment went with the pod's first real one.
		// No Eventually: the ADD returned, so the pod is programmed.
		Expect(readySet(Default, nodeNS, model.SetReady4)).To(ConsistOf("198.18.10.2"))
		Expect(readySet(Default, nodeNS, model.SetReady6)).To(ConsistOf("fd00:10::2"))
		add("c-web", "uid-web", "shop", "web", "198.18.10.3")
		Expect(readySet(Default, nodeNS, model.SetReady4)).To(ConsistOf("198.18.10.2", "198.18.10.3"))
		Expect(kernelTableIn(Default, nodeNS)).To(ContainSubstring("198.18.10.3"))
		Expect(kernelTableIn(Default, nodeNS)).NotTo(ContainSubstring("198.18.10.99"), "the rule set's stale address must not be used")
		By("naming their host interfaces in the pod interface set")
		Expect(podInterfaces(Default, nodeNS)).To(ConsistOf("vc-free", "vc-web"))
	})

	It("holds a pod the rule set does not list, and programs it once listed", func() {
		add("c-late", "uid-late", "shop", "late", "198.18.10.4")
		Consistently(func(g Gomega) {
			g.Expect(readySet(g, nodeNS, model.SetReady4)).NotTo(ContainElement("198.18.10.4"))
		}, "1500ms", "100ms").Should(Succeed())
		By("recording a NotReady Event on it after the bound")
		Eventually(func(g Gomega) {
			evs := &eventsv1.EventList{}
			g.Expect(k8s.List(ctx, evs, client.InNamespace("shop"))).To(Succeed())
			var found bool
			for _, e := range evs.Items {
				if e.Regarding.Name == "late" && e.Reason == v1alpha1.ReasonNotReady && e.Type == "Warning" {
					found = true
				}
			}
			g.Expect(found).To(BeTrue(), "no NotReady Event on shop/late")
		}).Should(Succeed())
		list(web, free, late)
		Eventually(func(g Gomega) {
			g.Expect(readySet(g, nodeNS, model.SetReady4)).To(ContainElement("198.18.10.4"))
		}).Should(Succeed())
	})

	It("never holds a pod of its own namespace", func() {
		add("c-ctrl", "uid-ctrl", "nftguard-system", "controller-0", "198.18.10.5")
		Expect(readySet(Default, nodeNS, model.SetReady4)).To(ContainElement("198.18.10.5"))
	})

	It("adopts a pod started without the plugin once the rule set lists its address, and drops it once unlisted", func() {
		// As CoreDNS on a node where it started just before the plugin was
		// chained: no ADD reached the agent, and kubelet's status gives
		// the controller its address later.
		early := v1alpha1.LocalPod{Namespace: "shop", Name: "early", UID: "uid-early", IPs: []string{"198.18.10.9"}}
		list(web, free, late, early)
		Eventually(func(g Gomega) {
			g.Expect(readySet(g, nodeNS, model.SetReady4)).To(ContainElement("198.18.10.9"))
		}).Should(Succeed())
		By("not adopting it again once the runtime deleted its real attachment")
		add("c-early", "uid-early", "shop", "early", "198.18.10.9")
		Expect(plugin.Del(ctx, cni.Attachment{ContainerID: "c-early", IfName: "eth0"})).To(Succeed())
		Expect(readySet(Default, nodeNS, model.SetReady4)).NotTo(ContainElement("198.18.10.9"))
		Consistently(func(g Gomega) {
			g.Expect(readySet(g, nodeNS, model.SetReady4)).NotTo(ContainElement("198.18.10.9"))
		}, "1s", "100ms").Should(Succeed())
		By("dropping an adopted pod the rule set no longer lists")
		other := v1alpha1.LocalPod{Namespace: "shop", Name: "other", UID: "uid-other", IPs: []string{"198.18.10.10"}}
		list(web, free, late, early, other)
		Eventually(func(g Gomega) {
			g.Expect(readySet(g, nodeNS, model.SetReady4)).To(ContainElement("198.18.10.10"))
		}).Should(Succeed())
		conntrackEntry(nodeNS, "198.18.10.10", "198.18.20.1")
		list(web, free, late)
		Eventually(func(g Gomega) {
			g.Expect(readySet(g, nodeNS, model.SetReady4)).NotTo(ContainElement("198.18.10.10"))
			g.Expect(conntrackHas(g, nodeNS, "198.18.10.10")).To(BeFalse())
		}).Should(Succeed())
	})

	It("gives a reused address to the newest ADD and deletes its conntrack entries", func() {
		conntrackEntry(nodeNS, "198.18.10.2", "198.18.20.1")
		Expect(conntrackHas(Default, nodeNS, "198.18.10.2")).To(BeTrue())
		// free's address goes to late (a DEL the agent never saw).
		add("c-late2", "uid-late", "shop", "late", "198.18.10.2")
		Expect(conntrackHas(Default, nodeNS, "198.18.10.2")).To(BeFalse())
		Expect(readySet(Default, nodeNS, model.SetReady4)).To(ContainElement("198.18.10.2"))
		By("not giving it back when the newer attachment goes")
		Expect(plugin.Del(ctx, cni.Attachment{ContainerID: "c-late2", IfName: "eth0"})).To(Succeed())
		Expect(readySet(Default, nodeNS, model.SetReady4)).NotTo(ContainElement("198.18.10.2"))
		By("deleting an attachment twice")
		Expect(plugin.Del(ctx, cni.Attachment{ContainerID: "c-late2", IfName: "eth0"})).To(Succeed())
	})

	It("keeps its attachments across a restart, before any ADD", func() {
		want := readySet(Default, nodeNS, model.SetReady4)
		stop()
		// A reboot: the table is gone too.
		p, err := nftnl.NewProgrammerInNetNS(int(nodeNS))
		Expect(err).NotTo(HaveOccurred())
		Expect(p.Delete()).To(Succeed())
		p.Close()
		Expect(plugin.Status(ctx)).NotTo(Succeed(), "nobody listens while the agent is down")
		start()
		Eventually(func() error { return plugin.Status(ctx) }).Should(Succeed())
		Expect(readySet(Default, nodeNS, model.SetReady4)).To(ConsistOf(want))
	})

	It("replays a DEL the plugin recorded while it was down, before its first pass", func() {
		stop()
		Expect(plugin.Status(ctx)).NotTo(Succeed(), "nobody listens while the agent is down")
		conntrackEntry(nodeNS, "198.18.10.5", "198.18.20.1")
		// What the plugin does with a DEL the agent cannot take.
		Expect(cni.RecordDeleted(filepath.Join(stateDir, "registry"), cni.AttachmentKey{ContainerID: "c-ctrl", IfName: "eth0"}, time.Now())).To(Succeed())
		start()
		Eventually(func() error { return plugin.Status(ctx) }).Should(Succeed())
		// No Eventually: the first pass is programmed once STATUS succeeds.
		Expect(readySet(Default, nodeNS, model.SetReady4)).NotTo(ContainElement("198.18.10.5"))
		Expect(conntrackHas(Default, nodeNS, "198.18.10.5")).To(BeFalse())
		Expect(os.ReadDir(cni.DeletedDir(filepath.Join(stateDir, "registry")))).To(BeEmpty())
	})

	It("forgets what the runtime's GC does not list", func() {
		Expect(plugin.GC(ctx, []cni.AttachmentKey{{ContainerID: "c-web", IfName: "eth0"}})).To(Succeed())
		Expect(readySet(Default, nodeNS, model.SetReady4)).To(ConsistOf("198.18.10.3"))
		Expect(podInterfaces(Default, nodeNS)).To(ConsistOf("vc-web"))
		files, err := filepath.Glob(filepath.Join(stateDir, "registry", "*.json"))
		Expect(err).NotTo(HaveOccurred())
		Expect(files).To(HaveLen(1), "one attachment file left")
	})

	It("takes the plugin out before the table on uninstall, and puts it back on cancel", func() {
		conflist := filepath.Join(confDir(), "10-pods.conflist")
		Expect(os.MkdirAll(confDir(), 0o755)).To(Succeed())
		Expect(os.WriteFile(conflist, []byte(`{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"ptp"}]}`), 0o644)).To(Succeed())
		Expect(os.WriteFile(filepath.Join(stateDir, "image-nftguard"), []byte("plugin binary"), 0o755)).To(Succeed())
		chained := func(g Gomega) bool {
			b, err := os.ReadFile(conflist)
			g.Expect(err).NotTo(HaveOccurred())
			return strings.Contains(string(b), `"nftguard"`)
		}
		binary := filepath.Join(binDir(), "nftguard")
		stop()
		installs = true
		start()
		Eventually(func(g Gomega) {
			g.Expect(chained(g)).To(BeTrue())
			g.Expect(binary).To(BeAnExistingFile())
			c := condition(g, v1alpha1.ConditionCNIChained)
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue), c.Message)
		}).Should(Succeed())

		setUninstall := func(on bool) {
			Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
				rs := &v1alpha1.NodeRuleSet{}
				if err := k8s.Get(ctx, client.ObjectKey{Name: node}, rs); err != nil {
					return err
				}
				if on {
					metav1.SetMetaDataAnnotation(&rs.ObjectMeta, v1alpha1.UninstallAnnotation, "true")
				} else {
					delete(rs.Annotations, v1alpha1.UninstallAnnotation)
				}
				return k8s.Update(ctx, rs)
			})).To(Succeed())
		}
		setUninstall(true)
		Eventually(func(g Gomega) {
			c := condition(g, v1alpha1.ConditionProgrammed)
			g.Expect(c.Reason).To(Equal(v1alpha1.ReasonUninstalled), c.Message)
			g.Expect(chained(g)).To(BeFalse())
			g.Expect(binary).NotTo(BeAnExistingFile())
			g.Expect(kernelTableIn(g, nodeNS)).To(BeEmpty())
		}).Should(Succeed())
		By("not chaining it again while uninstalled, across an agent restart")
		Consistently(func(g Gomega) { g.Expect(chained(g)).To(BeFalse()) }, "1s", "50ms").Should(Succeed())
		stop()
		start()
		Consistently(func(g Gomega) {
			g.Expect(chained(g)).To(BeFalse())
			g.Expect(binary).NotTo(BeAnExistingFile())
		}, "2s", "20ms").Should(Succeed())
		By("taking ADDs of pods the runtime set up before the entry went")
		Expect(plugin.Add(ctx, cni.Attachment{ContainerID: "c-during", IfName: "eth0", PodUID: "uid-during",
			Namespace: "shop", Name: "during", IPs: []netip.Addr{netip.MustParseAddr("198.18.10.8")}})).To(Succeed())

		By("chaining it again on cancel, and adopting the pods started without it")
		started := v1alpha1.LocalPod{Namespace: "shop", Name: "started", UID: "uid-started", IPs: []string{"198.18.10.7"}}
		list(web, started)
		setUninstall(false)
		Eventually(func(g Gomega) {
			g.Expect(chained(g)).To(BeTrue())
			g.Expect(binary).To(BeAnExistingFile())
			g.Expect(condition(g, v1alpha1.ConditionProgrammed).Status).To(Equal(metav1.ConditionTrue))
			g.Expect(readySet(g, nodeNS, model.SetReady4)).To(ConsistOf("198.18.10.3", "198.18.10.7"))
		}).Should(Succeed())
	})
})

// kernelTableIn is what a network namespace's table holds, in nft syntax.
func kernelTableIn(g Gomega, ns netns.NsHandle) string {
	t, err := nftnl.ReadTable(int(ns))
	g.Expect(err).NotTo(HaveOccurred())
	if t == nil {
		return ""
	}
	return t.String()
}
