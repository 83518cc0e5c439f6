package certs

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testnet"
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
		for _, k := range []KeyType{P256, Ed25519} {
			what := "a leaf inside the constraints verifies: "
			if !tc.ok {
				what = "a leaf outside the constraints fails verification: "
			}
			t.Run(what+tc.name+" "+k.String(), func(t *testing.T) {
				c, err := ca.LeafOf(tc.name, k)
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
}

// hello is a ClientHello as crypto/tls hands it to GetCertificate.
func hello(sni string, versions []uint16, schemes ...tls.SignatureScheme) *tls.ClientHelloInfo {
	return &tls.ClientHelloInfo{
		ServerName:        sni,
		SupportedVersions: versions,
		SignatureSchemes:  schemes,
		CipherSuites:      []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		SupportedCurves:   []tls.CurveID{tls.X25519, tls.CurveP256},
		SupportedPoints:   []uint8{0},
	}
}

func TestLeafForPresentsEd25519OnlyToClientsThatAcceptIt(t *testing.T) {
	ca, _, _, err := Create(Options{Names: []string{"vendor.example"}})
	if err != nil {
		t.Fatal(err)
	}
	tls13 := []uint16{tls.VersionTLS13, tls.VersionTLS12}
	tls12 := []uint16{tls.VersionTLS12}
	ecdsaOnly := []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256, tls.PSSWithSHA256, tls.PKCS1WithSHA256}
	withEd := append([]tls.SignatureScheme{tls.Ed25519}, ecdsaOnly...)
	for _, tc := range []struct {
		what  string
		hello *tls.ClientHelloInfo
		want  KeyType
	}{
		{"a TLS 1.3 client offering ed25519 gets an Ed25519 leaf", hello("api.vendor.example", tls13, withEd...), Ed25519},
		{"a TLS 1.2 client offering ed25519 gets an Ed25519 leaf", hello("api.vendor.example", tls12, withEd...), Ed25519},
		{"a client without a server name offering ed25519 gets an Ed25519 leaf", hello("", tls13, withEd...), Ed25519},
		{"a TLS 1.3 client without ed25519 gets the P-256 leaf", hello("api.vendor.example", tls13, ecdsaOnly...), P256},
		{"a TLS 1.2 client without ed25519 gets the P-256 leaf", hello("api.vendor.example", tls12, ecdsaOnly...), P256},
		{"a TLS 1.2 client with no signature_algorithms gets the P-256 leaf", hello("api.vendor.example", tls12), P256},
		{"a TLS 1.1 client gets the P-256 leaf (and no handshake)", hello("api.vendor.example", []uint16{tls.VersionTLS11}, withEd...), P256},
	} {
		t.Run(tc.what, func(t *testing.T) {
			if got := ca.KeyFor(tc.hello); got != tc.want {
				t.Fatalf("KeyFor = %v; want %v", got, tc.want)
			}
			c, err := ca.LeafFor(tc.hello, "api.vendor.example")
			if err != nil {
				t.Fatal(err)
			}
			want := x509.ECDSA
			if tc.want == Ed25519 {
				want = x509.Ed25519
			}
			if got := c.Leaf.PublicKeyAlgorithm; got != want {
				t.Fatalf("leaf key %v; want %v", got, want)
			}
			if err := verify(ca, c, "api.vendor.example"); err != nil {
				t.Fatal(err)
			}
			if tc.hello.ServerName != "" && tc.hello.SupportedVersions[0] >= tls.VersionTLS12 {
				if err := tc.hello.SupportsCertificate(c); err != nil {
					t.Fatalf("crypto/tls says the client cannot use the leaf: %v", err)
				}
			}
		})
	}
}

func TestLeavesOfEachKeyTypeAreCachedApart(t *testing.T) {
	ca, _, _, err := Create(Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ca.now = func() time.Time { return now }
	p, _ := ca.LeafOf("api.vendor.example", P256)
	e, _ := ca.LeafOf("api.vendor.example", Ed25519)
	if p == e || p.Leaf.PublicKeyAlgorithm != x509.ECDSA || e.Leaf.PublicKeyAlgorithm != x509.Ed25519 {
		t.Fatalf("leaves %v and %v; want one ECDSA and one Ed25519", p.Leaf.PublicKeyAlgorithm, e.Leaf.PublicKeyAlgorithm)
	}
	if e.Leaf.Subject.CommonName != p.Leaf.Subject.CommonName || !slices.Equal(e.Leaf.DNSNames, p.Leaf.DNSNames) ||
		!e.Leaf.NotAfter.Equal(p.Leaf.NotAfter) || e.Leaf.KeyUsage != p.Leaf.KeyUsage || !slices.Equal(e.Leaf.ExtKeyUsage, p.Leaf.ExtKeyUsage) {
		t.Fatal("the Ed25519 leaf differs from the P-256 leaf in more than its key")
	}
	if again, _ := ca.LeafOf("api.vendor.example", Ed25519); again != e {
		t.Fatal("a second lookup of the Ed25519 leaf minted again")
	}
	if again, _ := ca.Leaf("api.vendor.example"); again != p {
		t.Fatal("a lookup of the P-256 leaf after the Ed25519 one minted again")
	}
	other, _ := ca.LeafOf("api2.vendor.example", Ed25519)
	if !other.PrivateKey.(ed25519.PrivateKey).Equal(e.PrivateKey) {
		t.Fatal("two Ed25519 leaves of one CA have different keys: minting generated a key")
	}
	now = now.Add(LeafLifetime - LeafRenew + time.Minute)
	if c, _ := ca.LeafOf("api.vendor.example", Ed25519); c == e || !c.Leaf.NotAfter.After(e.Leaf.NotAfter) {
		t.Fatal("an Ed25519 leaf close to expiry was not minted again")
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
	addr := testnet.ServeTCP(t, func(c net.Conn) {
		s := tls.Server(c, &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) { return ca.LeafFor(h, h.ServerName) }})
		s.Handshake()
		io.WriteString(s, "ok")
		s.Close()
	})
	for _, tc := range []struct {
		sni, verifyAs string
		ok            bool
		max           uint16
	}{
		{"api.vendor.example", "api.vendor.example", true, 0},
		{"api.vendor.example", "bank.example", false, 0},
		{"bank.example", "bank.example", false, 0},
		{"api.vendor.example", "api.vendor.example", true, tls.VersionTLS12},
	} {
		var key x509.PublicKeyAlgorithm
		c, err := tls.Dial("tcp", addr.String(), &tls.Config{ServerName: tc.sni, RootCAs: pool(ca), MaxVersion: tc.max,
			VerifyConnection: func(cs tls.ConnectionState) error {
				key = cs.PeerCertificates[0].PublicKeyAlgorithm
				return cs.PeerCertificates[0].VerifyHostname(tc.verifyAs)
			}})
		if (err == nil) != tc.ok {
			t.Fatalf("handshake for %s (checked as %s) = %v; want ok %v", tc.sni, tc.verifyAs, err, tc.ok)
		}
		if c != nil {
			c.Close()
		}
		// Go's client offers ed25519 (TLS 1.2 and 1.3).
		if tc.ok && key != x509.Ed25519 {
			t.Fatalf("a Go client was presented a %v leaf; want Ed25519", key)
		}
	}
}

func TestLoadCARefusesAKeyAnyoneCanRead(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca") // Init makes it
	certFile, keyFile, err := Init(dir, Options{Names: []string{"vendor.example"}})
	if err != nil {
		t.Fatal(err)
	}
	// The certificate is public (clients running as other users read
	// it), the key is not.
	for f, want := range map[string]fs.FileMode{certFile: 0o644, keyFile: 0o600, dir: 0o755} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != want {
			t.Fatalf("%s: mode %v, %v; want %v", f, fi.Mode(), err, want)
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

// BenchmarkLeafForEd25519 is LeafFor's cost for a cached leaf: the
// choice of key type (crypto/tls's SupportsCertificate) and the lookup.
func BenchmarkLeafForEd25519(b *testing.B) {
	ca, _, _, err := Create(Options{})
	if err != nil {
		b.Fatal(err)
	}
	h := hello("api.vendor.example", []uint16{tls.VersionTLS13, tls.VersionTLS12}, tls.Ed25519, tls.ECDSAWithP256AndSHA256)
	if c, err := ca.LeafFor(h, "api.vendor.example"); err != nil || c.Leaf.PublicKeyAlgorithm != x509.Ed25519 {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ca.LeafFor(h, "api.vendor.example"); err != nil {
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
		if _, err := ca.mint("api.vendor.example", P256, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLeafSign is the signature a server makes with the leaf's key
// in each full handshake (TLS 1.3 CertificateVerify: 64 spaces, a
// context string and the transcript hash), per key type: what an
// Ed25519 leaf saves egress per new intercepted connection.
func BenchmarkLeafSign(b *testing.B) {
	ca, _, _, err := Create(Options{})
	if err != nil {
		b.Fatal(err)
	}
	msg := append(bytes.Repeat([]byte{' '}, 64), "TLS 1.3, server CertificateVerify\x00"+strings.Repeat("h", 32)...)
	for _, k := range []KeyType{P256, Ed25519} {
		b.Run(k.String(), func(b *testing.B) {
			c, err := ca.LeafOf("api.vendor.example", k)
			if err != nil {
				b.Fatal(err)
			}
			key := c.PrivateKey.(crypto.Signer)
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if k == Ed25519 {
					_, err = key.Sign(rand.Reader, msg, crypto.Hash(0))
				} else {
					h := sha256.Sum256(msg)
					_, err = key.Sign(rand.Reader, h[:], crypto.SHA256)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
