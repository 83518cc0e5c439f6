// Package peek reads the first bytes of a client's connection for the
// name it is going to: a TLS ClientHello's server_name (SNI) or an HTTP
// request's Host. The transparent listener decides on it; CONNECT
// tunnels check it against the name they were opened for. TLS has one
// reader, hello.go's (ReadFirst, ReadHello), which reads a ClientHello
// whole or says why it cannot, for the callers to refuse (issue 18). It
// parses and nothing more: no decision, no TLS termination.
package peek

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"time"
)

// What the first bytes of a connection said about its destination's name.
const (
	SourceNone = ""     // no name: the client said nothing in time, or no TLS/HTTP
	SourceSNI  = "sni"  // TLS ClientHello server_name (RFC 6066 §3)
	SourceHost = "host" // HTTP/1.x Host header (RFC 9112 §3.2)
)

// maxPeek bounds the bytes of an HTTP request head read before the
// decision: one that has not named its Host in 16 KB is not worth waiting
// for. (A ClientHello has its own bound, MaxHello.)
const maxPeek = 16<<10 + 5

// Read reads the first bytes of c until they name the destination
// (a complete TLS ClientHello or HTTP Host header line), show they never
// will, maxPeek bytes have arrived, or timeout passes. It returns the
// name (empty when none), where it came from, and every byte read, which
// the caller must replay to the upstream. A timeout is not an error: a
// client waiting for the server to speak first (MySQL, SMTP, FTP)
// sends nothing.
func Read(c net.Conn, timeout time.Duration) (name, source string, buf []byte, err error) {
	return More(c, nil, timeout)
}

// More is Read for a client whose first bytes, buf, were read already.
func More(c net.Conn, buf []byte, timeout time.Duration) (name, source string, _ []byte, err error) {
	if name, source, done := From(buf); done || len(buf) >= maxPeek {
		return name, source, buf, nil
	}
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return "", SourceNone, buf, err
	}
	defer c.SetReadDeadline(time.Time{})
	if cap(buf) < 2048 {
		buf = append(make([]byte, 0, 2048), buf...)
	}
	for {
		if len(buf) == cap(buf) {
			nb := make([]byte, len(buf), min(2*cap(buf), maxPeek))
			copy(nb, buf)
			buf = nb
		}
		n, rerr := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		name, source, done := From(buf)
		if done || len(buf) >= maxPeek {
			return name, source, buf, nil
		}
		if rerr != nil {
			var ne net.Error
			if errors.As(rerr, &ne) && ne.Timeout() {
				return "", SourceNone, buf, nil
			}
			// EOF or reset before a name: nothing to forward but what
			// was read; let the caller decide on the address.
			return "", SourceNone, buf, rerr
		}
	}
}

// From looks at the bytes read so far. done is true when more bytes
// cannot change the answer.
func From(b []byte) (name, source string, done bool) {
	if len(b) == 0 {
		return "", SourceNone, false
	}
	if TLS(b) {
		// The ClientHello reader (hello.go): a name only from a complete
		// hello; the callers that decide refuse what it cannot read.
		h, err := ParseHello(b)
		if err == nil && h.Name != "" {
			return h.Name, SourceSNI, true
		}
		return "", SourceNone, err != errIncomplete
	}
	if isTokenByte(b[0]) {
		return hostFromHTTP(b)
	}
	return "", SourceNone, true
}

const (
	recordTypeHandshake      = 22 // RFC 8446 §5.1 ContentType handshake
	handshakeTypeClientHello = 1  // RFC 8446 §4 HandshakeType client_hello
	extensionServerName      = 0  // RFC 6066 §3
	nameTypeHostName         = 0  // RFC 6066 §3 NameType host_name
)

var errBadHello = errors.New("malformed ClientHello")

// reader consumes big-endian TLS wire structures.
type reader []byte

func (r *reader) skip(n int) bool {
	if len(*r) < n {
		return false
	}
	*r = (*r)[n:]
	return true
}

func (r *reader) u16() (uint16, bool) {
	if len(*r) < 2 {
		return 0, false
	}
	v := binary.BigEndian.Uint16(*r)
	*r = (*r)[2:]
	return v, true
}

// vec reads a vector with a lenBytes-byte length prefix.
func (r *reader) vec(lenBytes int) (reader, bool) {
	if len(*r) < lenBytes {
		return nil, false
	}
	n := 0
	for i := 0; i < lenBytes; i++ {
		n = n<<8 | int((*r)[i])
	}
	if len(*r) < lenBytes+n {
		return nil, false
	}
	v := (*r)[lenBytes : lenBytes+n]
	*r = (*r)[lenBytes+n:]
	return v, true
}

func (r *reader) skipVec(lenBytes int) bool {
	_, ok := r.vec(lenBytes)
	return ok
}

// hostFromHTTP finds the Host of an HTTP/1.x request head in b: the Host
// header, or the authority of an absolute-form target. done is true when
// it is found, the head is complete without one, or b is not HTTP.
func hostFromHTTP(b []byte) (name, source string, done bool) {
	eol := bytes.Index(b, []byte("\r\n"))
	if eol < 0 {
		// Not even a request line yet: keep reading only while it could
		// still be one ("METHOD SP").
		if sp := bytes.IndexByte(b, ' '); sp >= 0 {
			if sp == 0 || !allToken(b[:sp]) {
				return "", SourceNone, true
			}
		} else if !allToken(b) || len(b) > 32 {
			return "", SourceNone, true
		}
		return "", SourceNone, false
	}
	line := string(b[:eol])
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !allToken([]byte(method)) || !strings.HasPrefix(proto, "HTTP/1.") {
		return "", SourceNone, true // HTTP/2 preface ("PRI * HTTP/2.0") included
	}
	absHost := ""
	if i := strings.Index(target, "://"); i > 0 {
		auth := target[i+3:]
		if j := strings.IndexAny(auth, "/?#"); j >= 0 {
			auth = auth[:j]
		}
		if k := strings.LastIndexByte(auth, '@'); k >= 0 {
			auth = auth[k+1:]
		}
		absHost = auth
	}
	rest = string(b[eol+2:])
	for {
		eol := strings.Index(rest, "\r\n")
		if eol < 0 {
			return "", SourceNone, false
		}
		h := rest[:eol]
		rest = rest[eol+2:]
		if h == "" {
			if absHost != "" {
				return StripPort(absHost), SourceHost, true
			}
			return "", SourceNone, true
		}
		k, v, ok := strings.Cut(h, ":")
		if ok && strings.EqualFold(k, "host") {
			if absHost != "" {
				// RFC 9112 §3.2.2: an absolute-form target wins.
				return StripPort(absHost), SourceHost, true
			}
			return StripPort(strings.TrimSpace(v)), SourceHost, true
		}
	}
}

// stripPort removes a ":port" from a Host value, and the brackets of an
// IPv6 literal.
func StripPort(h string) string {
	if strings.HasPrefix(h, "[") {
		if end := strings.IndexByte(h, ']'); end > 0 {
			return h[1:end]
		}
		return h
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 && strings.Count(h, ":") == 1 {
		return h[:i]
	}
	return h
}

func allToken(b []byte) bool {
	for _, c := range b {
		if !isTokenByte(c) {
			return false
		}
	}
	return true
}

// isTokenByte reports whether c may appear in an HTTP method (RFC 9110
// §5.6.2 tchar).
func isTokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
