package peek

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/tlstest"
	"github.com/egress-proxy/egress/policy"
)

// The differential tests of the ClientHello reader (issue 18): every
// framing the generator makes is sent to egress's reader, to a Go
// crypto/tls server and to an OpenSSL 3 server (python3's ssl), and
// whenever a server sees a name, egress must have decided on that name
// or refused. Within MaxHello, egress must also read whatever either
// server reads (it refuses nothing a server takes).

// helloMsg is a ClientHello handshake message taken apart: everything
// before the extensions, and the extensions in order.
type helloMsg struct {
	head []byte // legacy_version .. compression methods
	exts []ext
}

type ext struct {
	typ  uint16
	data []byte
}

// goHelloMsg returns the ClientHello handshake message (header included)
// crypto/tls sends for serverName.
func goHelloMsg(t testing.TB, serverName string) []byte { return tlstest.Msg(t, serverName) }

func splitMsg(t testing.TB, msg []byte) helloMsg {
	body := msg[4:]
	r := reader(body)
	if !r.skip(34) || !r.skipVec(1) || !r.skipVec(2) || !r.skipVec(1) {
		t.Fatal("bad hello")
	}
	m := helloMsg{head: body[:len(body)-len(r)]}
	exts, _ := r.vec(2)
	for len(exts) > 0 {
		typ, _ := exts.u16()
		data, _ := exts.vec(2)
		m.exts = append(m.exts, ext{typ, append([]byte(nil), data...)})
	}
	return m
}

