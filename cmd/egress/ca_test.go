package main

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/egress-proxy/egress/certs"
	"github.com/egress-proxy/egress/policy"
)

const caTestPolicy = `version: 1
default: deny
allow:
  - host: api.vendor.example
    ports: [443]
    http:
      - methods: [GET]
        paths: ["/v1/license"]
  - host: "*.files.example"
    http:
      - paths: ["/public/**"]
  - host: plain.example
`

func TestCAInitConstrainsToThePolicy(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "p.yaml")
	os.WriteFile(pol, []byte(caTestPolicy), 0o644)
	var out, errb bytes.Buffer
	if code := cmdCA([]string{"init", filepath.Join(dir, "ca"), "--config", pol}, &out, &errb); code != exitOK {
		t.Fatalf("ca init = %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "name-constrained to api.vendor.example, files.example") {
		t.Fatalf("output:\n%s", out.String())
	}
	ca, err := certs.LoadCA(filepath.Join(dir, "ca", "ca.crt"), filepath.Join(dir, "ca", "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(ca.Cert.PermittedDNSDomains, " "); got != "api.vendor.example files.example" {
		t.Fatalf("permitted = %s", got)
	}
	// plain.example has no http: rules: the CA cannot sign for it.
	leaf, err := ca.Leaf("plain.example")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := leaf.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "plain.example"}); err == nil {
		t.Fatal("a leaf for a host without http: verifies")
	}
	out.Reset()
	errb.Reset()
	if code := cmdCA([]string{"init", filepath.Join(dir, "ca")}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "never overwrites") {
		t.Fatalf("second ca init = %d: %s", code, errb.String())
	}
}

func TestCAInitRefusesAPolicyWithoutRequestRules(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "p.yaml")
	os.WriteFile(pol, []byte("version: 1\ndefault: deny\nallow:\n  - host: a.example\n"), 0o644)
	var out, errb bytes.Buffer
	if code := cmdCA([]string{"init", filepath.Join(dir, "ca"), "--config", pol}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "nothing to constrain") {
		t.Fatalf("ca init = %d: %s", code, errb.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "ca")); err == nil {
		t.Fatal("ca init wrote a CA anyway")
	}
}

// serve refuses a policy with http: rules at start: without a CA, with a
// CA anyone can read or that cannot sign for an intercepted host, and,
// until the interception data path lands, with any CA (rather than
// tunnel every request).
func TestServeRefusesRequestRules(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, o certs.Options) (string, string) {
		c, k, err := certs.Init(filepath.Join(dir, name), o)
		if err != nil {
			t.Fatal(err)
		}
		return c, k
	}
	goodCert, goodKey := mk("good", certs.Options{Names: []string{"api.vendor.example", "files.example"}})
	narrowCert, narrowKey := mk("narrow", certs.Options{Names: []string{"api.vendor.example"}})
	openCert, openKey := mk("open", certs.Options{})
	os.Chmod(openKey, 0o644)
	for _, tc := range []struct {
		name, tls, want string
	}{
		{"without a CA", "", "need tls.ca_cert and tls.ca_key"},
		{"with a key anyone can read", "tls: {ca_cert: " + openCert + ", ca_key: " + openKey + "}\n", "readable by anyone"},
		{"with a CA that cannot sign for an intercepted host", "tls: {ca_cert: " + narrowCert + ", ca_key: " + narrowKey + "}\n", "*.files.example: outside the CA's name constraints"},
		{"with a fitting CA", "tls: {ca_cert: " + goodCert + ", ca_key: " + goodKey + "}\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pol := filepath.Join(dir, "p.yaml")
			os.WriteFile(pol, []byte(caTestPolicy+tc.tls), 0o644)
			var errb bytes.Buffer
			_, _, _, ok := loadServePolicy(pol, &errb)
			if tc.want == "" {
				if !ok {
					t.Fatalf("refused: %s", errb.String())
				}
				return
			}
			if ok || !strings.Contains(errb.String(), tc.want) {
				t.Fatalf("loadServePolicy ok %v: %s; want refused with %q", ok, errb.String(), tc.want)
			}
		})
	}
	p, err := policy.Load("p.yaml", []byte("version: 1\ndefault: deny\nallow:\n  - host: a.example\n"))
	if err != nil || checkInterception(p) != nil {
		t.Fatalf("a policy without http: rules: %v %v", err, checkInterception(p))
	}
}
