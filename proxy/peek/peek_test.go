package peek

import (
	"bytes"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/tlstest"
)

// clientHello returns the first record crypto/tls sends for serverName.
func clientHello(t testing.TB, serverName string) []byte { return tlstest.Hello(t, serverName) }

// splitRecords re-frames a single-record ClientHello into records of at
// most n bytes of handshake data, as RFC 8446 §5.1 allows.
func splitRecords(rec []byte, n int) []byte {
	hdr, body := rec[:5], rec[5:]
	var out []byte
	for len(body) > 0 {
		k := min(n, len(body))
		out = append(out, hdr[0], hdr[1], hdr[2], byte(k>>8), byte(k))
		out = append(out, body[:k]...)
		body = body[k:]
	}
	return out
}

func TestNameFrom(t *testing.T) {
	hello := clientHello(t, "api.example.com")
	noSNI := clientHello(t, "")
	tests := []struct {
		name       string
		in         []byte
		wantName   string
		wantSource string
		wantDone   bool
	}{
		{"a ClientHello gives its SNI", hello, "api.example.com", SourceSNI, true},
		{"a ClientHello split over records gives its SNI", splitRecords(hello, 100), "api.example.com", SourceSNI, true},
		{"half a ClientHello waits for more", hello[:len(hello)/2], "", SourceNone, false},
		{"a record header alone waits for more", hello[:5], "", SourceNone, false},
		{"a ClientHello without SNI is done with no name", noSNI, "", SourceNone, true},
		{"a TLS record that is not a handshake is no name", []byte{23, 3, 3, 0, 1, 0}, "", SourceNone, true},
		{"a handshake that is not a ClientHello is no name", []byte{22, 3, 3, 0, 4, 2, 0, 0, 0}, "", SourceNone, true},
		{"an HTTP/1 request line is HTTP: net/http reads the rest", []byte("GET / HTTP/1.1\r\nHost: web.example:8080\r\n\r\n"), "", SourceHTTP, true},
		{"a request line ending in a bare LF is HTTP", []byte("GET / HTTP/1.1\nHost: web.example\n\n"), "", SourceHTTP, true},
		{"an HTTP/1.0 request without Host is HTTP", []byte("GET / HTTP/1.0\r\n\r\n"), "", SourceHTTP, true},
		{"a request line with a version net/http refuses is still HTTP (and refused)", []byte("GET / HTTP/9.9\r\n"), "", SourceHTTP, true},
		{"a partial request line may still become HTTP", []byte("GET /inde"), "", SourceHTTP, false},
		{"a method alone may still become HTTP", []byte("GE"), "", SourceHTTP, false},
		{"the HTTP/2 preface is HTTP/2", []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), "", SourceHTTP2, true},
		{"a Redis command is not HTTP", []byte("*1\r\n$4\r\nPING\r\n"), "", SourceNone, true},
		{"a memcached command is not HTTP", []byte("get foo\r\n"), "", SourceNone, true},
		{"a PostgreSQL SSLRequest is no name", []byte{0, 0, 0, 8, 4, 210, 22, 47}, "", SourceNone, true},
		{"an SSH banner is no name", []byte("SSH-2.0-OpenSSH_9.6\r\n"), "", SourceNone, true},
		{"binary junk is no name", []byte{0xff, 0xfe, 0}, "", SourceNone, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name, source, done := From(tt.in)
			if name != tt.wantName || source != tt.wantSource || done != tt.wantDone {
				t.Fatalf("nameFrom = %q, %q, %v; want %q, %q, %v", name, source, done, tt.wantName, tt.wantSource, tt.wantDone)
			}
		})
	}
}

func TestPeekName(t *testing.T) {
	t.Run("a silent client times out with no name and no error", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		start := time.Now()
		name, _, buf, err := Read(a, 50*time.Millisecond)
		if name != "" || len(buf) != 0 || err != nil {
			t.Fatalf("got %q %q %v", name, buf, err)
		}
		if el := time.Since(start); el > time.Second {
			t.Fatalf("took %s", el)
		}
	})
	t.Run("bytes arriving in pieces are all kept for the replay", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		hello := clientHello(t, "db.example.com")
		go func() {
			for i := 0; i < len(hello); i += 7 {
				b.Write(hello[i:min(i+7, len(hello))])
			}
		}()
		name, source, buf, err := Read(a, 2*time.Second)
		if name != "db.example.com" || source != SourceSNI || !bytes.Equal(buf, hello) || err != nil {
			t.Fatalf("got %q %q (%d bytes) %v", name, source, len(buf), err)
		}
	})
}

