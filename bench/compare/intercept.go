package main

// The interception measure (issue 20): HTTPS requests that the proxy
// terminates (TLS on both sides, a leaf certificate minted from a CA the
// client trusts), against squid-openssl with `ssl_bump bump all` and
// mitmproxy, on loopback. One CA, made here, signs every proxy's leaves
// (ECDSA P-256: squid and mitmproxy sign their leaves with the CA's own
// key; egress presents an Ed25519 leaf to a client whose ClientHello
// accepts one, as this Go client's does and the plugin runtime's OpenSSL
// clients' do, P-256 otherwise); another signs the origin's certificate, and each proxy
// trusts it for upstream (egress tls.upstream_ca, squid
// tls_outgoing_options cafile=, mitmproxy ssl_verify_upstream_trusted_ca).
// The client asks for https://127.0.0.1:PORT: an IP literal, so no proxy
// ever resolves a name.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// interceptPath is the path the client asks for and the http: rule allows.
const interceptPath = "/v1/license"

// benchPKI holds the files of the bench's two CAs, under dir.
type benchPKI struct {
	caCert, caKey, caPEM string // the interception CA: cert, key (0600), both in one file (squid, mitmproxy)
	originCA             string // the CA of the origin's certificate
	pool                 *x509.CertPool
	originPool           *x509.CertPool
	originTLS            *tls.Config
}

func newBenchPKI(dir string) *benchPKI {
	p := &benchPKI{
		caCert: filepath.Join(dir, "intercept-ca.crt"), caKey: filepath.Join(dir, "intercept-ca.key"),
		caPEM: filepath.Join(dir, "intercept-ca.pem"), originCA: filepath.Join(dir, "origin-ca.crt"),
	}
	caDER, caKey := makeCA("egress bench interception CA")
	keyDER, err := x509.MarshalPKCS8PrivateKey(caKey)
	check(err)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	check(os.WriteFile(p.caCert, certPEM, 0o644))
	check(os.WriteFile(p.caKey, keyPEM, 0o600))
	// squid (running as user proxy) reads the key from this one: a
	// throwaway CA in the bench's temporary directory.
	check(os.WriteFile(p.caPEM, append(append([]byte{}, keyPEM...), certPEM...), 0o644))
	ca, err := x509.ParseCertificate(caDER)
	check(err)
	p.pool = x509.NewCertPool()
	p.pool.AddCert(ca)

	oDER, oKey := makeCA("egress bench origin CA")
	oCA, err := x509.ParseCertificate(oDER)
	check(err)
	check(os.WriteFile(p.originCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: oDER}), 0o644))
	p.originPool = x509.NewCertPool()
	p.originPool.AddCert(oCA)
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	check(err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, tmpl, oCA, &leafKey.PublicKey, oKey)
	check(err)
	p.originTLS = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER, oDER}, PrivateKey: leafKey}},
		NextProtos:   []string{"http/1.1"},
	}
	return p
}

func makeCA(name string) ([]byte, *ecdsa.PrivateKey) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	check(err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(7 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	check(err)
	return der, key
}

// httpsOrigin serves "ok" over TLS (HTTP/1.1 only, keep-alive) on
// loopback and counts the connections open.
func httpsOrigin(cfg *tls.Config) (string, *atomic.Int64) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	open := &atomic.Int64{}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "2")
			io.WriteString(w, "ok")
		}),
		ConnState: func(c net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				open.Add(1)
			case http.StateClosed, http.StateHijacked:
				open.Add(-1)
			}
		},
		ErrorLog: nil,
	}
	go srv.Serve(tls.NewListener(l, cfg))
	return l.Addr().String(), open
}

// egressInterceptConfig intercepts the origin's port with an http: rule
// allowing GET interceptPath; every other port of 127.0.0.1 is a tunnel,
// as in egressConfig.
const egressInterceptConfig = `version: 1
default: deny
tls:
  ca_cert: %s
  ca_key: %s
  upstream_ca: %s
allow:
  - cidr: 127.0.0.1/32
    ports: [%s]
    http:
      - methods: [GET]
        paths: [%q]
  - cidr: 127.0.0.1/32
limits:
  max_tunnels: 100000
log:
  allowed: %t
  file: %s
`