func (m helloMsg) bytes() []byte {
	var exts []byte
	for _, e := range m.exts {
		exts = binary.BigEndian.AppendUint16(exts, e.typ)
		exts = binary.BigEndian.AppendUint16(exts, uint16(len(e.data)))
		exts = append(exts, e.data...)
	}
	body := append(append([]byte(nil), m.head...), byte(len(exts)>>8), byte(len(exts)))
	body = append(body, exts...)
	return append([]byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
}

func (m helloMsg) with(f func([]ext) []ext) helloMsg {
	return helloMsg{head: m.head, exts: f(append([]ext(nil), m.exts...))}
}

// sniExt is a server_name extension's data with the given entries.
func sniExt(entries ...any) []byte {
	var list []byte
	for i := 0; i < len(entries); i += 2 {
		name := entries[i+1].(string)
		list = append(list, byte(entries[i].(int)), byte(len(name)>>8), byte(len(name)))
		list = append(list, name...)
	}
	return append([]byte{byte(len(list) >> 8), byte(len(list))}, list...)
}

func withoutSNI(es []ext) []ext {
	var out []ext
	for _, e := range es {
		if e.typ != extensionServerName {
			out = append(out, e)
		}
	}
	return out
}

// padded puts a padding extension (RFC 7685) of n bytes first, before
// server_name.
func padded(n int) func([]ext) []ext {
	return func(es []ext) []ext { return append([]ext{{21, make([]byte, n)}}, es...) }
}

// framing cuts a handshake message into TLS records.
type framing struct {
	name    string
	records func(msg []byte) []byte
}

func record(typ byte, vers uint16, payload []byte) []byte {
	r := []byte{typ, byte(vers >> 8), byte(vers), byte(len(payload) >> 8), byte(len(payload))}
	return append(r, payload...)
}

// cut frames msg into records of sizes from size (called per record).
func cut(vers uint16, size func(i int) int) func([]byte) []byte {
	return func(msg []byte) []byte {
		var out []byte
		for i := 0; len(msg) > 0; i++ {
			k := min(max(size(i), 1), len(msg))
			out = append(out, record(22, vers, msg[:k])...)
			msg = msg[k:]
		}
		return out
	}
}

func fixed(n int) func(int) int { return func(int) int { return n } }

func before(lead []byte, f func([]byte) []byte) func([]byte) []byte {
	return func(msg []byte) []byte { return append(append([]byte(nil), lead...), f(msg)...) }
}

// between puts extra after the first record of f's framing.
func between(extra []byte, f func([]byte) []byte) func([]byte) []byte {
	return func(msg []byte) []byte {
		recs := f(msg)
		n := 5 + int(binary.BigEndian.Uint16(recs[3:5]))
		return append(append(append([]byte(nil), recs[:n]...), extra...), recs[n:]...)
	}
}

func repeat(b []byte, n int) []byte {
	var out []byte
	for range n {
		out = append(out, b...)
	}
	return out
}

var (
	warningAlert = record(21, 0x0301, []byte{1, 112}) // unrecognized_name, warning
	fatalAlert   = record(21, 0x0301, []byte{2, 40})
	closeNotify  = record(21, 0x0301, []byte{1, 0})
	emptyHS      = record(22, 0x0301, nil)
	ccs          = record(20, 0x0303, []byte{1})
)

func framings() []framing {
	rnd := rand.New(rand.NewPCG(18, 18))
	whole := cut(0x0301, fixed(1<<14))
	return []framing{
		{"one record", whole},
		{"one record of version 0x0303", cut(0x0303, fixed(1<<14))},
		{"one record of version 0x0300", cut(0x0300, fixed(1<<14))},
		{"one record of version 0x0201", cut(0x0201, fixed(1<<14))},
		{"one record of version 0x0001", cut(0x0001, fixed(1<<14))},
		{"one record of version 0x03ff", cut(0x03ff, fixed(1<<14))},
		{"one record of version 0x0fff", cut(0x0fff, fixed(1<<14))},
		{"one record of version 0x1003", cut(0x1003, fixed(1<<14))},
		{"records of 18432 bytes", cut(0x0301, fixed(1<<14+2048))},
		{"records of 18433 bytes", cut(0x0301, fixed(1<<14+2049))},
		{"records of 1 byte", cut(0x0301, fixed(1))},
		{"records of 2 bytes", cut(0x0303, fixed(2))},
		{"records of 3 bytes of version 0x0201", cut(0x0201, fixed(3))},
		{"records of 100 bytes", cut(0x0301, fixed(100))},
		{"records of random sizes", cut(0x0301, func(int) int { return 1 + rnd.IntN(300) })},
		{"a warning alert first", before(warningAlert, whole)},
		{"5 warning alerts first", before(repeat(warningAlert, 5), whole)},
		{"6 warning alerts first", before(repeat(warningAlert, 6), whole)},
		{"16 warning alerts first", before(repeat(warningAlert, 16), whole)},
		{"17 warning alerts first", before(repeat(warningAlert, 17), whole)},
		{"a fatal alert first", before(fatalAlert, whole)},
		{"a close_notify first", before(closeNotify, whole)},
		{"an empty handshake record first", before(emptyHS, whole)},
		{"16 empty handshake records first", before(repeat(emptyHS, 16), whole)},
		{"17 empty handshake records first", before(repeat(emptyHS, 17), whole)},
		{"32 empty handshake records first", before(repeat(emptyHS, 32), whole)},
		{"33 empty handshake records first", before(repeat(emptyHS, 33), whole)},
		{"a change_cipher_spec first", before(ccs, whole)},
		{"a warning alert between records", between(warningAlert, cut(0x0301, fixed(40)))},
		{"an empty record between records", between(emptyHS, cut(0x0301, fixed(40)))},
		{"a change_cipher_spec between records", between(ccs, cut(0x0301, fixed(40)))},
		{"an application_data record first", before(record(23, 0x0303, []byte{0}), whole)},
		{"an empty alert first", before(record(21, 0x0301, nil), whole)},
	}
}

// variant is one ClientHello message to frame.
type variant struct {
	name string
	msg  []byte
}

func variants(t testing.TB) []variant {
	base := splitMsg(t, goHelloMsg(t, "refused.test"))
	sni := func(es []ext) []ext { return es }
	return []variant{
		{"an ordinary hello", base.bytes()},
		{"no server_name", base.with(withoutSNI).bytes()},
		{"server_name last", base.with(func(es []ext) []ext {
			return append(withoutSNI(es), ext{0, sniExt(0, "refused.test")})
		}).bytes()},
		{"extensions reversed", base.with(func(es []ext) []ext {
			for i, j := 0, len(es)-1; i < j; i, j = i+1, j-1 {
				es[i], es[j] = es[j], es[i]
			}
			return es
		}).bytes()},
		{"two server_name extensions", base.with(func(es []ext) []ext {
			return append(es, ext{0, sniExt(0, "other.test")})
		}).bytes()},
		{"two host_name entries", base.with(func(es []ext) []ext {
			return append([]ext{{0, sniExt(0, "allowed.test", 0, "refused.test")}}, withoutSNI(es)...)
		}).bytes()},
		{"a name of another type before host_name", base.with(func(es []ext) []ext {
			return append([]ext{{0, sniExt(1, "allowed.test", 0, "refused.test")}}, withoutSNI(es)...)
		}).bytes()},
		{"an empty server_name list", base.with(func(es []ext) []ext {
			return append([]ext{{0, []byte{0, 0}}}, withoutSNI(es)...)
		}).bytes()},
		{"a name in upper case", base.with(func(es []ext) []ext {
			return append([]ext{{0, sniExt(0, "REFUSED.test")}}, withoutSNI(es)...)
		}).bytes()},
		{"a name with a trailing dot", base.with(func(es []ext) []ext {
			return append([]ext{{0, sniExt(0, "refused.test.")}}, withoutSNI(es)...)
		}).bytes()},
		{"a name with a NUL byte", base.with(func(es []ext) []ext {
			return append([]ext{{0, sniExt(0, "refused.test\x00.allowed.test")}}, withoutSNI(es)...)
		}).bytes()},
		{"a name with a space", base.with(func(es []ext) []ext {
			return append([]ext{{0, sniExt(0, "refused .test")}}, withoutSNI(es)...)
		}).bytes()},
		{"an IP literal name", base.with(func(es []ext) []ext {
			return append([]ext{{0, sniExt(0, "127.0.0.9")}}, withoutSNI(es)...)
		}).bytes()},
		{"an encrypted_client_hello extension", base.with(func(es []ext) []ext {
			return append(es, ext{extensionECH, []byte{0, 0, 1, 0, 1, 7, 0, 0, 0, 0}})
		}).bytes()},
		{"padding to 17 KiB before server_name", base.with(padded(17 << 10)).bytes()},
		{"padding to 60 KiB before server_name", base.with(padded(60 << 10)).bytes()},
		{"padding past 64 KiB before server_name", base.with(padded(64 << 10)).bytes()},
		{"unchanged extensions", base.with(sni).bytes()},
	}
}

// egressSaw is what egress's reader made of the bytes: a name decided
// on ("" for none), or a refusal.
type egressSaw struct {
	name    string
	refused string
	notTLS  bool // decided on the address, as before
}

func egressRead(t testing.TB, wire []byte) egressSaw {
	a, b := loopbackPair(t)
	defer a.Close()
	defer b.Close()
	go func() { b.Write(wire); b.(*net.TCPConn).CloseWrite() }()
	first := make([]byte, 2048)
	n, _ := a.Read(first)
	f := ReadFirst(a, first[:n], 2*time.Second)
	pol, _ := policy.Load("p.yaml", []byte("version: 1\ndefault: allow\n"))
	if !f.TLS {
		return egressSaw{notTLS: true}
	}
	if d := f.Refusal(pol, policy.Decision{}); d != nil {
		return egressSaw{refused: string(d.Reason) + ": " + d.Hint}
	}
	if f.Hello.Name == "" {
		return egressSaw{}
	}
	// What the callers decide on: a name the policy's normalisation
	// takes (an IP literal is decided as the address).
	n2, ip, err := policy.NormalizeHost(f.Hello.Name)
	if err != nil {
		return egressSaw{refused: "invalid_host: " + err.Error()}
	}
	if ip.IsValid() {
		return egressSaw{}
	}
	return egressSaw{name: n2}
}

func loopbackPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	b, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

var errStop = errors.New("stop: the name is all the test wants")

// goServerSaw sends wire to a crypto/tls server and returns the name its
// GetConfigForClient saw, ok false if it never got that far.
func goServerSaw(t testing.TB, wire []byte) (name string, ok bool, why string) {
	a, b := loopbackPair(t)
	defer a.Close()
	defer b.Close()
	go func() { b.Write(wire); b.(*net.TCPConn).CloseWrite(); io.Copy(io.Discard, b) }()
	var mu sync.Mutex
	srv := tls.Server(a, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		mu.Lock()
		name, ok = h.ServerName, true
		mu.Unlock()
		return nil, errStop
	}})
	srv.SetDeadline(time.Now().Add(5 * time.Second))
	err := srv.Handshake()
	mu.Lock()
	defer mu.Unlock()
	return name, ok, fmt.Sprint(err)
}

