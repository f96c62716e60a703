package agent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"encoding/pem"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/florianl/go-nflog/v2"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/agent"
	"github.com/nftguard/nftguard/internal/dropsapi/wire"
	"github.com/nftguard/nftguard/internal/netnstest"
)

// An agent whose NFLOG group another process holds, whose metrics and
// health ports are taken, and whose drops API refuses its lines, still
// programs its rule set, says what is wrong on its NodeRuleSet, and
// recovers once they are free.
var _ = Describe("Optional parts that fail", Ordered, func() {
	const node = "node-parts"
	var (
		nodeNS     netns.NsHandle
		holder     *nflog.Nflog
		stopHolder context.CancelFunc
		taken      []net.Listener
		dropsAPI   *httptest.Server
		accepting  atomic.Bool
	)
	const metricsAddr, healthAddr = "198.18.7.1:9090", "198.18.7.1:9091"
	// listen listens inside the node's namespace, where the agent's
	// endpoints live in this test.
	listen := func(network, address string) (net.Listener, error) {
		var ln net.Listener
		err := netnstest.Do(nodeNS, func() error {
			var err error
			ln, err = net.Listen(network, address)
			return err
		})
		return ln, err
	}
	condition := func(g Gomega, typ string) *metav1.Condition { return conditionOf(g, node, typ) }

	BeforeAll(func() {
		nodeNS = newNetNS()
		DeferCleanup(nodeNS.Close)
		h, err := netlink.NewHandleAt(nodeNS)
		Expect(err).NotTo(HaveOccurred())
		defer h.Close()
		lo, err := h.LinkByName("lo")
		Expect(err).NotTo(HaveOccurred())
		Expect(h.LinkSetUp(lo)).To(Succeed())
		addr, err := netlink.ParseAddr("198.18.7.1/32")
		Expect(err).NotTo(HaveOccurred())
		Expect(h.AddrAdd(lo, addr)).To(Succeed())

		By("running a drops API that refuses pushes")
		dropsAPI = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != wire.PushPath || r.Header.Get("Authorization") != "Bearer agent-token" {
				http.Error(w, "wrong request", http.StatusBadRequest)
				return
			}
			if !accepting.Load() {
				w.WriteHeader(http.StatusForbidden)
				_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","code":403,"message":"not now"}`))
				return
			}
			var req wire.PushRequest
			_ = json.NewDecoder(r.Body).Decode(&req)
			_ = json.NewEncoder(w).Encode(wire.PushResponse{Next: req.First + uint64(len(req.Lines))})
		}))
		DeferCleanup(dropsAPI.Close)
		dir := GinkgoT().TempDir()
		tokenFile, caFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
		Expect(os.WriteFile(tokenFile, []byte("agent-token\n"), 0o600)).To(Succeed())
		Expect(os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: dropsAPI.Certificate().Raw}), 0o600)).To(Succeed())

		By("holding the NFLOG group and the two ports before the agent starts")
		holder, err = nflog.Open(&nflog.Config{NetNS: int(nodeNS), Group: 100, Copymode: nflog.CopyPacket})
		Expect(err).NotTo(HaveOccurred())
		var hctx context.Context
		hctx, stopHolder = context.WithCancel(ctx)
		DeferCleanup(func() { stopHolder() })
		Expect(holder.RegisterWithErrorFunc(hctx, func(nflog.Attribute) int { return 0 }, func(error) int { return 0 })).To(Succeed())
		for _, a := range []string{metricsAddr, healthAddr} {
			ln, err := listen("tcp", a)
			Expect(err).NotTo(HaveOccurred())
			taken = append(taken, ln)
		}

		Expect(k8s.Create(ctx, &v1alpha1.NodeRuleSet{
			ObjectMeta: metav1.ObjectMeta{Name: node},
			Spec: v1alpha1.NodeRuleSetSpec{Pods: []v1alpha1.LocalPod{{Namespace: "shop", Name: "cache", IPs: []string{"198.18.7.10"},
				Ingress: &v1alpha1.Isolation{Mode: v1alpha1.IsolationEnforce, Policies: []string{"NetworkPolicy/shop/cache"}}}}},
		})).To(Succeed())
		DeferCleanup(runAgent(agent.Options{
			NodeName: node, ResyncPeriod: resyncPeriod, NetNS: int(nodeNS),
			MetricsBindAddress: metricsAddr, HealthProbeBindAddress: healthAddr, Listen: listen,
			Drops: agent.DropsOptions{TokenFile: tokenFile, CAFile: caFile, Servers: []string{dropsAPI.URL},
				ServerName: "example.com", Interval: 100 * time.Millisecond},
			EndpointRetry: 100 * time.Millisecond, AuditRetry: 100 * time.Millisecond,
			AuditLog: filepath.Join(GinkgoT().TempDir(), "drops.log"), Log: logf.Log.WithName("agent-parts"),
			Registerer: prometheus.NewRegistry(),
		}))
	})

	It("programs its rule set anyway and names each failing part", func() {
		Eventually(func(g Gomega) {
			g.Expect(programmed(g, node).Status).To(Equal(metav1.ConditionTrue))
			g.Expect(kernelTableIn(g, nodeNS)).To(ContainSubstring("198.18.7.10"))
			c := condition(g, v1alpha1.ConditionAuditLogReady)
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal(v1alpha1.ReasonNFLOGUnavailable))
			g.Expect(c.Message).To(ContainSubstring("NFLOG group 100"))
			c = condition(g, v1alpha1.ConditionEndpointsReady)
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal(v1alpha1.ReasonListenFailed))
			g.Expect(c.Message).To(And(ContainSubstring("metrics on "+metricsAddr), ContainSubstring("health probes on "+healthAddr),
				ContainSubstring("address already in use")))
			c = condition(g, v1alpha1.ConditionDropsDelivered)
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal(v1alpha1.ReasonPushFailed))
			g.Expect(c.Message).To(And(ContainSubstring(dropsAPI.URL), ContainSubstring("403 Forbidden: not now")))
		}).Should(Succeed())
	})

	It("recovers once the group and the ports are free", func() {
		stopHolder() // go-nflog's Close waits for its reader, which ends with the context
		Expect(holder.Close()).To(Succeed())
		for _, ln := range taken {
			Expect(ln.Close()).To(Succeed())
		}
		accepting.Store(true)
		Eventually(func(g Gomega) {
			c := condition(g, v1alpha1.ConditionAuditLogReady)
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue), "%s: %s", c.Reason, c.Message)
			c = condition(g, v1alpha1.ConditionEndpointsReady)
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue), "%s: %s", c.Reason, c.Message)
			c = condition(g, v1alpha1.ConditionDropsDelivered)
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue), "%s: %s", c.Reason, c.Message)
		}).Should(Succeed())
		By("answering a health probe from inside the node's namespace")
		var conn net.Conn
		Expect(netnstest.Do(nodeNS, func() error {
			var err error
			conn, err = net.DialTimeout("tcp", healthAddr, 2*time.Second) // the socket is the namespace's
			return err
		})).To(Succeed())
		defer conn.Close()
		Expect(conn.SetDeadline(time.Now().Add(5 * time.Second))).To(Succeed())
		_, err := conn.Write([]byte("GET /healthz HTTP/1.0\r\nHost: agent\r\n\r\n"))
		Expect(err).NotTo(HaveOccurred())
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		Expect(err).NotTo(HaveOccurred())
		resp.Body.Close()
		code := resp.StatusCode
		Expect(code).To(Equal(http.StatusOK))
	})
})
