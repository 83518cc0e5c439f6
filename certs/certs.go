// Package certs is egress's interception CA: it creates one (egress ca
// init), loads one (tls.ca_cert, tls.ca_key), says whether a host is
// inside its name constraints, and mints leaf certificates per host on
// first use, cached and short-lived.
//
// It leaves out everything on the wire: terminating TLS, reading
// requests and talking to origins belong to the interception data path.
//
// Built on crypto/x509 directly rather than goproxy's signer: goproxy
// mints leaves with the CA's key type (RSA by default, tens of
// milliseconds per leaf), cannot write name constraints, and comes with
// a MITM loop and Transport (TLS verification off) that egress must not
// use (issue 20).
package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// Lifetimes.
const (
	// CALifetime is how long a CA made by Init is valid.
	CALifetime = 10 * 365 * 24 * time.Hour
	// LeafLifetime is how long a minted leaf is valid; a cached leaf is
	// minted again once less than LeafRenew of it is left.
	LeafLifetime = 24 * time.Hour
	LeafRenew    = time.Hour
	// backdate covers clients whose clock is a little behind.
	backdate = time.Hour
	// MaxCached bounds the leaf cache (leaves of either key type); past
	// it, the cache is emptied and leaves are minted again as hosts are
	// met.
	MaxCached = 10000
)

// KeyType is the key type of a leaf: every leaf is signed by the CA's
// key, whatever its own.
type KeyType uint8

const (
	// P256 leaves (ECDSA) are what every client accepts: browsers and
	// older OpenSSL builds offer no Ed25519.
	P256 KeyType = iota
	// Ed25519 leaves cost the server less per handshake than P-256 (the
	// CertificateVerify or ServerKeyExchange signature); presented to
	// the clients that accept one (LeafFor).
	Ed25519
)

func (k KeyType) String() string {
	if k == Ed25519 {
		return "Ed25519"
	}
	return "ECDSA P-256"
}

// leafID is a key of the leaf cache.
type leafID struct {
	name string
	key  KeyType
}

// ErrKeyReadable is LoadCA's error for a private key anyone can read.
var ErrKeyReadable = errors.New("the CA key is readable by anyone")

// ErrOutsideConstraints is Permits' error for a name the CA cannot sign.
var ErrOutsideConstraints = errors.New("outside the CA's name constraints")

// CA is a loaded interception CA. Its methods are safe for concurrent
// use.
type CA struct {
	Cert *x509.Certificate
	key  crypto.Signer

	// leafKey and edKey are the keys of every leaf this CA mints, one
	// per KeyType (held in memory only): a leaf is then a signature, not
	// a key generation.
	leafKey *ecdsa.PrivateKey
	edKey   ed25519.PrivateKey
	// edProbe is edKey as a certificate with no name: what LeafFor asks
	// crypto/tls about before any Ed25519 leaf is minted.
	edProbe *tls.Certificate
	// now is time.Now; tests move it.
	now func() time.Time

	mu     sync.RWMutex
	leaves map[leafID]*tls.Certificate
}

// New makes a CA from a certificate and its private key.
func New(cert *x509.Certificate, key crypto.Signer) (*CA, error) {
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, errors.New("the certificate is not a CA certificate (basic constraints CA:TRUE)")
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("the CA certificate may not sign certificates (key usage lacks certSign)")
	}
	if !publicKeyEqual(cert.PublicKey, key.Public()) {
		return nil, errors.New("the key does not belong to the certificate")
	}
	lk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("leaf key: %w", err)
	}
	epub, ek, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("leaf key: %w", err)
	}
	return &CA{
		Cert: cert, key: key, leafKey: lk, edKey: ek, now: time.Now,
		edProbe: &tls.Certificate{PrivateKey: ek, Leaf: &x509.Certificate{PublicKey: epub, PublicKeyAlgorithm: x509.Ed25519}},
		leaves:  map[leafID]*tls.Certificate{},
	}, nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// LoadCA reads a CA certificate and key (PEM). A key file anyone may read
