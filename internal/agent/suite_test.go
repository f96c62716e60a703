package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/vishvananda/netns"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/nftguard/nftguard/internal/agent"
	"github.com/nftguard/nftguard/internal/testenv"
)

const (
	nodeName     = "node-a"
	resyncPeriod = time.Second
)

var (
	env    *envtest.Environment
	k8s    client.Client
	ctx    context.Context
	cancel context.CancelFunc
	// nodeNS is the throwaway network namespace the agent programs.
	nodeNS netns.NsHandle
	// agentCache reads what the agent's cache holds.
	agentCache client.Reader
)

func TestAgent(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the agent suite programs nftables in a network namespace: run as root")
	}
	RegisterFailHandler(Fail)
	RunSpecs(t, "Agent suite")
}

// newNetNS creates an unnamed network namespace without leaving the calling
// thread in it.
func newNetNS() netns.NsHandle {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	Expect(err).NotTo(HaveOccurred())
	defer orig.Close()
	ns, err := netns.New()
	Expect(err).NotTo(HaveOccurred())
	Expect(netns.Set(orig)).To(Succeed())
	return ns
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	SetDefaultEventuallyTimeout(20 * time.Second)
	SetDefaultEventuallyPollingInterval(100 * time.Millisecond)
	ctx, cancel = context.WithCancel(context.Background())

	var err error
	env, err = testenv.New()
	Expect(err).NotTo(HaveOccurred())
	cfg, err := env.Start()
	Expect(err).NotTo(HaveOccurred())
	k8s, err = client.New(cfg, client.Options{Scheme: scheme.Scheme})
	Expect(err).NotTo(HaveOccurred())

	nodeNS = newNetNS()
	// The agent as cmd/agent builds it, in the node's namespace; the drop
	// log goes to a file, the endpoints are off.
	a, err := agent.Setup(cfg, agent.Options{
		NodeName:           nodeName,
		MetricsBindAddress: "0",
		AuditLog:           filepath.Join(GinkgoT().TempDir(), "drops.log"),
		ResyncPeriod:       resyncPeriod,
		NetNS:              int(nodeNS),
		Log:                logf.Log.WithName("agent"),
	})
	Expect(err).NotTo(HaveOccurred())
	agentCache = a.Manager().GetClient()
	go func() {
		defer GinkgoRecover()
		Expect(a.Run(ctx)).To(Succeed())
	}()
})

var _ = AfterSuite(func() {
	if cancel != nil {
		cancel()
	}
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
	if nodeNS.IsOpen() {
		Expect(nodeNS.Close()).To(Succeed())
	}
})
