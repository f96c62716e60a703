package localcluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki holds the cluster's certificates and keys, as PEM files in dir:
// a CA, the API server's serving certificate, the admin's client
// certificate (group system:masters) and the service-account signing key.
type pki struct {
	dir string

	caCert []byte // PEM
	admin  struct{ cert, key []byte }

	// The CA itself, to issue further certificates (nil once loaded).
	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
}

// issue signs a certificate for tmpl with a new key.
func (p *pki) issue(tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now().Add(-time.Hour)
	tmpl.SerialNumber = serial()
	tmpl.NotBefore, tmpl.NotAfter = now, now.Add(certValidity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		return nil, nil, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pemBlock("CERTIFICATE", der), pemBlock("EC PRIVATE KEY", kb), nil
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
	now := time.Now().Add(-time.Hour)
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "nftguard local cluster CA"},
		NotBefore:             now,
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	p.caCert = pemBlock("CERTIFICATE", caDER)
	if err := writePEM(p.path("ca.crt"), p.caCert); err != nil {
		return nil, err
	}

	kb, err := x509.MarshalECPrivateKey(caKey)
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.path("ca.key"), pemBlock("EC PRIVATE KEY", kb)); err != nil {
		return nil, err
	}
	p.ca, p.caKey = ca, caKey
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

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	kb, err = x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.path("sa.key"), pemBlock("EC PRIVATE KEY", kb)); err != nil {
		return nil, err
	}
	if err := writePEM(p.path("sa.pub"), pemBlock("PUBLIC KEY", pub)); err != nil {
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

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return n
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func writePEM(path string, b []byte) error { return os.WriteFile(path, b, 0o600) }