func startEgressIntercept(bin, dir string, pki *benchPKI, originPort string, logAllowed bool) *subject {
	name := "egress-intercept"
	cfg := filepath.Join(configDir(dir), name+".yaml")
	logFile := filepath.Join(dir, name+".log")
	check(os.WriteFile(cfg, []byte(fmt.Sprintf(egressInterceptConfig, pki.caCert, pki.caKey, pki.originCA, originPort, interceptPath, logAllowed, logFile)), 0o644))
	addr := freeAddr()
	s := &subject{name: "egress", kind: "egress", addr: addr, log: logFile}
	s.start(exec.Command(bin, "serve", "--config", cfg, "--listen", addr, "--admin", ""), filepath.Join(dir, name+".stderr"))
	return s
}

// startSquidBump starts squid with bench/peers/squid-bump.conf: ssl_bump
// bump all, leaves signed by the bench's CA, generated by
// security_file_certgen into a database made here and cached in memory.
func startSquidBump(bin, peers, dir string, pki *benchPKI) *subject {
	certgen := "/usr/lib/squid/security_file_certgen"
	db := filepath.Join(dir, "squid-ssl_db")
	out, err := exec.Command(certgen, "-c", "-s", db, "-M", "16MB").CombinedOutput()
	if err != nil {
		fail("%s -c: %v\n%s", certgen, err, out)
	}
	// squid drops privileges to the proxy user, whose helpers write there.
	if out, err := exec.Command("chown", "-R", "proxy:proxy", db).CombinedOutput(); err != nil {
		fail("chown %s: %v\n%s", db, err, out)
	}
	addr := freeAddr()
	cfg := fillTemplate(filepath.Join(peers, "squid-bump.conf"), filepath.Join(dir, "squid-bump.conf"), addr, dir)
	s := &subject{name: "squid-bump", kind: "squid", addr: addr, log: filepath.Join(dir, "squid-bump-access.log")}
	s.start(exec.Command(bin, "-N", "-f", cfg), filepath.Join(dir, "squid-bump.stderr"))
	return s
}

// startMitmproxy starts mitmdump on loopback with the bench's CA in its
// confdir (mitmproxy-ca.pem: key and certificate) and the origin's CA as
// its upstream trust; it prints one line per flow (flow_detail 1, its
// default) to a file, its access log.
func startMitmproxy(bin, dir string, pki *benchPKI) *subject {
	conf := filepath.Join(dir, "mitmproxy")
	check(os.MkdirAll(conf, 0o700))
	b, err := os.ReadFile(pki.caPEM)
	check(err)
	check(os.WriteFile(filepath.Join(conf, "mitmproxy-ca.pem"), b, 0o600))
	addr := freeAddr()
	host, port, _ := net.SplitHostPort(addr)
	log := filepath.Join(dir, "mitmproxy.log")
	s := &subject{name: "mitmproxy", kind: "mitmproxy", addr: addr, log: log}
	cmd := exec.Command(bin, "--listen-host", host, "--listen-port", port,
		"--set", "confdir="+conf, "--set", "ssl_verify_upstream_trusted_ca="+pki.originCA,
		"--set", "flow_detail=1")
	cmd.Env = append(os.Environ(), "HOME="+conf) // nothing of the user's ~/.mitmproxy
	s.start(cmd, log)
	return s
}

// tlsConn is one intercepted keep-alive connection of the client.
type tlsConn struct {
	c  *tls.Conn
	br *bufio.Reader
	// connected is how long the CONNECT took to be answered (the TCP
	// connection alone, direct), handshake how long TLS took after it.
	connected, handshake time.Duration
}

// phases adds up, for a new-connection run, where a connection's time
// went as the client sees it: CONNECT answered, TLS handshake, GET
// answered.
type phases struct{ n, connect, handshake, get atomic.Int64 }

func (p *phases) add(t *tlsConn, get time.Duration) {
	p.n.Add(1)
	p.connect.Add(int64(t.connected))
	p.handshake.Add(int64(t.handshake))
	p.get.Add(int64(get))
}

// means are the mean µs of each phase.
func (p *phases) means() [3]float64 {
	n := float64(max(p.n.Load(), 1)) * 1e3
	return [3]float64{float64(p.connect.Load()) / n, float64(p.handshake.Load()) / n, float64(p.get.Load()) / n}
}

