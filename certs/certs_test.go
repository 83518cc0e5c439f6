package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func pool(ca *CA) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

func verify(ca *CA, c *tls.Certificate, name string) error {
	_, err := c.Leaf.Verify(x509.VerifyOptions{Roots: pool(ca), DNSName: name})
	return err
}

func TestLeavesVerifyAgainstTheCA(t *testing.T) {
	ca, _, _, err := Create(Options{Names: []string{"vendor.example", "api.other.example"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"api.vendor.example", true},
		{"vendor.example", true},
		{"a.b.vendor.example", true},
		{"api.other.example", true},
		{"other.example", false},
		{"evilvendor.example", false},
		{"bank.example", false},
		{"192.0.2.1", false},
		{"2001:db8::1", false},
	} {
		what := "a leaf inside the constraints verifies: "
		if !tc.ok {
			what = "a leaf outside the constraints fails verification: "
		}
		t.Run(what+tc.name, func(t *testing.T) {
			c, err := ca.Leaf(tc.name)
			if err != nil {
				t.Fatal(err)
			}
			err = verify(ca, c, tc.name)
			if tc.ok != (err == nil) {
				t.Fatalf("Verify(%s) = %v; want ok %v", tc.name, err, tc.ok)
			}
			var inv x509.CertificateInvalidError
			if !tc.ok && (!errors.As(err, &inv) || inv.Reason != x509.CANotAuthorizedForThisName) {
				t.Fatalf("Verify(%s) = %v; want CANotAuthorizedForThisName", tc.name, err)
			}
			if tc.ok && ca.Permits(tc.name) != nil || !tc.ok && !errors.Is(ca.Permits(tc.name), ErrOutsideConstraints) {
				t.Fatalf("Permits(%s) = %v; want ok %v", tc.name, ca.Permits(tc.name), tc.ok)
			}
		})
	}
}

func TestTheCAIsP256AndConstrained(t *testing.T) {
	ca, _, _, err := Create(Options{Names: []string{"vendor.example"}})
	if err != nil {
		t.Fatal(err)
	}
	c := ca.Cert
	if c.PublicKeyAlgorithm != x509.ECDSA || !c.IsCA || !c.MaxPathLenZero || !c.PermittedDNSDomainsCritical ||
		len(c.ExcludedIPRanges) != 2 || c.ExcludedIPRanges[0].String() != "0.0.0.0/0" || c.ExcludedIPRanges[1].String() != "::/0" {
		t.Fatalf("CA = alg %v CA %v pathlen0 %v critical %v excluded %v", c.PublicKeyAlgorithm, c.IsCA, c.MaxPathLenZero, c.PermittedDNSDomainsCritical, c.ExcludedIPRanges)
	}
}

func TestAnUnconstrainedCASignsIPLiterals(t *testing.T) {
	ca, _, _, err := Create(Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.Leaf("192.0.2.10")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: pool(ca)}); err != nil || len(c.Leaf.IPAddresses) != 1 || c.Leaf.VerifyHostname("192.0.2.10") != nil {
		t.Fatalf("IP leaf: %v, SANs %v", err, c.Leaf.IPAddresses)
	}
	if err := ca.Permits("192.0.2.10"); err != nil {
		t.Fatal(err)
	}
}

func TestLeavesAreCachedAndShortLived(t *testing.T) {
	ca, _, _, err := Create(Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ca.now = func() time.Time { return now }
	a, _ := ca.Leaf("api.vendor.example")
	b, _ := ca.Leaf("api.vendor.example")
	if a != b {
		t.Fatal("a second lookup minted again")
	}
	if life := a.Leaf.NotAfter.Sub(now); life > LeafLifetime || life < LeafLifetime-time.Minute {
		t.Fatalf("leaf valid for %v; want %v", life, LeafLifetime)
	}
	if ecdsaKey := a.Leaf.PublicKeyAlgorithm; ecdsaKey != x509.ECDSA {
		t.Fatalf("leaf key %v; want ECDSA", ecdsaKey)
	}
	now = now.Add(LeafLifetime - LeafRenew + time.Minute)
	if c, _ := ca.Leaf("api.vendor.example"); c == a || !c.Leaf.NotAfter.After(a.Leaf.NotAfter) {
		t.Fatal("a leaf close to expiry was not minted again")
	}
}

// A real TLS handshake on loopback: a Go client trusting the CA accepts
// the minted leaf for the name it asked for, and refuses it for another.
func TestHandshakeWithAMintedLeaf(t *testing.T) {
	ca, _, _, err := Create(Options{Names: []string{"vendor.example"}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s := tls.Server(c, &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) { return ca.Leaf(h.ServerName) }})
			go func() { s.Handshake(); io.WriteString(s, "ok"); s.Close() }()
		}
	}()
	for _, tc := range []struct {
		sni, verifyAs string
		ok            bool
	}{
		{"api.vendor.example", "api.vendor.example", true},
		{"api.vendor.example", "bank.example", false},
		{"bank.example", "bank.example", false},
	} {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: tc.sni, RootCAs: pool(ca),
			VerifyConnection: func(cs tls.ConnectionState) error { return cs.PeerCertificates[0].VerifyHostname(tc.verifyAs) }})
		if (err == nil) != tc.ok {
			t.Fatalf("handshake for %s (checked as %s) = %v; want ok %v", tc.sni, tc.verifyAs, err, tc.ok)
		}
		if c != nil {
			c.Close()
		}
	}
}