// is refused (ErrKeyReadable); a group-readable one is fine: Kubernetes
// mounts secrets 0640 with an fsGroup.
func LoadCA(certFile, keyFile string) (*CA, error) {
	fi, err := os.Stat(keyFile)
	if err != nil {
		return nil, fmt.Errorf("ca_key: %w", err)
	}
	if fi.Mode().Perm()&0o004 != 0 {
		return nil, fmt.Errorf("ca_key %s (mode %04o): %w: chmod o-r %s (group-readable is fine)", keyFile, fi.Mode().Perm(), ErrKeyReadable, keyFile)
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("ca_cert: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("ca_key: %w", err)
	}
	cert, err := ParseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("ca_cert %s: %w", certFile, err)
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("ca_key %s: %w", keyFile, err)
	}
	ca, err := New(cert, key)
	if err != nil {
		return nil, fmt.Errorf("ca_cert %s: %w", certFile, err)
	}
	return ca, nil
}

// ParseCert reads the first CERTIFICATE block of PEM data.
func ParseCert(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM CERTIFICATE block")
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}

// CertificatePEM returns the CERTIFICATE blocks of PEM data, re-encoded,
// and nothing else: no private key, no other block, no text between
// blocks. Used where a file a user named is copied somewhere others can
// read (the CA bundle of egress run).
func CertificatePEM(data []byte) []byte {
	var out []byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		if b.Type == "CERTIFICATE" {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.Bytes})...)
		}
	}
}

// ParseKey reads a private key: PKCS#8, SEC 1 (EC) or PKCS#1 (RSA) PEM.
func ParseKey(data []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM private key block")
		}
		var k any
		var err error
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported key type %T", k)
		}
		switch s.(type) {
		case *ecdsa.PrivateKey, *rsa.PrivateKey:
		default:
			// Ed25519 CAs are not understood by most TLS clients.
			return nil, fmt.Errorf("unsupported key type %T: use ECDSA or RSA", s)
		}
		return s, nil
	}
}

// Options are what Create puts in a new CA.
type Options struct {
	// Names, when not empty, name-constrain the CA to these DNS names and
	// their subdomains (RFC 5280 §4.2.1.10), and exclude every IP range,
	// so that a leaked key mints nothing else. Empty: unconstrained.
	Names []string
	// Lifetime of the CA; 0 means CALifetime.
	Lifetime time.Duration
	// CommonName of the CA; "" means "egress interception CA".
	CommonName string
}