func FuzzNameFrom(f *testing.F) {
	f.Add(clientHello(f, "api.example.com"))
	f.Add(splitRecords(clientHello(f, "x.example"), 50))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: web.example:8080\r\n\r\n"))
	f.Add([]byte("GET http://user@a.example:1/x HTTP/1.1\r\n\r\n"))
	f.Add([]byte{22, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		name, source, done := From(b)
		if name != "" && (source == SourceNone || !done) {
			t.Fatalf("name %q with source %q done %v", name, source, done)
		}
		if len(name) > len(b) {
			t.Fatalf("name longer than input")
		}
	})
}

// A first line that could still become an HTTP request line when the
// time to read one ran out flows on, but fails the moment it completes as
// one: a request slipped in slowly is refused before its head is whole.
func TestGuardFirstLine(t *testing.T) {
	for _, tc := range []struct {
		name   string
		head   string
		writes []string
		passed string // what reads give before the failure, or all
		trips  bool
	}{
		{"a request line completed late trips", "GET", []string{" / HTTP/1.1\r\nHost: evil.example\r\n\r\n"}, "", true},
		{"the h2c preface completed late trips", "PRI", []string{" * HTTP/2.0\r\n\r\nSM\r\n\r\n"}, "", true},
		{"a word and a wait, then a line that is not HTTP, flows", "ping", []string{"pong", " more\n", "GET / HTTP/1.1\r\n\r\n"}, "pong more\nGET / HTTP/1.1\r\n\r\n", false},
		{"a request line with tabs completed late trips", "GET", []string{"\t/\tHTTP/1.1\r\nHost: evil.example\r\n\r\n"}, "", true},
		{"a request line after a space completed late trips", " ", []string{"GET  /a b  http/1.1\r\nHost: evil.example\r\n\r\n"}, "", true},
		{"a byte no request line holds ends the watch", "a", []string{"\x00", "GET / HTTP/1.1\r\n"}, "\x00GET / HTTP/1.1\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			var tripped error
			g := GuardFirstLine(b, []byte(tc.head), func(err error) { tripped = err })
			go func() {
				for _, w := range tc.writes {
					a.Write([]byte(w))
				}
				a.Close()
			}()
			var got []byte
			buf := make([]byte, 256)
			var err error
			for err == nil {
				var n int
				n, err = g.Read(buf)
				got = append(got, buf[:n]...)
			}
			if tc.trips != errors.Is(err, ErrUnreadableRequest) || tc.trips != (tripped != nil) {
				t.Fatalf("err %v, tripped %v; want a trip: %v", err, tripped, tc.trips)
			}
			if string(got) != tc.passed {
				t.Errorf("passed %q, want %q", got, tc.passed)
			}
		})
	}
}

// TestSecurityFromTakesOddlySpacedRequestLinesForHTTP: a first line that
// nginx or python's http.server reads as a request line (several spaces,
// tabs, leading whitespace, a space in the target) is HTTP, for
// RequestReader to read or refuse, never raw bytes that pass unchecked;
// while it could still become one it is undecided (issue 18).
func TestSecurityFromTakesOddlySpacedRequestLinesForHTTP(t *testing.T) {
	for _, tc := range []struct {
		in     string
		source string
		done   bool
	}{
		{"GET / HTTP/1.1\r\n", SourceHTTP, true},
		{"GET  /  HTTP/1.1\r\n", SourceHTTP, true},
		{"GET\t/\tHTTP/1.1\r\n", SourceHTTP, true},
		{" GET / HTTP/1.1\r\n", SourceHTTP, true},
		{"\tGET / HTTP/1.1\n", SourceHTTP, true},
		{"GET /a b HTTP/1.1\r\n", SourceHTTP, true},
		{"GET / http/1.1 \r\n", SourceHTTP, true},
		{"\r\nGET\v/\fHTTP/1.0\n", SourceHTTP, true},
		{"PRI * HTTP/2.0\r\n", SourceHTTP2, true},
		// Could still become one: undecided, however long the method.
		{"GET  /a b", SourceHTTP, false},
		{" ", SourceHTTP, false},
		{"AVERYLONGMETHODNAMEWHICHGOACCEPTSASATOKEN", SourceHTTP, false},
		// Never one: a word and a wait, a first word no method is.
		{"ping\n", SourceNone, true},
		{"EHLO mail.example\r\n", SourceNone, true},
		{"GET\r\n", SourceNone, true},
		{" HTTP/1.1\r\n", SourceNone, true},
		{"a\x00b HTTP/1.1\r\n", SourceNone, true},
		{" {\"a\": 1", SourceNone, true},
		{"\x00\x01", SourceNone, true},
	} {
		_, source, done := From([]byte(tc.in))
		if source != tc.source || done != tc.done {
			t.Errorf("From(%q) = %q, done %v; want %q, done %v", tc.in, source, done, tc.source, tc.done)
		}
	}
}
