package certs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"
)

func TestIssueVerifiesAgainstItsCA(t *testing.T) {
	ca, err := NewCA("test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(&x509.Certificate{
		DNSNames:    []string{"svc.ns.svc"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatalf("issued pair does not load: %v", err)
	}
	b, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := c.Verify(x509.VerifyOptions{DNSName: "svc.ns.svc", Roots: roots}); err != nil {
		t.Fatalf("does not verify: %v", err)
	}
	if _, err := c.Verify(x509.VerifyOptions{DNSName: "other.ns.svc", Roots: roots}); err == nil {
		t.Fatal("verified for a name it does not hold")
	}
	other, err := NewCA("other CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Verify(x509.VerifyOptions{DNSName: "svc.ns.svc", Roots: x509.NewCertPool(), Intermediates: nil}); err == nil {
		t.Fatal("verified without roots")
	}
	otherRoots := x509.NewCertPool()
	otherRoots.AddCert(other.Cert)
	if _, err := c.Verify(x509.VerifyOptions{DNSName: "svc.ns.svc", Roots: otherRoots}); err == nil {
		t.Fatal("verified against another CA")
	}
}

func TestParseCARoundTripAndMismatch(t *testing.T) {
	a, err := NewCA("a", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewCA("b", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseCA(a.CertPEM, a.KeyPEM)
	if err != nil {
		t.Fatalf("round trip: %v", err)
	}
	if !got.Cert.Equal(a.Cert) {
		t.Fatal("round trip changed the certificate")
	}
	if _, err := ParseCA(a.CertPEM, b.KeyPEM); err == nil {
		t.Fatal("accepted a key of another CA")
	}
	leaf, _, err := a.Issue(&x509.Certificate{}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseCA(leaf, a.KeyPEM); err == nil {
		t.Fatal("accepted a leaf as a CA")
	}
	if _, err := ParseCA([]byte("junk"), a.KeyPEM); err == nil {
		t.Fatal("accepted junk")
	}
}

func TestRemaining(t *testing.T) {
	ca, err := NewCA("a", 10*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Valid from an hour ago for ten hours: at now, 9 of 10 hours are left.
	if r := Remaining(ca.CertPEM, time.Now()); r < 0.85 || r > 0.95 {
		t.Fatalf("remaining = %.3f, want about 0.9", r)
	}
	if r := Remaining(ca.CertPEM, time.Now().Add(10*time.Hour)); r != 0 {
		t.Fatalf("remaining after expiry = %v", r)
	}
	if r := Remaining([]byte("junk"), time.Now()); r != 0 {
		t.Fatalf("remaining of junk = %v", r)
	}
}
