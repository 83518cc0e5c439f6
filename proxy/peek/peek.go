// Package peek reads the first bytes of a client's connection for the
// name it is going to: a TLS ClientHello's server_name (SNI), or whether
// they are HTTP/1, whose requests RequestReader then reads with net/http's
// reader. The transparent listener decides on it; CONNECT tunnels check
// it against the name they were opened for. TLS has one reader,
// hello.go's (ReadFirst, ReadHello), which reads a ClientHello whole or
// says why it cannot, for the callers to refuse (issue 18). It parses and
// nothing more: no decision, no TLS termination.
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
	SourceNone = ""    // no name: the client said nothing in time, or no TLS/HTTP
	SourceSNI  = "sni" // TLS ClientHello server_name (RFC 6066 §3)
	// SourceHTTP: the bytes start an HTTP/1 request line (or could still
	// be one when the time ran out): the caller reads the request with
	// net/http's reader, the one origins use, and refuses it when that
	// cannot; peek names no host for it.
	SourceHTTP = "http"
	// SourceHTTP2: the HTTP/2 connection preface (RFC 9113 §3.4, h2c with
	// prior knowledge), which no HTTP/1 reader reads.
	SourceHTTP2 = "h2"
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
				if source == SourceHTTP {
					// An unfinished request line: the caller's reader
					// finishes it, or refuses the connection.
					return "", SourceHTTP, buf, nil
				}
				return "", SourceNone, buf, nil
			}
			// EOF or reset before a name: nothing to forward but what
			// was read; let the caller decide on the address (an HTTP
			// request line cut short is the caller's to refuse).
			return "", source, buf, rerr
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
	if isTokenByte(b[0]) || isLineSpace(b[0]) || b[0] == '\n' {
		return httpStart(b)
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

// httpStart tells whether b is the start of an HTTP/1 request as any
// origin might read one. net/http's server wants method SP
// request-target SP HTTP-version (RFC 9112 §3), but nginx and python's
// http.server also take several spaces, tabs, leading whitespace and a
// space inside the target: so, failing closed, a first line (ending in
// LF, with or without CR) counts as a request line when, after any
// whitespace, its first word is a token (a method) and its last word
// starts with "HTTP/" in any case; RequestReader then reads it, or
// refuses it. done is false while the first line could still become one.
func httpStart(b []byte) (name, source string, done bool) {
	// Empty lines before a request line are skipped (RFC 9112 §2.2;
	// nginx does), so they may come before one.
	b = bytes.TrimLeft(b, "\r\n")
	if len(b) == 0 {
		return "", SourceHTTP, false
	}
	line, complete := b, false
	if eol := bytes.IndexByte(b, '\n'); eol >= 0 {
		line, complete = b[:eol], true
	}
	// The first word: a method is all token bytes.
	i := 0
	for i < len(line) && isLineSpace(line[i]) {
		i++
	}
	j := i
	for j < len(line) && !isLineSpace(line[j]) {
		j++
	}
	if !allToken(line[i:j]) {
		return "", SourceNone, true
	}
	if !complete {
		return "", SourceHTTP, false
	}
	// The last word, after the first.
	k := len(line)
	for k > j && isLineSpace(line[k-1]) {
		k--
	}
	l := k
	for l > j && !isLineSpace(line[l-1]) {
		l--
	}
	last := line[l:k]
	switch {
	case i == j || len(last) == 0:
		return "", SourceNone, true // fewer than two words
	case string(bytes.TrimSuffix(line, []byte("\r"))) == "PRI * HTTP/2.0":
		return "", SourceHTTP2, true
	case len(last) >= 5 && strings.EqualFold(string(last[:5]), "HTTP/"):
		return "", SourceHTTP, true
	}
	return "", SourceNone, true
}

// isLineSpace reports whether c separates the words of a request line
// for some origin: SP and HTAB (nginx), CR, VT, FF, and what else
// python's str.split takes for whitespace in a line read as Latin-1.
func isLineSpace(c byte) bool {
	switch c {
	case ' ', '\t', '\r', '\v', '\f', 0x1c, 0x1d, 0x1e, 0x1f, 0x85, 0xa0:
		return true
	}
	return false
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
