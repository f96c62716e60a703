// Package testenv starts the real kube-apiserver and etcd that the Makefile
// builds into bin/, with nftguard's CRDs installed, for envtest suites.
package testenv

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	nftguardv1alpha1 "github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/certs"
)

// RepoRoot is the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// New returns an envtest environment using the binaries in bin/ (or
// $KUBEBUILDER_ASSETS) and the CRDs in config/crd/bases. It fails clearly when
// the binaries have not been built.
func New() (*envtest.Environment, error) {
	root := RepoRoot()
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join(root, "bin")
	}
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(assets, b)); err != nil {
			return nil, fmt.Errorf("%s not found in %s: run `make test-binaries` first: %w", b, assets, err)
		}
	}
	if err := nftguardv1alpha1.AddToScheme(scheme.Scheme); err != nil {
		return nil, fmt.Errorf("registering nftguard types: %w", err)
	}
	return &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}, nil
}

// Start starts an API server of the test's own, stopped when the test ends,
// and returns its config; it fails the test when the server cannot start.
func Start(t testing.TB) *rest.Config {
	_, cfg := StartWith(t, nil)
	return cfg
}

// StartWith is Start with configure applied to the environment first (to
// set API server flags, say).
func StartWith(t testing.TB, configure func(*envtest.Environment) error) (*envtest.Environment, *rest.Config) {
	t.Helper()
	env, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if configure != nil {
		if err := configure(env); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	return env, cfg
}

// GroupVersion is re-exported for suites that build unstructured objects.
var GroupVersion = schema.GroupVersion(nftguardv1alpha1.GroupVersion)

// FrontProxy configures env's API server with a front proxy (requestheader
// authentication and a proxy client certificate), as aggregated APIs need,
// from a CA of its own written to dir. It returns that CA, so that tests can
// also issue client certificates the API server would present.
func FrontProxy(env *envtest.Environment, dir string) (*certs.CA, error) {
	ca, err := certs.NewCA("front-proxy-ca", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	crt, key, err := ca.Issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: FrontProxyClientName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{"front-proxy-ca.crt": ca.CertPEM, "front-proxy-client.crt": crt, "front-proxy-client.key": key}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return nil, err
		}
	}
	args := env.ControlPlane.GetAPIServer().Configure()
	args.Set("requestheader-client-ca-file", filepath.Join(dir, "front-proxy-ca.crt"))
	args.Set("requestheader-allowed-names", FrontProxyClientName)
	args.Set("requestheader-username-headers", "X-Remote-User")
	args.Set("requestheader-group-headers", "X-Remote-Group")
	args.Set("requestheader-extra-headers-prefix", "X-Remote-Extra-")
	args.Set("proxy-client-cert-file", filepath.Join(dir, "front-proxy-client.crt"))
	args.Set("proxy-client-key-file", filepath.Join(dir, "front-proxy-client.key"))
	return ca, nil
}

// FrontProxyClientName is the common name of the front proxy's client
// certificate.
const FrontProxyClientName = "front-proxy-client"