func TestLoadCARefusesAKeyAnyoneCanRead(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, err := Init(dir, Options{Names: []string{"vendor.example"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{certFile, keyFile} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v, %v; want 0600", f, fi.Mode(), err)
		}
	}
	if _, err := LoadCA(certFile, keyFile); err != nil {
		t.Fatalf("LoadCA(0600) = %v", err)
	}
	os.Chmod(keyFile, 0o640)
	if _, err := LoadCA(certFile, keyFile); err != nil {
		t.Fatalf("LoadCA(0640) = %v; group-readable is fine", err)
	}
	os.Chmod(keyFile, 0o644)
	if _, err := LoadCA(certFile, keyFile); !errors.Is(err, ErrKeyReadable) {
		t.Fatalf("LoadCA(0644) = %v; want ErrKeyReadable", err)
	}
}

func TestLoadCARefusesAMismatchedKey(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	certA, _, err := Init(a, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, keyB, err := Init(b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(certA, keyB); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Fatalf("LoadCA(mismatched) = %v", err)
	}
}

func TestInitNeverOverwrites(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := Init(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, "ca.key"))
	if _, _, err := Init(dir, Options{}); err == nil || !strings.Contains(err.Error(), "never overwrites") {
		t.Fatalf("second Init = %v; want refused", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "ca.key"))
	if string(before) != string(after) {
		t.Fatal("the key changed")
	}
	os.Remove(filepath.Join(dir, "ca.crt"))
	if _, _, err := Init(dir, Options{}); err == nil {
		t.Fatal("Init wrote over a lone ca.key")
	}
}

func TestConstraintNames(t *testing.T) {
	for _, tc := range []struct {
		name     string
		patterns []string
		want     string
	}{
		{"exact names are kept", []string{"api.vendor.example", "db.example"}, "api.vendor.example db.example"},
		{"a wildcard becomes its fixed part", []string{"*.vendor.example"}, "vendor.example"},
		{"a middle wildcard becomes the part after it", []string{"a.*.vendor.example"}, "vendor.example"},
		{"names inside another are left out", []string{"api.vendor.example", "*.vendor.example"}, "vendor.example"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ConstraintNames(tc.patterns)
			if err != nil || strings.Join(got, " ") != tc.want {
				t.Fatalf("ConstraintNames(%v) = %v, %v; want %s", tc.patterns, got, err, tc.want)
			}
		})
	}
	if _, err := ConstraintNames([]string{"*"}); err == nil {
		t.Fatal(`ConstraintNames("*") = nil error`)
	}
}

func TestPermitsPatterns(t *testing.T) {
	ca, _, _, err := Create(Options{Names: []string{"vendor.example", "api.other.example"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		pattern string
		ok      bool
	}{
		{"*.vendor.example", true},
		{"a.*.vendor.example", true},
		{"*.other.example", false},
		{"*", false},
		{"api.other.example", true},
		{"x.api.other.example", true},
		{"192.0.2.10", false},
	} {
		if err := ca.Permits(tc.pattern); (err == nil) != tc.ok {
			t.Errorf("Permits(%s) = %v; want ok %v", tc.pattern, err, tc.ok)
		}
	}
}

func BenchmarkLeafCached(b *testing.B) {
	ca, _, _, err := Create(Options{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := ca.Leaf("api.vendor.example"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ca.Leaf("api.vendor.example"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLeafMint(b *testing.B) {
	ca, _, _, err := Create(Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	now := time.Now()
	for b.Loop() {
		if _, err := ca.mint("api.vendor.example", now); err != nil {
			b.Fatal(err)
		}
	}
}
