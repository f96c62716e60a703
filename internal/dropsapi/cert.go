package dropsapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/nftguard/nftguard/internal/certs"
	"github.com/nftguard/nftguard/internal/dropsapi/wire"
)

// +kubebuilder:rbac:groups="",resources=secrets;configmaps,verbs=get;create;update,namespace=nftguard-system
// +kubebuilder:rbac:groups=apiregistration.k8s.io,resources=apiservices,verbs=get;patch,resourceNames=v1alpha1.drops.nftguard.io

// Secret keys of the serving certificate and its CA.
const (
	keyCACert = "ca.crt"
	keyCAKey  = "ca.key"
	keyCert   = corev1.TLSCertKey
	keyKey    = corev1.TLSPrivateKeyKey
)

// Validity of the managed CA and serving certificate. The certificate is
// renewed, by the same CA, once a third of its validity is left; the CA is
// kept for its life (so the caBundle and the agents' CA stay valid).
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	certValidity = 365 * 24 * time.Hour
	renewAt      = 1.0 / 3
)

// CertManager keeps the drops API's serving certificate: a CA and a
// certificate for <Service>.<Namespace>.svc held in one Secret, which every
// replica reads (the first to start creates it). It publishes the CA in the
// APIService's caBundle, for the API server, and in a ConfigMap, for the
// agents.
type CertManager struct {
	Client    kubernetes.Interface
	Dynamic   dynamic.Interface
	Namespace string
	// Service is the drops API's Service; Secret and ConfigMap the objects
	// holding the pair and the CA.
	Service, Secret, ConfigMap string
	// Interval is how often the Secret is read again and what it publishes
	// repaired (default one minute).
	Interval time.Duration
	Log      logr.Logger

	cert heldCert
}

// heldCert is the certificate being served, replaced when renewed.
type heldCert struct {
	mu   sync.RWMutex
	cert *tls.Certificate
}

func (h *heldCert) get() *tls.Certificate {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.cert
}

func (h *heldCert) set(c *tls.Certificate) {
	h.mu.Lock()
	h.cert = c
	h.mu.Unlock()
}

// GetCertificate is the TLS server's certificate callback.
func (m *CertManager) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := m.cert.get(); c != nil {
		return c, nil
	}
	return nil, errors.New("the drops API's certificate is not loaded yet")
}

// Ready reports whether a certificate is loaded.
func (m *CertManager) Ready() bool { return m.cert.get() != nil }

// Start loads (or creates) the certificate and keeps it and what it
// publishes current until ctx is done.
func (m *CertManager) Start(ctx context.Context) error {
	interval := m.Interval
	if interval <= 0 {
		interval = time.Minute
	}
	for {
		if err := m.sync(ctx); err != nil {
			m.Log.Error(err, "Keeping the drops API's certificate; retrying")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(m.retry(interval)):
		}
	}
}

func (m *CertManager) retry(interval time.Duration) time.Duration {
	if m.Ready() {
		return interval
	}
	return min(interval, 2*time.Second)
}

// sync makes sure the Secret holds a valid pair, loads it and publishes the CA.
func (m *CertManager) sync(ctx context.Context) error {
	sec, err := m.ensureSecret(ctx)
	if err != nil {
		return err
	}
	pair, err := tls.X509KeyPair(sec.Data[keyCert], sec.Data[keyKey])
	if err != nil {
		return fmt.Errorf("secret %s/%s: %w", m.Namespace, m.Secret, err)
	}
	m.cert.set(&pair)
	return errors.Join(m.publishConfigMap(ctx, sec.Data[keyCACert]), m.publishAPIService(ctx, sec.Data[keyCACert]))
}

func (m *CertManager) ensureSecret(ctx context.Context) (*corev1.Secret, error) {
	secrets := m.Client.CoreV1().Secrets(m.Namespace)
	sec, err := secrets.Get(ctx, m.Secret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		data, err := m.issue(nil)
		if err != nil {
			return nil, err
		}
		sec, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: m.Secret, Namespace: m.Namespace,
				Labels: map[string]string{"app.kubernetes.io/part-of": "nftguard"}},
			Type: corev1.SecretTypeTLS, Data: data,
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			// Another replica created it first: use its.
			return secrets.Get(ctx, m.Secret, metav1.GetOptions{})
		}
		if err == nil {
			m.Log.Info("Created the drops API's certificate", "secret", m.Namespace+"/"+m.Secret)
		}
		return sec, err
	}
	if err != nil {
		return nil, err
	}
	if certs.Remaining(sec.Data[keyCert], time.Now()) > renewAt && m.matches(sec.Data[keyCert]) {
		return sec, nil
	}
	ca, err := certs.ParseCA(sec.Data[keyCACert], sec.Data[keyCAKey])
	if err != nil {
		ca = nil // an unusable CA is replaced with the pair
	}
	data, err := m.issue(ca)
	if err != nil {
		return nil, err
	}
	sec.Data = data
	updated, err := secrets.Update(ctx, sec, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return secrets.Get(ctx, m.Secret, metav1.GetOptions{})
	}
	if err == nil {
		m.Log.Info("Renewed the drops API's certificate", "secret", m.Namespace+"/"+m.Secret, "newCA", ca == nil)
	}
	return updated, err
}