// opensslGroups is what the plugin runtime's TLS clients offer: Python 2.7
// and 3, curl and squid's own client here link OpenSSL 3.0, whose
// ClientHello offers these groups with a key share for X25519 only (no
// post-quantum hybrid: OpenSSL has it from 3.5). Go's own client offers
// X25519MLKEM768 first, which egress accepts and OpenSSL 3.0 proxies
// cannot: the measure uses the plugins' offer for every subject, and
// measures Go's default offer beside it (pqClient).
var opensslGroups = []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}

// openIntercepted opens a connection to origin through proxy (CONNECT,
// then TLS trusting pool), or directly when proxy is empty. No session
// cache: every connection is a full handshake. The client offers
// opensslGroups, or Go's default groups (X25519MLKEM768 first) when pq.
func openIntercepted(proxy, origin string, pool *x509.CertPool, pq bool) *tlsConn {
	var raw net.Conn
	start := time.Now()
	if proxy == "" {
		raw = mustDial(origin)
	} else {
		raw = connect(proxy, origin)
	}
	connected := time.Since(start)
	// The chain is verified against pool; the name is not: squid's
	// `bump all` (at step 1, before it has seen the origin's certificate)
	// mints a leaf whose only name is the CONNECT host in its CN, no IP
	// SAN, which Go refuses for an IP. The same check for every subject.
	var groups []tls.CurveID
	if !pq {
		groups = opensslGroups
	}
	c := tls.Client(raw, &tls.Config{
		NextProtos:         []string{"http/1.1"},
		CurvePreferences:   groups,
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter})
			return err
		},
	})
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Handshake(); err != nil {
		fail("TLS to %s via %q: %v", origin, proxy, err)
	}
	c.SetDeadline(time.Time{})
	return &tlsConn{c: c, br: bufio.NewReaderSize(c, 4096), connected: connected, handshake: time.Since(start) - connected}
}

// get sends one GET and reads the answer, which must be a 200.
func (t *tlsConn) get(origin string) error {
	if _, err := io.WriteString(t.c, "GET "+interceptPath+" HTTP/1.1\r\nHost: "+origin+"\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(t.br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("status %q", resp.Status)
	}
	return err
}

// interceptResults are the figures of the interception measure.
type interceptResults struct {
	subjects   []string
	rps        map[string][]float64
	rate       map[string][]float64    // new intercepted connections/s
	ratePQ     map[string][]float64    // the same, the client offering X25519MLKEM768 (Go's default)
	cpuPerConn map[string][]float64    // proxy CPU µs per new intercepted connection
	phases     map[string][][3]float64 // per round: mean µs to the CONNECT's answer, of the handshake, to the GET's answer
	loadCPU    map[string][]float64    // per round: CPU µs of bench/compare (client and origin) per new connection
	rateSSL    map[string][]float64    // per round: new intercepted connections/s, the client OpenSSL's (tlsload)
	cpuSSL     map[string][]float64    // per round: proxy CPU µs per new connection, the client OpenSSL's
	loadSSL    map[string][]float64    // per round: tlsload's CPU µs per new connection
	busy       map[string][]float64    // per round: share of the machine's CPU time busy, %
	rssBefore  map[string]int64
	rssAfter   map[string]int64
	conns      int                  // idle intercepted connections for the memory figure
	tunnelRate map[string][]float64 // CONNECT tunnels/s not intercepted: egress today vs egress with an http: rule
	versions   map[string]string
	logLines   map[string]int
	load       [2]string
	origin     string
}