// Create makes a new ECDSA P-256 CA and returns it with its certificate
// and key in PEM.
func Create(o Options) (ca *CA, certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	if o.Lifetime == 0 {
		o.Lifetime = CALifetime
	}
	if o.CommonName == "" {
		o.CommonName = "egress interception CA"
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: o.CommonName, Organization: []string{"egress"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(o.Lifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	if len(o.Names) > 0 {
		for _, n := range o.Names {
			if err := checkConstraintName(n); err != nil {
				return nil, nil, nil, err
			}
		}
		// RFC 5280 §4.2.1.10: name constraints MUST be critical.
		tmpl.PermittedDNSDomainsCritical = true
		tmpl.PermittedDNSDomains = append([]string(nil), o.Names...)
		tmpl.ExcludedIPRanges = allIPs()
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	ca, err = New(cert, key)
	if err != nil {
		return nil, nil, nil, err
	}
	return ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// allIPs is every IPv4 and IPv6 address: 0.0.0.0/0 and ::/0.
func allIPs() []*net.IPNet {
	return []*net.IPNet{
		{IP: make([]byte, 4), Mask: make([]byte, 4)},
		{IP: make([]byte, 16), Mask: make([]byte, 16)},
	}
}

func checkConstraintName(n string) error {
	if n == "" || strings.ContainsAny(n, "* /:") || strings.HasPrefix(n, ".") || strings.HasSuffix(n, ".") {
		return fmt.Errorf("name constraint %q: want a DNS name such as api.vendor.example", n)
	}
	return nil
}

// Init writes a new CA to dir/ca.crt (mode 0644: a certificate is
// public, and clients running as other users must read it) and dir/ca.key
// (mode 0600); the directory is made 0755 if missing, for the same
// clients. It refuses to overwrite either file.
func Init(dir string, o Options) (certFile, keyFile string, err error) {
	certFile, keyFile = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	for _, f := range []string{certFile, keyFile} {
		if _, err := os.Lstat(f); err == nil {
			return "", "", fmt.Errorf("%s exists: egress ca init never overwrites a CA (remove it first, and the trust in it)", f)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", "", err
		}
	}
	_, certPEM, keyPEM, err := Create(o)
	if err != nil {
		return "", "", err
	}
	_, statErr := os.Stat(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	if errors.Is(statErr, fs.ErrNotExist) {
		// Made here: readable by the users whose clients must trust
		// ca.crt, whatever the umask (a directory the user gave keeps its
		// mode).
		if err := os.Chmod(dir, 0o755); err != nil {
			return "", "", err
		}
	}
	if err := writeNew(keyFile, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	if err := writeNew(certFile, certPEM, 0o644); err != nil {
		os.Remove(keyFile)
		return "", "", err
	}
	return certFile, keyFile, nil
}

// writeNew creates name with mode perm whatever the umask, failing if
// it exists.
func writeNew(name string, data []byte, perm fs.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil { // the umask may have taken bits off
		f.Close()
		os.Remove(name)
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(name)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(name)
		return err
	}
	return nil
}

// ConstraintNames turns the host patterns of a policy's rules with http:
// into the DNS names a CA is constrained to: an exact name as it is
// (RFC 5280 constraints also permit its subdomains), a wildcard pattern
// as the fixed part after its last '*' ("*.vendor.example" and
// "a.*.vendor.example": vendor.example); names inside another are left
// out. The pattern "*" cannot be constrained: an error.
func ConstraintNames(patterns []string) ([]string, error) {
	var names []string
	for _, p := range patterns {
		if p == "*" {
			return nil, errors.New(`host "*" has http: rules: a CA for every name cannot be name-constrained; leave out --config for an unconstrained CA`)
		}
		if i := strings.LastIndex(p, "*."); i >= 0 {
			p = p[i+2:]
		}
		names = append(names, p)
	}
	var out []string
	for _, n := range names {
		covered := false
		for _, m := range names {
			if m != n && dnsWithin(n, m) {
				covered = true
				break
			}
		}
		if !covered && !contains(out, n) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out, nil
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// dnsWithin reports whether name is the constraint c or below it (RFC
// 5280 §4.2.1.10 for dNSName; a leading '.' means strictly below).
func dnsWithin(name, c string) bool {
	name, c = strings.ToLower(name), strings.ToLower(c)
	if strings.HasPrefix(c, ".") {
		return strings.HasSuffix(name, c)
	}
	return name == c || strings.HasSuffix(name, "."+c)
}

// Permits reports whether the CA can sign for the host pattern or IP
// literal of a rule with http: (nil), or why not (wrapping
// ErrOutsideConstraints). A wildcard pattern needs its fixed part inside
// a permitted name, since every name it matches must be.
func (ca *CA) Permits(pattern string) error {
	c := ca.Cert
	if a, err := netip.ParseAddr(pattern); err == nil {
		for _, r := range c.ExcludedIPRanges {
			if r.Contains(a.AsSlice()) {
				return fmt.Errorf("%s: %w: the CA excludes %s (an IP literal needs a CA of its own, without name constraints)", pattern, ErrOutsideConstraints, r)
			}
		}
		if len(c.PermittedIPRanges) > 0 {
			for _, r := range c.PermittedIPRanges {
				if r.Contains(a.AsSlice()) {
					return nil
				}
			}
			return fmt.Errorf("%s: %w", pattern, ErrOutsideConstraints)
		}
		return nil
	}
	if pattern == "*" {
		if len(c.PermittedDNSDomains) > 0 || len(c.ExcludedDNSDomains) > 0 {
			return fmt.Errorf(`host "*": %w: a constrained CA cannot sign for every name`, ErrOutsideConstraints)
		}
		return nil
	}
	fixed, wildcard := pattern, false
	if i := strings.LastIndex(pattern, "*."); i >= 0 {
		fixed, wildcard = pattern[i+2:], true
	}
	for _, e := range c.ExcludedDNSDomains {
		// An excluded name inside the pattern's names, or the pattern's
		// names inside an excluded one.
		if dnsWithin(fixed, e) || wildcard && dnsWithin(strings.TrimPrefix(e, "."), fixed) {
			return fmt.Errorf("%s: %w: the CA excludes %s", pattern, ErrOutsideConstraints, e)
		}
	}
	if len(c.PermittedDNSDomains) == 0 {
		return nil
	}
	for _, p := range c.PermittedDNSDomains {
		// ".vendor.example" permits the names below vendor.example only:
		// every name "*.vendor.example" matches.
		if dnsWithin(fixed, p) || wildcard && strings.HasPrefix(p, ".") && fixed == p[1:] {
			return nil
		}
	}
	return fmt.Errorf("%s: %w (it permits %s); make a CA for this policy with egress ca init DIR --config POLICY", pattern, ErrOutsideConstraints, strings.Join(c.PermittedDNSDomains, ", "))
}

// Leaf returns the P-256 certificate egress presents for name (a DNS
// name in normal form, or an IP literal): LeafOf(name, P256).
func (ca *CA) Leaf(name string) (*tls.Certificate, error) {
	return ca.LeafOf(name, P256)
}

// LeafFor returns the certificate egress presents for name to the client
// of the ClientHello h: an Ed25519 leaf when crypto/tls says the client
// can use one (ClientHelloInfo.SupportsCertificate: its
// signature_algorithms and TLS version), the P-256 leaf otherwise.
func (ca *CA) LeafFor(h *tls.ClientHelloInfo, name string) (*tls.Certificate, error) {
	return ca.LeafOf(name, ca.KeyFor(h))
}

// KeyFor is the key type of the leaf LeafFor presents to the client of
// h. It asks crypto/tls about a certificate of the Ed25519 leaf key with
// no name, with the hello's server name left out: the name is the same
// for either leaf (and checked before, by the caller), so the answer
// depends on the key alone, and no leaf is minted for a client that
// will not get it.
func (ca *CA) KeyFor(h *tls.ClientHelloInfo) KeyType {
	hh := *h
	hh.ServerName = ""
	if hh.SupportsCertificate(ca.edProbe) == nil {
		return Ed25519
	}
	return P256
}

// LeafOf returns the certificate of key type k for name (a DNS name in
// normal form, or an IP literal), minting it on first use. Leaves are
// cached by name and key type and minted again when close to expiry.
func (ca *CA) LeafOf(name string, k KeyType) (*tls.Certificate, error) {
	now := ca.now()
	id := leafID{name, k}
	ca.mu.RLock()
	c := ca.leaves[id]
	ca.mu.RUnlock()
	if c != nil && now.Add(LeafRenew).Before(c.Leaf.NotAfter) {
		return c, nil
	}
	c, err := ca.mint(name, k, now)
	if err != nil {
		return nil, err
	}
	ca.mu.Lock()
	if len(ca.leaves) >= MaxCached {
		clear(ca.leaves)
	}
	ca.leaves[id] = c
	ca.mu.Unlock()
	return c, nil
}

// mint signs a leaf of key type k for name.
func (ca *CA) mint(name string, k KeyType, now time.Time) (*tls.Certificate, error) {
	if name == "" {
		return nil, errors.New("mint a leaf: no name")
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(LeafLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	if a, err := netip.ParseAddr(name); err == nil {
		tmpl.IPAddresses = []net.IP{a.AsSlice()}
	} else {
		tmpl.DNSNames = []string{name}
	}
	var key crypto.Signer = ca.leafKey
	if k == Ed25519 {
		key = ca.edKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("mint a leaf for %s: %w", name, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der, ca.Cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// serial is a random 128-bit serial number (CA/B Forum: at least 64
// bits of randomness).
func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic("certs: " + err.Error()) // crypto/rand never fails on Linux
	}
	return n.Add(n, big.NewInt(1))
}
