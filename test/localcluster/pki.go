package localcluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/nftguard/nftguard/internal/certs"
)

// pki holds the cluster's certificates and keys, as PEM files in dir:
// a CA, the API server's serving certificate, the admin's client
// certificate (group system:masters) and the service-account signing key.
type pki struct {
	dir string

	caCert []byte // PEM
	admin  struct{ cert, key []byte }

	// The CA itself, to issue further certificates (nil once loaded).
	ca *certs.CA
}

// issue signs a certificate for tmpl with a new key.
func (p *pki) issue(tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
	return p.ca.Issue(tmpl, certValidity)
}

// issueFiles issues a certificate and writes it as <name>.crt and <name>.key.
func (p *pki) issueFiles(name string, tmpl *x509.Certificate) error {
	cert, key, err := p.issue(tmpl)
	if err != nil {
		return err
	}
	if err := writePEM(p.path(name+".crt"), cert); err != nil {
		return err
	}
	return writePEM(p.path(name+".key"), key)
}

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

const certValidity = 90 * 24 * time.Hour

func newPKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{dir: dir}
	ca, err := certs.NewCA("nftguard local cluster CA", certValidity)
	if err != nil {
		return nil, err
	}
	p.caCert = ca.CertPEM
	if err := writePEM(p.path("ca.crt"), ca.CertPEM); err != nil {
		return nil, err
	}
	if err := writePEM(p.path("ca.key"), ca.KeyPEM); err != nil {
		return nil, err
	}
	p.ca = ca
	issue := p.issue

	// The API server answers on loopback in the machine's namespace, and
	// through each node's forwarder on loopback inside the node.
	serving, servingKey, err := issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, serviceIP},
	})
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.path("apiserver.crt"), serving); err != nil {
		return nil, err
	}
	if err := writePEM(p.path("apiserver.key"), servingKey); err != nil {
		return nil, err
	}

	p.admin.cert, p.admin.key, err = issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "nftguard-dev:admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.path("admin.crt"), p.admin.cert); err != nil {
		return nil, err
	}
	if err := writePEM(p.path("admin.key"), p.admin.key); err != nil {
		return nil, err
	}

	if err := frontProxy(p); err != nil {
		return nil, err
	}

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	kb, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.path("sa.key"), certs.PEM("EC PRIVATE KEY", kb)); err != nil {
		return nil, err
	}
	if err := writePEM(p.path("sa.pub"), certs.PEM("PUBLIC KEY", pub)); err != nil {
		return nil, err
	}
	return p, nil
}

// loadPKI reads what a running cluster's clients need.
func loadPKI(dir string) (*pki, error) {
	p := &pki{dir: dir}
	var err error
	if p.caCert, err = os.ReadFile(p.path("ca.crt")); err != nil {
		return nil, err
	}
	if p.admin.cert, err = os.ReadFile(p.path("admin.crt")); err != nil {
		return nil, err
	}
	if p.admin.key, err = os.ReadFile(p.path("admin.key")); err != nil {
		return nil, err
	}
	return p, nil
}

func writePEM(path string, b []byte) error { return os.WriteFile(path, b, 0o600) }

// frontProxyClient is the common name of the API server's front-proxy
// client certificate, the only one aggregated APIs accept user headers from.
const frontProxyClient = "front-proxy-client"

// frontProxy writes the front proxy's own CA (requestheader clients must
// not be ordinary clients) and the API server's client certificate, with
// which its aggregator calls aggregated APIs such as the drops API.
func frontProxy(p *pki) error {
	ca, err := certs.NewCA("nftguard local cluster front-proxy CA", certValidity)
	if err != nil {
		return err
	}
	crt, key, err := ca.Issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: frontProxyClient},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, certValidity)
	if err != nil {
		return err
	}
	for name, b := range map[string][]byte{"front-proxy-ca.crt": ca.CertPEM, "front-proxy-client.crt": crt, "front-proxy-client.key": key} {
		if err := writePEM(p.path(name), b); err != nil {
			return err
		}
	}
	return nil
}

// frontProxyArgs are the API server's flags for its front proxy.
func (p *pki) frontProxyArgs() []string {
	return []string{
		"--requestheader-client-ca-file=" + p.path("front-proxy-ca.crt"),
		"--requestheader-allowed-names=" + frontProxyClient,
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + p.path("front-proxy-client.crt"),
		"--proxy-client-key-file=" + p.path("front-proxy-client.key"),
	}
}