// measureIntercept runs the interception measure: memory per idle
// intercepted connection on fresh processes, then rounds of keep-alive
// requests/s and new connections/s, and (egress only) new CONNECT tunnels
// to a port without http: rules, through the intercepting egress and
// through plain (today's policy, no tls:).
func measureIntercept(o options, dir string, plain *subject, idle *idleServer) *interceptResults {
	pki := newBenchPKI(dir)
	origin, originOpen := httpsOrigin(pki.originTLS)
	_, originPort, _ := net.SplitHostPort(origin)
	ir := &interceptResults{
		rps: map[string][]float64{}, rate: map[string][]float64{}, ratePQ: map[string][]float64{}, cpuPerConn: map[string][]float64{}, phases: map[string][][3]float64{}, loadCPU: map[string][]float64{}, busy: map[string][]float64{},
		rateSSL: map[string][]float64{}, cpuSSL: map[string][]float64{}, loadSSL: map[string][]float64{},
		rssBefore: map[string]int64{}, rssAfter: map[string]int64{}, tunnelRate: map[string][]float64{},
		logLines: map[string]int{}, versions: map[string]string{}, origin: origin,
	}
	ir.load[0] = loadavg()
	subj := []*subject{{name: "direct", kind: "direct"}}
	e := startEgressIntercept(o.egress, dir, pki, originPort, o.logAllowed)
	subj = append(subj, e)
	var procs []*subject
	procs = append(procs, e)
	if o.squid != "" {
		subj = append(subj, startSquidBump(o.squid, o.peers, dir, pki))
		procs = append(procs, subj[len(subj)-1])
	}
	if o.mitmproxy != "" {
		subj = append(subj, startMitmproxy(o.mitmproxy, dir, pki))
		procs = append(procs, subj[len(subj)-1])
		ir.versions["mitmproxy"] = firstLine(o.mitmproxy, "--version")
	}
	defer func() {
		for _, p := range procs {
			p.stop()
			if p.log != "" {
				ir.logLines[p.name] = countLines(p.log)
			}
		}
	}()
	for _, s := range subj {
		ir.subjects = append(ir.subjects, s.name)
	}
	pool := func(s *subject) *x509.CertPool {
		if s.addr == "" {
			return pki.originPool
		}
		return pki.pool
	}
	// one is a new intercepted connection: CONNECT, both handshakes, one
	// request, close.
	one := func(s *subject, pq bool, ph *phases) func() {
		return func() {
			t := openIntercepted(s.addr, origin, pool(s), pq)
			start := time.Now()
			if err := t.get(origin); err != nil {
				fail("GET via %s: %v", s.name, err)
			}
			if ph != nil {
				ph.add(t, time.Since(start))
			}
			t.c.Close()
		}
	}

	// Memory per idle intercepted connection, on the fresh proxies: each
	// connection made one request (so the upstream connection is open
	// too) and stays open, idle, both sides.
	ir.conns = min(o.interceptConns, fdBudget())
	for _, s := range procs {
		one(s, false, nil)() // first use: the leaf minted and cached, lazily built state
		// squid keeps the origin connection in its pool: wait for the
		// count to settle, not for zero.
		settleCount(originOpen, 3*time.Second)
		time.Sleep(500 * time.Millisecond)
		before := rss(s.pid())
		var held []*tlsConn
		for len(held) < ir.conns {
			t := openIntercepted(s.addr, origin, pki.pool, false)
			if err := t.get(origin); err != nil {
				fail("GET via %s: %v", s.name, err)
			}
			held = append(held, t)
		}
		waitCount(originOpen, int64(ir.conns), 20*time.Second)
		time.Sleep(2 * time.Second)
		ir.rssBefore[s.name], ir.rssAfter[s.name] = before, rss(s.pid())
		progress("intercept  memory %-10s RSS %d KiB -> %d KiB with %d idle intercepted connections (origin holds %d): %.1f KiB each",
			s.name, before>>10, ir.rssAfter[s.name]>>10, ir.conns, originOpen.Load(), float64(ir.rssAfter[s.name]-before)/float64(ir.conns)/1024)
		for _, t := range held {
			t.c.Close()
		}
		settleCount(originOpen, 10*time.Second)
	}

	// The CONNECT subjects of the tunnel check: both egress processes.
	var tunnelSubj []*subject
	if plain != nil {
		tunnelSubj = []*subject{plain, e}
	}
	for i := 0; i < o.runs; i++ {
		for j := range subj {
			s := subj[(i+j)%len(subj)]
			v := interceptRPS(s.addr, origin, pool(s), o.conns, o.duration)
			ir.rps[s.name] = append(ir.rps[s.name], v)
			progress("intercept  rps      %-10s %8.0f req/s", s.name, v)
		}
		for j := range subj {
			s := subj[(i+j)%len(subj)]
			before, selfBefore := cpuTime(s), procCPU("self")
			busyBefore, totalBefore := machineBusy()
			start := time.Now()
			var ph phases
			v := perSecond(o.workers, o.rateDuration, one(s, false, &ph))
			ir.phases[s.name] = append(ir.phases[s.name], ph.means())
			if n := float64(ph.n.Load()); n > 0 && selfBefore >= 0 {
				ir.loadCPU[s.name] = append(ir.loadCPU[s.name], (procCPU("self")-selfBefore)/n*1e6)
			}
			if b, t := machineBusy(); t > totalBefore {
				ir.busy[s.name] = append(ir.busy[s.name], 100*(b-busyBefore)/(t-totalBefore))
			}
			if after := cpuTime(s); after >= 0 && before >= 0 && v > 0 {
				ir.cpuPerConn[s.name] = append(ir.cpuPerConn[s.name], (after-before)/(v*time.Since(start).Seconds())*1e6)
			}
			ir.rate[s.name] = append(ir.rate[s.name], v)
			settleCount(originOpen, 3*time.Second)
			progress("intercept  new      %-10s %8.0f connections/s", s.name, v)
		}
		for j := range subj {
			s := subj[(i+j)%len(subj)]
			if o.tlsload == "" || s.kind == "mitmproxy" {
				continue
			}
			before := cpuTime(s)
			v, n, load := opensslRate(o, s, origin, pki)
			if after := cpuTime(s); after >= 0 && before >= 0 {
				ir.cpuSSL[s.name] = append(ir.cpuSSL[s.name], (after-before)/n*1e6)
			}
			ir.rateSSL[s.name] = append(ir.rateSSL[s.name], v)
			ir.loadSSL[s.name] = append(ir.loadSSL[s.name], load)
			settleCount(originOpen, 3*time.Second)
			progress("intercept  new-ssl  %-10s %8.0f connections/s (OpenSSL client, tlsload; its CPU %.0f µs per connection)", s.name, v, load)
		}
		for j := range subj {
			s := subj[(i+j)%len(subj)]
			if s.kind == "mitmproxy" {
				continue // 100 connections/s whatever the client offers
			}
			v := perSecond(o.workers, o.rateDuration, one(s, true, nil))
			ir.ratePQ[s.name] = append(ir.ratePQ[s.name], v)
			settleCount(originOpen, 3*time.Second)
			progress("intercept  new-pq   %-10s %8.0f connections/s (client offers X25519MLKEM768)", s.name, v)
		}
		for j := range tunnelSubj {
			s := tunnelSubj[(i+j)%len(tunnelSubj)]
			name := "egress today"
			if s == e {
				name = "egress with http: rules"
			}
			v := perSecond(o.workers, o.rateDuration, func() { connect(s.addr, idle.addr).Close() })
			idle.waitOpen(0, 10*time.Second)
			ir.tunnelRate[name] = append(ir.tunnelRate[name], v)
			progress("intercept  tunnels  %-24s %8.0f CONNECT tunnels/s (port without http: rules)", name, v)
		}
	}
	ir.load[1] = loadavg()
	return ir
}

