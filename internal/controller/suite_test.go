package controller_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/nftguard/nftguard/internal/controller"
	"github.com/nftguard/nftguard/internal/dropsapi"
	"github.com/nftguard/nftguard/internal/testenv"
)

const (
	controllerNamespace = "nftguard-system"
	controllerSA        = "nftguard-controller"
	// testMaxObjectBytes is low so that one test can exceed it on purpose.
	testMaxObjectBytes = 48 * 1024
	// testMaxGroupEntries is low so that one test can split a group into
	// shards with a hundred pods.
	testMaxGroupEntries = 16
)

var (
	env *envtest.Environment
	// admin is the test's own cluster-admin client; the manager runs with
	// the controller's ServiceAccount and ClusterRole only.
	admin      client.Client
	adminCfg   *rest.Config
	controlCfg *rest.Config
	ctx        context.Context
	cancel     context.CancelFunc
	// drops is the drops API's store whose counts DefaultDeny status shows.
	drops *dropsapi.Store
)

func TestController(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Controller suite")
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	ctx, cancel = context.WithCancel(context.Background())
	SetDefaultEventuallyTimeout(30 * time.Second)
	SetDefaultEventuallyPollingInterval(100 * time.Millisecond)

	var err error
	env, err = testenv.New()
	Expect(err).NotTo(HaveOccurred())
	adminCfg, err = env.Start()
	Expect(err).NotTo(HaveOccurred())
	admin, err = client.New(adminCfg, client.Options{Scheme: scheme.Scheme})
	Expect(err).NotTo(HaveOccurred())

	installControllerRBAC()
	controlCfg = rest.CopyConfig(adminCfg)
	controlCfg.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + controllerNamespace + ":" + controllerSA,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + controllerNamespace, "system:authenticated"},
	}

	mgr, err := ctrl.NewManager(controlCfg, ctrl.Options{
		Scheme:  scheme.Scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache:   controller.CacheOptions(),
	})
	Expect(err).NotTo(HaveOccurred())
	// The drops API's store counts what agents push; the status writes them.
	drops = dropsapi.NewStore(dropsapi.StoreConfig{})
	Expect(controller.Setup(mgr, controller.Options{MaxObjectBytes: testMaxObjectBytes, MaxGroupEntries: testMaxGroupEntries,
		ExemptNamespaces: []string{controllerNamespace}, DropCounts: drops.PolicyCounts, DropCountsInterval: time.Second})).To(Succeed())
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
})

// installControllerRBAC applies the generated ClusterRole from config/rbac
// and binds it to the controller's ServiceAccount, as config/default does.
func installControllerRBAC() {
	Expect(admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: controllerNamespace}})).To(Succeed())
	Expect(admin.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: controllerSA, Namespace: controllerNamespace}})).To(Succeed())
	f, err := os.Open(filepath.Join(testenv.RepoRoot(), "config", "rbac", "role.yaml"))
	Expect(err).NotTo(HaveOccurred())
	defer f.Close()
	role := &rbacv1.ClusterRole{}
	Expect(yaml.NewYAMLOrJSONDecoder(f, 4096).Decode(role)).To(Succeed())
	Expect(role.Name).To(Equal("nftguard-controller"))
	Expect(admin.Create(ctx, role)).To(Succeed())
	Expect(admin.Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "nftguard-controller"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: controllerSA, Namespace: controllerNamespace}},
	})).To(Succeed())
}
