package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"os"
	"sync"

	"github.com/egress-proxy/egress/certs"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/intercept"
	"github.com/rs/zerolog"
)

// interceptTLS is the interception CA and the origins' roots for the
// policy in force: loaded again when a reload names other files or the
// files changed, kept (with its cache of leaves) otherwise. A CA that
// cannot be loaded any more is nil: interception refuses (fail closed).
type interceptTLS struct {
	current func() *policy.Policy
	// fixed, if set, is the CA for every policy (egress run's
	// ephemeral one).
	fixed *certs.CA

	mu    sync.Mutex
	pol   *policy.Policy
	files []byte // what was loaded: a digest of the CA and upstream_ca files
	ca    *certs.CA
	roots *x509.CertPool
}

func (it *interceptTLS) state() (*certs.CA, *x509.CertPool) {
	p := it.current()
	it.mu.Lock()
	defer it.mu.Unlock()
	if p == it.pol {
		return it.ca, it.roots
	}
	it.pol = p
	files := tlsFiles(p.TLS)
	if it.ca != nil && bytes.Equal(files, it.files) {
		return it.ca, it.roots
	}
	it.files = files
	it.ca, it.roots = it.fixed, nil
	if it.ca == nil && p.TLS.CACert != "" {
		it.ca, _ = certs.LoadCA(p.TLS.CACert, p.TLS.CAKey)
	}
	it.roots, _ = upstreamRoots(p.TLS)
	return it.ca, it.roots
}

// tlsFiles is a digest of the files p's tls: names, to tell a changed
// CA from the same one.
func tlsFiles(t policy.TLS) []byte {
	h := sha256.New()
	for _, f := range []string{t.CACert, t.CAKey, t.UpstreamCA} {
		h.Write([]byte(f + "\x00"))
		if f != "" {
			data, _ := os.ReadFile(f)
			h.Write(data)
		}
		h.Write([]byte{0})
	}
	return h.Sum(nil)
}

// upstreamRoots is the system roots plus tls.upstream_ca.
func upstreamRoots(t policy.TLS) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if t.UpstreamCA == "" {
		return pool, nil
	}
	data, err := os.ReadFile(t.UpstreamCA)
	if err != nil {
		return nil, fmt.Errorf("tls.upstream_ca: %w", err)
	}
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("tls.upstream_ca %s: no PEM certificate in it", t.UpstreamCA)
	}
	return pool, nil
}

// newIntercept is the interception data path every listener of the
// process hands intercepted connections to.
func newIntercept(current func() *policy.Policy, fixed *certs.CA, d *dialer.Dialer, events *eventlog.Sink, logger zerolog.Logger) *intercept.Server {
	it := &interceptTLS{current: current, fixed: fixed}
	return &intercept.Server{
		Policy: current,
		CA:     func() *certs.CA { ca, _ := it.state(); return ca },
		Roots:  func() *x509.CertPool { _, r := it.state(); return r },
		Dialer: d,
		Events: events,
		Logger: logger,
	}
}
