package peek

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/egress-proxy/egress/policy"
)

func TestReadHello(t *testing.T) {
	hello := clientHello(t, "db.example.com")
	t.Run("a hello sent in pieces with pauses is read whole, every byte kept", func(t *testing.T) {
		a, b := loopbackPair(t)
		defer a.Close()
		defer b.Close()
		wire := splitRecords(hello, 1)
		go func() {
			for i := 0; i < len(wire); i += 500 {
				b.Write(wire[i:min(i+500, len(wire))])
				time.Sleep(5 * time.Millisecond) // a hello trickled in pieces is what is under test
			}
		}()
		first := make([]byte, 1)
		io.ReadFull(a, first)
		f := ReadFirst(a, first, 5*time.Second)
		if f.Err != nil || f.Hello.Name != "db.example.com" || !bytes.Equal(f.Bytes, wire) {
			t.Fatalf("got %+v, %v (%d of %d bytes)", f.Hello, f.Err, len(f.Bytes), len(wire))
		}
	})
	t.Run("a hello not complete within the time is unreadable, and says what was seen", func(t *testing.T) {
		a, b := loopbackPair(t)
		defer a.Close()
		defer b.Close()
		b.Write(hello[:1])
		first := make([]byte, 1)
		io.ReadFull(a, first)
		b.Write(hello[1:100])
		start := time.Now()
		f := ReadFirst(a, first, 200*time.Millisecond)
		var ue *UnreadableError
		if !errors.As(f.Err, &ue) || ue.Bytes != 100 || !bytes.Equal(f.Bytes, hello[:100]) {
			t.Fatalf("got %v, %d bytes", f.Err, len(f.Bytes))
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Fatalf("took %s", el)
		}
		t.Log(f.Err)
	})
	t.Run("a hello over the bound is unreadable before it is all sent", func(t *testing.T) {
		a, b := loopbackPair(t)
		defer a.Close()
		defer b.Close()
		big := splitMsg(t, goHelloMsg(t, "x.example")).with(padded(MaxHello)).bytes()
		wire := cut(0x0301, fixed(1<<14))(big)
		go func() { b.Write(wire) }()
		first := make([]byte, 1)
		io.ReadFull(a, first)
		f := ReadFirst(a, first, 5*time.Second)
		var ue *UnreadableError
		if !errors.As(f.Err, &ue) || len(f.Bytes) >= len(wire) {
			t.Fatalf("got %v after %d bytes", f.Err, len(f.Bytes))
		}
	})
	t.Run("bytes that are no TLS record are not read further", func(t *testing.T) {
		a, b := loopbackPair(t)
		defer a.Close()
		defer b.Close()
		f := ReadFirst(a, []byte("SSH-2.0-x\r\n"), time.Second)
		if f.TLS || f.Err != nil || string(f.Bytes) != "SSH-2.0-x\r\n" {
			t.Fatalf("got %+v", f)
		}
	})
}

func TestParseHello(t *testing.T) {
	base := splitMsg(t, goHelloMsg(t, "a.example"))
	for _, tt := range []struct {
		name     string
		wire     []byte
		wantName string
		wantECH  bool
		wantErr  bool
	}{
		{"an ordinary hello", cut(0x0301, fixed(1<<14))(base.bytes()), "a.example", false, false},
		{"records of one byte of version 0x0201", cut(0x0201, fixed(1))(base.bytes()), "a.example", false, false},
		{"after a warning alert and an empty record", before(append(warningAlert, emptyHS...), cut(0x0303, fixed(7)))(base.bytes()), "a.example", false, false},
		{"with ECH", cut(0x0301, fixed(1<<14))(base.with(func(es []ext) []ext { return append(es, ext{extensionECH, []byte{0}}) }).bytes()), "a.example", true, false},
		{"two server_name extensions", cut(0x0301, fixed(1<<14))(base.with(func(es []ext) []ext { return append(es, ext{0, sniExt(0, "b.example")}) }).bytes()), "", false, true},
		{"two host_name entries", cut(0x0301, fixed(1<<14))(base.with(func(es []ext) []ext {
			return append(withoutSNI(es), ext{0, sniExt(0, "b.example", 0, "a.example")})
		}).bytes()), "", false, true},
		{"a fatal alert first", before(fatalAlert, cut(0x0301, fixed(1<<14)))(base.bytes()), "", false, true},
		{"a handshake message that is not a ClientHello", record(22, 0x0303, []byte{2, 0, 0, 0}), "", false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ParseHello(tt.wire)
			if h.Name != tt.wantName || h.ECH != tt.wantECH || (err != nil) != tt.wantErr {
				t.Fatalf("got %+v, %v", h, err)
			}
		})
	}
}