func (m *CertManager) dnsName() string { return m.Service + "." + m.Namespace + ".svc" }

// matches reports whether the certificate is for the Service's name.
func (m *CertManager) matches(certPEM []byte) bool {
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return false
	}
	c, err := x509.ParseCertificate(b.Bytes)
	return err == nil && c.VerifyHostname(m.dnsName()) == nil
}

// issue signs a new serving certificate with ca, or with a new CA when ca
// is nil, and returns the Secret's data.
func (m *CertManager) issue(ca *certs.CA) (map[string][]byte, error) {
	if ca == nil {
		var err error
		if ca, err = certs.NewCA("nftguard drops API CA", caValidity); err != nil {
			return nil, err
		}
	}
	crt, key, err := ca.Issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: m.dnsName()},
		DNSNames:    []string{m.dnsName(), m.Service + "." + m.Namespace, m.Service},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, certValidity)
	if err != nil {
		return nil, err
	}
	return map[string][]byte{keyCACert: ca.CertPEM, keyCAKey: ca.KeyPEM, keyCert: crt, keyKey: key}, nil
}

func (m *CertManager) publishConfigMap(ctx context.Context, ca []byte) error {
	cms := m.Client.CoreV1().ConfigMaps(m.Namespace)
	cm, err := cms.Get(ctx, m.ConfigMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: m.ConfigMap, Namespace: m.Namespace,
				Labels: map[string]string{"app.kubernetes.io/part-of": "nftguard"}},
			Data: map[string]string{keyCACert: string(ca)},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil // the next sync checks it
		}
		return err
	}
	if err != nil {
		return err
	}
	if cm.Data[keyCACert] == string(ca) {
		return nil
	}
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[keyCACert] = string(ca)
	_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return nil
	}
	return err
}

var apiServices = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}

func (m *CertManager) publishAPIService(ctx context.Context, ca []byte) error {
	res := m.Dynamic.Resource(apiServices)
	cur, err := res.Get(ctx, wire.APIServiceName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("APIService %s is not installed: the drops API is not reachable through the API server", wire.APIServiceName)
	}
	if err != nil {
		return err
	}
	want := base64.StdEncoding.EncodeToString(ca)
	if got, _, _ := unstructured.NestedString(cur.Object, "spec", "caBundle"); got == want {
		return nil
	}
	patch := fmt.Appendf(nil, `{"spec":{"caBundle":%q}}`, want)
	_, err = res.Patch(ctx, wire.APIServiceName, types.MergePatchType, patch, metav1.PatchOptions{})
	if err == nil {
		m.Log.Info("Published the drops API's CA in its APIService", "apiService", wire.APIServiceName)
	}
	return err
}

// FileCertificate serves the pair in dir (tls.crt, tls.key), read again
// when the files change: for certificates another tool (cert-manager, say)
// issues.
type FileCertificate struct {
	Dir string

	mu      sync.Mutex // serializes reloads
	modTime time.Time
	cert    heldCert
}

// GetCertificate is the TLS server's certificate callback.
func (f *FileCertificate) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	crt, key := filepath.Join(f.Dir, keyCert), filepath.Join(f.Dir, keyKey)
	old := f.cert.get()
	st, err := os.Stat(crt)
	switch {
	case err != nil:
		return nil, err
	case old != nil && st.ModTime().Equal(f.modTime):
		return old, nil
	}
	pair, err := tls.LoadX509KeyPair(crt, key)
	switch {
	case err != nil && old != nil:
		return old, nil // a half-written renewal: keep the old pair
	case err != nil:
		return nil, err
	}
	f.cert.set(&pair)
	f.modTime = st.ModTime()
	return &pair, nil
}

// APIService is the registration of the drops API with the aggregator for
// a server behind Service namespace/service on port (the install's
// manifest, config/manager/drops_api.yaml, holds the same with port 443);
// the CertManager fills in its caBundle.
func APIService(namespace, service string, port int) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
		"metadata": map[string]any{"name": wire.APIServiceName},
		"spec": map[string]any{
			"group": wire.Group, "version": wire.Version, "groupPriorityMinimum": int64(1000), "versionPriority": int64(100),
			"service": map[string]any{"namespace": namespace, "name": service, "port": int64(port)},
		},
	}}
}
