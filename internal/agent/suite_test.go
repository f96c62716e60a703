package agent_test

import (
	"context"
	"os"
	"runtime"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/vishvananda/netns"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/agent"
	"github.com/nftguard/nftguard/internal/dataplane/nftnl"
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
	// groupFilter is the agent's AddressGroup cache transform.
	groupFilter = &agent.GroupFilter{}
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
	programmer, err := nftnl.NewProgrammerInNetNS(int(nodeNS))
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(programmer.Close)

	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  scheme.Scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&v1alpha1.NodeRuleSet{}:  {Field: fields.OneTermEqualSelector("metadata.name", nodeName)},
			&v1alpha1.AddressGroup{}: {Transform: groupFilter.Transform},
		}},
	})
	Expect(err).NotTo(HaveOccurred())
	r := &agent.Reconciler{
		Client:       mgr.GetClient(),
		APIReader:    mgr.GetAPIReader(),
		NodeName:     nodeName,
		Programmer:   programmer,
		Resolver:     &agent.Resolver{Reader: mgr.GetAPIReader()},
		ResyncPeriod: resyncPeriod,
		Groups:       groupFilter,
	}
	Expect(r.SetupWithManager(mgr)).To(Succeed())
	go func() {
		defer GinkgoRecover()
		Expect(mgr.Start(ctx)).To(Succeed())
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