func TestRefusal(t *testing.T) {
	msg := splitMsg(t, goHelloMsg(t, "a.example")).with(func(es []ext) []ext { return append(es, ext{extensionECH, []byte{0}}) }).bytes()
	ech := First{TLS: true, Bytes: cut(0x0301, fixed(1<<14))(msg)}
	ech.Hello, ech.Err = ParseHello(ech.Bytes)
	refuse, _ := policy.Load("p.yaml", []byte("version: 1\ndefault: allow\ndeny:\n  - host: paste.example\n"))
	pass, _ := policy.Load("p.yaml", []byte("version: 1\ndefault: allow\ndeny:\n  - host: paste.example\ntls:\n  ech: pass\n"))
	addressOnly, _ := policy.Load("p.yaml", []byte("version: 1\ndefault: allow\ndeny:\n  - cidr: 192.0.2.0/24\n"))
	clientHost, _ := policy.Load("p.yaml", []byte("version: 1\ndefault: allow\nclients:\n  - name: plugins\n    sources: [10.0.0.0/8]\n    default: deny\n    allow:\n      - host: api.example\n"))
	for _, tt := range []struct {
		name string
		f    First
		pol  *policy.Policy
		want policy.Reason
	}{
		{"ECH is refused by default where a host rule decides on names", ech, refuse, policy.ReasonTLSECH},
		{"ECH is refused where only a clients: entry has a host rule", ech, clientHost, policy.ReasonTLSECH},
		{"ECH changes nothing where every decision is on the address", ech, addressOnly, ""},
		{"ECH passes with tls.ech: pass", ech, pass, ""},
		{"unreadable TLS is refused whatever the policy", First{TLS: true, Err: &UnreadableError{Why: "test"}}, pass, policy.ReasonTLSUnreadable},
		{"bytes that are not TLS are not refused here", First{Bytes: []byte("GET /")}, refuse, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.f.Refusal(tt.pol, policy.Decision{})
			if (d == nil) != (tt.want == "") || (d != nil && (d.Reason != tt.want || !d.Denied())) {
				t.Fatalf("got %+v, want %q", d, tt.want)
			}
		})
	}
}

// FuzzClientHello holds the reader to crypto/tls: whatever bytes a Go
// server takes a ClientHello from, egress read the same name or
// refused; and the incremental reader agrees with a one-shot read.
// Seeds: testdata/fuzz/FuzzClientHello (the differential generator's
// framings) and the ones below.
func FuzzClientHello(f *testing.F) {
	base := splitMsg(f, goHelloMsg(f, "refused.test"))
	f.Add(cut(0x0301, fixed(1<<14))(base.bytes()))
	f.Add(cut(0x0201, fixed(1))(base.bytes()))
	f.Add(before(append(warningAlert, emptyHS...), cut(0x0303, fixed(50)))(base.bytes()))
	f.Add(cut(0x0301, fixed(1<<14))(base.with(func(es []ext) []ext { return append(es, ext{0, sniExt(0, "b.example")}) }).bytes()))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHello(b)
		var s helloScan
		var h2 Hello
		st := scanMore
		for i := 1; i <= len(b) && st == scanMore; i++ { // byte by byte
			h2, st, _ = s.next(b[:i])
		}
		if (err == nil) != (st == scanDone) || h2 != h {
			t.Fatalf("one-shot %+v %v, incremental %+v %d", h, err, h2, st)
		}
		if len(b) > 1<<16 {
			return
		}
		name, seen := goServerName(b)
		if !seen || name == "" {
			return
		}
		if err == nil && h.Name == name {
			return
		}
		if errors.Is(err, errNotTLS) || (err == nil && h.Name != name) {
			t.Fatalf("crypto/tls read %q, egress %+v, %v", name, h, err)
		}
	})
}

// goServerName runs a crypto/tls server handshake over b (no socket)
// and returns the name GetConfigForClient saw.
func goServerName(b []byte) (name string, seen bool) {
	c := &replayConn{r: bytes.NewReader(b)}
	tls.Server(c, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		name, seen = h.ServerName, true
		return nil, errStop
	}}).Handshake()
	return name, seen
}

// replayConn is a net.Conn that reads b and discards writes.
type replayConn struct {
	net.Conn
	r *bytes.Reader
}

func (c *replayConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *replayConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *replayConn) Close() error                     { return nil }
func (c *replayConn) SetDeadline(time.Time) error      { return nil }
func (c *replayConn) SetReadDeadline(time.Time) error  { return nil }
func (c *replayConn) SetWriteDeadline(time.Time) error { return nil }
func (c *replayConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *replayConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }

// BenchmarkHello is the reader on an ordinary crypto/tls ClientHello.
func BenchmarkHello(b *testing.B) {
	hello := clientHello(b, "api.example.com")
	b.ReportAllocs()
	for b.Loop() {
		if h, err := ParseHello(hello); err != nil || h.Name == "" {
			b.Fatal(h, err)
		}
	}
}

// BenchmarkHelloOld is the reader before issue 18 (From, one buffer).
func BenchmarkHelloFrom(b *testing.B) {
	hello := clientHello(b, "api.example.com")
	b.ReportAllocs()
	for b.Loop() {
		if name, _, _ := From(hello); name == "" {
			b.Fatal("no name")
		}
	}
}

// BenchmarkHelloCryptoTLS is the alternative DESIGN.md suggests:
// crypto/tls's server handshake as the reader, stopped in
// GetConfigForClient.
func BenchmarkHelloCryptoTLS(b *testing.B) {
	hello := clientHello(b, "api.example.com")
	b.ReportAllocs()
	for b.Loop() {
		if name, _ := goServerName(hello); name == "" {
			b.Fatal("no name")
		}
	}
}

// TestWriteFuzzSeeds writes the differential generator's framings as
// seeds of FuzzClientHello when run with EGRESS_WRITE_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("EGRESS_WRITE_SEEDS") == "" {
		t.Skip("set EGRESS_WRITE_SEEDS=1 to rewrite testdata/fuzz/FuzzClientHello")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzClientHello")
	os.MkdirAll(dir, 0o755)
	vs := variants(t)
	for i, fr := range framings() {
		v := vs[i%len(vs)]
		wire := fr.records(v.msg)
		if len(wire) > 1<<16 {
			continue
		}
		body := "go test fuzz v1\n[]byte(" + strconv.Quote(string(wire)) + ")\n"
		if err := os.WriteFile(filepath.Join(dir, "seed"+string(rune('a'+i/26))+string(rune('a'+i%26))), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
