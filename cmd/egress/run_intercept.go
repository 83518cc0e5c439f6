package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/egress-proxy/egress/certs"
	"github.com/egress-proxy/egress/policy"
)

// caBundleVars are the variables that point the usual clients at a CA
// bundle: OpenSSL (Python's default context, Ruby, git), requests,
// curl, node (in addition to its own roots).
var caBundleVars = []string{"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"}

// systemBundles are where distributions keep the system roots as one
// PEM file (Go's crypto/x509 reads the same list).
var systemBundles = []string{
	"/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Alpine
	"/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL
	"/etc/ssl/ca-bundle.pem",             // openSUSE
	"/etc/pki/tls/cacert.pem",            // OpenELEC
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
	"/etc/ssl/cert.pem", // Alpine, macOS
}

// runInterception is what egress run sets up for a policy with http:
// request rules (issue 20): the CA (the policy's, or one made for the run
// whose key stays in memory), a bundle of the system roots, the bundles
// the user already named, and the CA, for CMD to trust, and CMD's
// environment without the variables inject: reads.
type runInterception struct {
	ca     *certs.CA // nil: the policy's tls.ca_cert (loaded by the interception path)
	dir    string    // holds the bundle; removed by close
	bundle string
}

// setupRunInterception makes what pol needs and returns CMD's
// environment. For a policy without request rules it returns env as is.
func setupRunInterception(pol *policy.Policy, env []string) (*runInterception, []string, error) {
	ri := &runInterception{}
	// Variables named by from_env are egress's, not CMD's.
	for _, in := range pol.Injects() {
		if in.FromEnv != "" {
			env = withoutEnv(env, in.FromEnv)
		}
	}
	if len(pol.Injects()) > 0 {
		// CMD runs as the same user: without this, it could read the
		// secrets in /proc/EGRESS/environ and /proc/EGRESS/mem.
		if err := makeNonDumpable(); err != nil {
			return nil, nil, fmt.Errorf("make egress non-dumpable: %w", err)
		}
	}
	if !pol.Intercepts() {
		return ri, env, nil
	}
	var caPEM []byte
	if pol.TLS.CACert == "" {
		// A CA for this run: its key is never written anywhere.
		var o certs.Options
		if hosts, cidrs := pol.InterceptedHosts(); len(cidrs) == 0 {
			if names, err := certs.ConstraintNames(hosts); err == nil {
				o.Names = names
			}
		}
		o.CommonName = "egress run CA (ephemeral)"
		ca, cert, _, err := certs.Create(o)
		if err != nil {
			return nil, nil, fmt.Errorf("make a CA for the run: %w", err)
		}
		ri.ca, caPEM = ca, cert
	} else {
		data, err := os.ReadFile(pol.TLS.CACert)
		if err != nil {
			return nil, nil, fmt.Errorf("tls.ca_cert: %w", err)
		}
		caPEM = data
	}
	var b bytes.Buffer
	var seen []string
	add := func(file string) {
		if file == "" || slices.Contains(seen, file) {
			return
		}
		seen = append(seen, file)
		// Only its certificates: the bundle is world-readable, and a
		// variable may name any file (a key, a secret).
		if data, err := os.ReadFile(file); err == nil {
			b.Write(certs.CertificatePEM(data))
		}
	}
	for _, f := range systemBundles {
		if _, err := os.Stat(f); err == nil {
			add(f)
			break
		}
	}
	for _, v := range caBundleVars {
		// A bundle the user set is merged, not replaced.
		add(envValue(env, v))
	}
	b.Write(certs.CertificatePEM(caPEM))
	dir, err := os.MkdirTemp("", "egress-run-ca-")
	if err != nil {
		return nil, nil, err
	}
	ri.dir = dir
	ri.bundle = filepath.Join(dir, "ca-bundle.pem")
	if err := os.WriteFile(ri.bundle, b.Bytes(), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	for _, v := range caBundleVars {
		env = append(withoutEnv(env, v), v+"="+ri.bundle)
	}
	return ri, env, nil
}

func (ri *runInterception) close() {
	if ri != nil && ri.dir != "" {
		os.RemoveAll(ri.dir)
	}
}

// withoutEnv is env without name.
func withoutEnv(env []string, name string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool { return strings.HasPrefix(kv, name+"=") })
}

// envValue is name's value in env, "" when unset.
func envValue(env []string, name string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			return v
		}
	}
	return ""
}