// opensslRate runs tlsload (the client OpenSSL's, the plugin runtime's
// TLS library) against s for the measure's workers and duration: new
// intercepted connections/s, the connections made, and tlsload's own CPU
// µs per connection. tlsload bounds each read and write (10 s); the run
// as a whole gets its duration and a minute.
func opensslRate(o options, s *subject, origin string, pki *benchPKI) (rate, conns, cpu float64) {
	proxy, ca := s.addr, pki.caCert
	if proxy == "" {
		proxy, ca = "-", pki.originCA
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.rateDuration+time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, o.tlsload, proxy, origin, ca, interceptPath, strconv.Itoa(o.workers), strconv.FormatFloat(o.rateDuration.Seconds(), 'f', 3, 64)).Output()
	if err != nil {
		fail("tlsload via %s: %v\n%s", s.name, err, out)
	}
	var n, secs, used float64
	if _, err := fmt.Sscan(string(out), &n, &secs, &used); err != nil || n == 0 || secs <= 0 {
		fail("tlsload via %s: %q: %v", s.name, out, err)
	}
	return n / secs, n, used / n * 1e6
}

// interceptRPS runs conns keep-alive intercepted connections for d, each
// sending GETs one after another, and returns requests/s.
func interceptRPS(proxy, origin string, pool *x509.CertPool, conns int, d time.Duration) float64 {
	ts := make([]*tlsConn, conns)
	for i := range ts {
		ts[i] = openIntercepted(proxy, origin, pool, false)
	}
	var n atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	start := time.Now()
	for _, t := range ts {
		wg.Go(func() {
			defer t.c.Close()
			for time.Now().Before(deadline) {
				if err := t.get(origin); err != nil {
					fail("GET via %s: %v", proxy, err)
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

func waitCount(v *atomic.Int64, n int64, d time.Duration) {
	deadline := time.Now().Add(d)
	for v.Load() != n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

// settleCount waits (bounded) until v has not fallen for 100ms: the
// connections a run closed are gone, those a proxy pools stay.
func settleCount(v *atomic.Int64, d time.Duration) {
	deadline := time.Now().Add(d)
	last := v.Load()
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		n := v.Load()
		if n >= last {
			return
		}
		last = n
	}
}

func firstLine(name string, args ...string) string {
	out, _ := exec.Command(name, args...).CombinedOutput()
	line, _, _ := bytesCutLine(out)
	return line
}

func bytesCutLine(b []byte) (string, string, bool) {
	s := string(b)
	for i := range s {
		if s[i] == '\n' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// squidPackage names the Debian package that holds the squid binary
// (squid or squid-openssl), for the report.
func squidPackage(bin string) string {
	path, err := exec.LookPath(bin)
	if err != nil {
		return ""
	}
	if p, err := filepath.EvalSymlinks(path); err == nil {
		path = p
	}
	out, err := exec.Command("dpkg-query", "-S", path).Output()
	if err != nil {
		return ""
	}
	pkg, _, _ := bytesCutLine(out)
	if i := len(pkg) - len(": "+path); i > 0 {
		pkg = pkg[:i]
	}
	if v, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", pkg).Output(); err == nil {
		pkg += " " + string(v)
	}
	return pkg
}

// markdown writes the interception section of BENCHMARKS.md.
func (ir *interceptResults) markdown(w func(string, ...any), o options, squidVersion string) {
	w("\n## Interception (issue 20)\n\n")
	w("TLS terminated by the proxy (`bench/compare/intercept.go`): the client (Go, in bench/compare) sends CONNECT to `%s` (an IP literal: no proxy resolves a name), ", ir.origin)
	w("then TLS trusting the bench's interception CA (ECDSA P-256; squid and mitmproxy sign their leaves with the CA's own key; egress presents Ed25519 leaves to clients that offer ed25519, as this one and OpenSSL 3.0's curl and Python do, P-256 leaves otherwise), then GET `%s`; ", interceptPath)
	w("the origin is a Go HTTPS server on loopback (HTTP/1.1, keep-alive) whose certificate comes from a second bench CA each proxy trusts for upstream. ")
	w("*egress*: `tls.ca_cert`/`ca_key`/`upstream_ca` and an `http:` rule allowing GET `%s` on the origin's port (policy in `egress-intercept.yaml` of the run, text in `egressInterceptConfig`); ", interceptPath)
	w("*squid-bump*: %s with `ssl_bump bump all`, `cert=` the bench CA, leaves cached in memory, `tls_outgoing_options cafile=` the origin CA (`bench/peers/squid-bump.conf`); ", squidVersion)
	if ir.versions["mitmproxy"] != "" {
		w("*mitmproxy*: Debian's mitmdump (%s), `--set confdir=` holding the bench CA, `ssl_verify_upstream_trusted_ca=` the origin CA, one line per flow (`flow_detail=1`) to a file; ", ir.versions["mitmproxy"])
	} else {
		w("mitmproxy was not measured (no `-mitmproxy` binary); ")
	}
	w("*direct*: the client's TLS straight to the origin. Every proxy logs one line per request. ")
	w("No TLS session resumption (the client keeps no session cache): a new connection is a full handshake on both sides; the leaf is cached (one connection made before measuring). ")
	w("The client offers the key exchange groups of the plugin runtime's clients (Python 2.7 and 3, curl: OpenSSL 3.0, a key share for X25519; `opensslGroups`), to every subject; the row marked *Go's default offer* repeats the new-connection runs with the client offering X25519MLKEM768 first, which egress accepts (post-quantum, as a Go client asks for) and squid's OpenSSL 3.0 cannot. ")
	if len(ir.rateSSL["egress"]) > 0 {
		w("*New connections with OpenSSL clients* (the target's row): `bench/compare/tlsload/tlsload.c`, %d processes of one thread each, as the plugin runtime's single-threaded Python processes are, linking the OpenSSL 3.0 they link (its default offer: a key share for X25519; chain verified against the CA, no session cache, no tickets), each making connections one after the other (CONNECT, TLS, GET, close_notify, close); its CPU is its processes' (getrusage). ", o.workers)
	}
	w("%d rounds rotating the order; a figure is the median round. Load average %s at the start of this measure, %s at its end.\n\n", o.runs, ir.load[0], ir.load[1])
	val := func(m map[string][]float64, s string) float64 {
		if len(m[s]) == 0 {
			return math.NaN()
		}
		return median(m[s])
	}
	cols := []string{"egress", "direct", "squid-bump", "mitmproxy"}
	cell := func(v float64, prec int) string {
		if math.IsNaN(v) {
			return "–"
		}
		return strconv.FormatFloat(v, 'f', prec, 64)
	}
	row := func(label string, m map[string][]float64, prec int, target string, checks ...func(map[string]float64) bool) {
		vs := map[string]float64{}
		var cells, ratios []string
		for _, c := range cols {
			vs[c] = val(m, c)
			cells = append(cells, cell(vs[c], prec))
		}
		for _, c := range cols[1:] {
			if r := vs["egress"] / vs[c]; !math.IsNaN(r) {
				ratios = append(ratios, fmtRatio(r)+" "+c)
			}
		}
		met := "–"
		if len(checks) > 0 {
			met = "yes"
			for _, ck := range checks {
				if !ck(vs) {
					met = "**no**"
				}
			}
		}
		w("| %s | %s | %s | %s | %s |\n", label, strings.Join(cells, " | "), strings.Join(ratios, ", "), target, met)
	}
	ratioAtLeast := func(peer string, t float64) func(map[string]float64) bool {
		return func(v map[string]float64) bool { r := v["egress"] / v[peer]; return !math.IsNaN(r) && r >= t }
	}
	ratioAtMost := func(peer string, t float64) func(map[string]float64) bool {
		return func(v map[string]float64) bool { r := v["egress"] / v[peer]; return !math.IsNaN(r) && r <= t }
	}
	w("| figure | egress | direct | squid-bump (squid-openssl, ssl-bump) | mitmproxy | egress ratio | target | met |\n|---|---:|---:|---:|---:|---|---|---|\n")
	rpsChecks := []func(map[string]float64) bool{ratioAtLeast("squid-bump", 2)}
	rpsTarget := "≥ 2x squid ssl-bump, ≥ 10x mitmproxy"
	if len(ir.rps["mitmproxy"]) > 0 {
		rpsChecks = append(rpsChecks, ratioAtLeast("mitmproxy", 10))
	}
	row(fmt.Sprintf("8. intercepted HTTPS keep-alive requests/s (%d connections, %s)", o.conns, o.duration), ir.rps, 0, rpsTarget, rpsChecks...)
	// The target's row is the plugin runtime's client when it was
	// measured: OpenSSL 3.0 in single-threaded processes (Python 2.7 and
	// 3, curl). The Go client's row is the same measure with
	// crypto/tls in bench/compare's process, whose handshake shares the
	// two cores too.
	goTarget, goChecks := "≥ 1.5x squid ssl-bump", []func(map[string]float64) bool{ratioAtLeast("squid-bump", 1.5)}
	if len(ir.rateSSL["egress"]) > 0 {
		row(fmt.Sprintf("8. new intercepted connections/s, OpenSSL 3.0 clients (%d processes of `tlsload`, the plugin runtime's TLS library and process model: CONNECT, TLS both sides, one GET, close)", o.workers), ir.rateSSL, 0, goTarget, goChecks...)
		row("8. proxy CPU per new intercepted connection, OpenSSL clients, µs (user + system, /proc/PID/stat)", ir.cpuSSL, 0, "–")
		row("8. OpenSSL clients' CPU per new intercepted connection, µs (tlsload's processes)", ir.loadSSL, 0, "–")
		goTarget, goChecks = "– (the target's row is the OpenSSL clients')", nil
	}
	row(fmt.Sprintf("8. new intercepted connections/s, Go client (%d goroutines of bench/compare offering OpenSSL's groups: CONNECT, TLS both sides, one GET, close)", o.workers), ir.rate, 0, goTarget, goChecks...)
	row(fmt.Sprintf("8. new intercepted connections/s, Go's default offer (X25519MLKEM768; %d clients)", o.workers), ir.ratePQ, 0, "–")
	row("8. proxy CPU per new intercepted connection, Go client, µs (user + system, /proc/PID/stat)", ir.cpuPerConn, 0, "–")
	row("8. Go client's CPU per new intercepted connection, µs (bench/compare: the client, and the origin's request)", ir.loadCPU, 0, "–")
	row("8. machine CPU busy during the Go client's new-connection runs, % (both cores, every process)", ir.busy, 0, "–")
	if len(ir.phases["egress"]) > 0 {
		// Where a new connection's time goes as the client sees it: a
		// proxy that saturates shows it in its phases (queueing), not
		// only in its rate.
		cell := func(s string) string {
			r := ir.phases[s]
			if len(r) == 0 {
				return "–"
			}
			var c, h, g []float64
			for _, p := range r {
				c, h, g = append(c, p[0]), append(h, p[1]), append(g, p[2])
			}
			return fmt.Sprintf("%.0f / %.0f / %.0f", median(c), median(h), median(g))
		}
		w("| 8. a new intercepted connection as the Go client sees it, mean µs: CONNECT answered / TLS handshake / GET answered (%d clients; direct: TCP connect) | %s | %s | %s | %s | – | – | – |\n",
			o.workers, cell("egress"), cell("direct"), cell("squid-bump"), cell("mitmproxy"))
	}
	per := map[string][]float64{}
	for s, a := range ir.rssAfter {
		per[s] = []float64{float64(a-ir.rssBefore[s]) / float64(ir.conns) / 1024}
	}
	row(fmt.Sprintf("8. resident memory per idle intercepted connection, KiB (%d connections after one request each; RSS after − before)", ir.conns), per, 1, "≤ 0.5x squid's", ratioAtMost("squid-bump", 0.5))
	if t, h := ir.tunnelRate["egress today"], ir.tunnelRate["egress with http: rules"]; len(t) > 0 && len(h) > 0 {
		r := median(h) / median(t)
		met := "yes"
		if r < 0.9 {
			met = "**no**"
		}
		w("| 8. new CONNECT tunnels/s to a port without `http:` rules: egress whose policy has `tls:` and an `http:` rule / egress with today's policy (%d clients) | %.0f / %.0f | – | – | – | %s | within noise (≥ 0.9x) | %s |\n",
			o.workers, median(h), median(t), fmtRatio(r), met)
	}
	w("\n")
	rounds := func(label string, m map[string][]float64, names []string) {
		for _, s := range names {
			if len(m[s]) == 0 {
				continue
			}
			var parts []string
			for _, v := range m[s] {
				parts = append(parts, strconv.FormatFloat(v, 'f', 0, 64))
			}
			w("- %s, %s: %s\n", label, s, strings.Join(parts, ", "))
		}
	}
	rounds("intercepted requests/s", ir.rps, ir.subjects)
	rounds("new intercepted connections/s, OpenSSL clients", ir.rateSSL, ir.subjects)
	rounds("proxy CPU µs per new intercepted connection, OpenSSL clients", ir.cpuSSL, ir.subjects)
	rounds("new intercepted connections/s, Go client", ir.rate, ir.subjects)
	rounds("new intercepted connections/s, Go's default offer", ir.ratePQ, ir.subjects)
	rounds("proxy CPU µs per new intercepted connection, Go client", ir.cpuPerConn, ir.subjects)
	rounds("new CONNECT tunnels/s", ir.tunnelRate, []string{"egress today", "egress with http: rules"})
	for _, s := range ir.subjects {
		if a, ok := ir.rssAfter[s]; ok {
			w("- RSS, %s: %d KiB before, %d KiB with %d idle intercepted connections\n", s, ir.rssBefore[s]>>10, a>>10, ir.conns)
		}
	}
	for _, s := range ir.subjects {
		if n, ok := ir.logLines[s]; ok {
			w("- log lines written by %s: %d\n", s, n)
		}
	}
}