// opensslServer starts testdata/opensslsni.py and returns its address,
// or "" when python3 is missing (the OpenSSL half is then skipped).
func opensslServer(t *testing.T) string {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Log("python3 not found: the OpenSSL half of the differential test is skipped")
		return ""
	}
	script, _ := filepath.Abs("testdata/opensslsni.py")
	cmd := exec.Command(py, script)
	cmd.Stderr = os.Stderr
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Logf("python3: %v: the OpenSSL half of the differential test is skipped", err)
		return ""
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("opensslsni.py: %v", err)
	}
	return "127.0.0.1:" + strings.TrimSpace(line)
}

// opensslSaw sends wire to the OpenSSL server and returns the name its
// sni_callback saw, ok false if it never ran.
func opensslSaw(t testing.TB, addr string, wire []byte) (name string, ok bool, why string) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	go func() { c.Write(wire); c.(*net.TCPConn).CloseWrite() }()
	b, _ := io.ReadAll(c)
	line := strings.TrimSpace(string(b))
	switch {
	case strings.HasPrefix(line, "SNI "):
		return strings.TrimPrefix(line, "SNI "), true, ""
	case line == "NOSNI":
		return "", true, ""
	}
	return "", false, line
}

func TestHelloDifferential(t *testing.T) {
	ossl := opensslServer(t)
	for _, v := range variants(t) {
		for _, fr := range framings() {
			wire := fr.records(v.msg)
			t.Run(v.name+", "+fr.name, func(t *testing.T) {
				t.Parallel()
				eg := egressRead(t, wire)
				gname, gok, gwhy := goServerSaw(t, wire)
				oname, ook, owhy := "", false, "skipped: no python3"
				if ossl != "" {
					oname, ook, owhy = opensslSaw(t, ossl, wire)
				}
				t.Logf("egress %+v; go %v %q (%s); openssl %v %q (%s)", eg, gok, gname, gwhy, ook, oname, owhy)
				for _, s := range []struct {
					server string
					ok     bool
					name   string
				}{{"crypto/tls", gok, gname}, {"OpenSSL", ook, oname}} {
					if !s.ok {
						continue
					}
					// The safety property: a server that saw a name saw
					// the one egress decided on, or egress refused.
					want, ip, err := policy.NormalizeHost(s.name)
					if s.name != "" && err == nil && !ip.IsValid() && eg.refused == "" && eg.name != want {
						t.Errorf("%s saw %q, egress decided on %q without refusing", s.server, s.name, eg.name)
					}
					if s.name != "" && err != nil && eg.refused == "" {
						t.Errorf("%s saw %q, which is no host name, egress did not refuse (%+v)", s.server, s.name, eg)
					}
					// Completeness: within the bound, a hello a server reads
					// for a host name (or none) egress reads too (no false
					// tls_unreadable).
					if (s.name == "" || err == nil) && len(v.msg) <= MaxHello && len(wire) <= maxHelloWire && strings.HasPrefix(eg.refused, string(policy.ReasonTLSUnreadable)) {
						t.Errorf("%s read the hello (name %q), egress refused it as unreadable: %s", s.server, s.name, eg.refused)
					}
				}
			})
		}
	}
}
