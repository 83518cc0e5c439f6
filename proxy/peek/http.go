package peek

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// ErrUnreadableRequest is wrapped by every error of RequestReader.Read
// but io.EOF: bytes that started as HTTP/1 and that net/http's reader, or
// the checks net/http's server makes before serving a request, refuse. A
// gate refuses the connection: egress decides on nothing it cannot read.
var ErrUnreadableRequest = errors.New("unreadable HTTP/1 request")

// RequestReader reads the HTTP/1 requests a client sends on a raw
// connection (the transparent listener's, a CONNECT tunnel's) with
// net/http's reader, the one egress's and Go's servers use, each head
// bounded. Each request is then decided on its Host and sent on
// re-serialised, so the origin sees what egress decided on.
type RequestReader struct {
	lim *headLimit
	br  *bufio.Reader
	max int64
}

// NewRequestReader reads from head (bytes already read from c, as by
// Read), then c; max bounds each request head (limits.max_header_bytes).
func NewRequestReader(head []byte, c io.Reader, max int) *RequestReader {
	var r io.Reader = c
	if len(head) > 0 {
		r = io.MultiReader(bytes.NewReader(head), c)
	}
	lim := &headLimit{r: r, n: -1}
	br := readers.Get().(*bufio.Reader)
	br.Reset(lim)
	return &RequestReader{lim: lim, br: br, max: int64(max)}
}

// readers are the 4 KiB buffers of RequestReaders, given back by Release.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}

// Release gives rr's buffer back for another reader when it holds
// nothing past the last request read (whose body must have been read
// whole), and reports whether it did: rr is then unusable, and a
// connection idle between requests holds no buffer (issue 20); the next
// request is read with a new RequestReader.
func (rr *RequestReader) Release() bool {
	if rr.br.Buffered() != 0 {
		return false
	}
	rr.br.Reset(nil)
	readers.Put(rr.br)
	rr.br = nil
	return true
}

// Buffered is what the reader holds past the last request read: the
// first bytes of another protocol after a switch (101, CONNECT's 200).
func (rr *RequestReader) Buffered() *bufio.Reader { return rr.br }

// Read reads the next request head; its Body reads the body from the
// connection and must be read to its end before the next Read. It returns
// io.EOF when the client closed between requests; any other error wraps
// ErrUnreadableRequest (a head over the bound included).
func (rr *RequestReader) Read() (*http.Request, error) {
	// Empty lines before a request line are ignored (RFC 9112 §2.2: a
	// client may send a CRLF after a POST body); a few, not forever.
	for range 4 {
		b, err := rr.br.Peek(1)
		if err == io.EOF {
			return nil, io.EOF
		}
		if err != nil || b[0] != '\r' && b[0] != '\n' {
			break
		}
		rr.br.ReadByte()
	}
	if _, err := rr.br.Peek(1); err == io.EOF {
		return nil, io.EOF
	}
	rr.lim.n = rr.max
	req, err := http.ReadRequest(rr.br)
	rr.lim.n = -1
	if err != nil {
		if errors.Is(err, ErrHeadTooLarge) {
			err = ErrHeadTooLarge
		}
		return nil, fmt.Errorf("%w: %w", ErrUnreadableRequest, err)
	}
	if err := serverChecks(req); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreadableRequest, err)
	}
	return req, nil
}

// serverChecks refuses what net/http's server refuses after reading a
// request (server.go, readRequest): egress must not decide on a request
// an origin would read otherwise, and Go's own is what the differential
// tests hold it to.
func serverChecks(req *http.Request) error {
	if req.ProtoMajor != 1 {
		return fmt.Errorf("protocol %s", req.Proto)
	}
	hosts := req.Header["Host"]
	switch {
	case len(hosts) > 1:
		return errors.New("more than one Host header")
	case len(hosts) == 1 && !httpguts.ValidHostHeader(hosts[0]):
		return fmt.Errorf("malformed Host header %q", hosts[0])
	case !httpguts.ValidHostHeader(req.Host):
		return fmt.Errorf("malformed host %q", req.Host)
	}
	for k, vs := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("invalid header name %q", k)
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("invalid value of header %q", k)
			}
		}
	}
	return nil
}

// RequestHost is the name req is for, as net/http's server takes it
// (r.Host: an absolute-form target's authority, else the Host header),
// without its port and an IPv6 literal's brackets; "" when there is none.
func RequestHost(req *http.Request) string {
	return strings.ToLower(StripPort(req.Host))
}

// ErrHeadTooLarge is wrapped by Read's error for a request head over its
// bound (limits.max_header_bytes): answered 431, as net/http's server
// answers one (answer.BadRequest).
var ErrHeadTooLarge = errors.New("request head larger than limits.max_header_bytes")

// headLimit reads at most n bytes until lifted (n < 0): it bounds a
// request head, not its body.
type headLimit struct {
	r io.Reader
	n int64
}

func (l *headLimit) Read(b []byte) (int, error) {
	if l.n == 0 {
		return 0, ErrHeadTooLarge
	}
	if l.n > 0 && int64(len(b)) > l.n {
		b = b[:l.n]
	}
	n, err := l.r.Read(b)
	if l.n > 0 {
		l.n -= int64(n)
	}
	return n, err
}

// maxFirstLine bounds how long a first line that could still become an
// HTTP/1 request line is watched: net/http's server reads a request line
// of up to 1 MiB (its default MaxHeaderBytes).
const maxFirstLine = 1<<20 + 4096

// GuardFirstLine wraps the client's side of a connection whose first
// bytes (head, already sent on) could still become an HTTP/1 request
// line when the time to read one ran out ("GET" then a pause, or a
// protocol of its own that sends a word and waits): its bytes flow as
// they come, but the moment that first line turns out to be an HTTP
// request line, the read fails (ErrUnreadableRequest) and trip is told,
// before a byte of the rest goes on. No origin can act on a request whose
// request line it has not all received, so an HTTP request slipped in
// slowly is refused, while a protocol whose first line is not HTTP is
// unaffected once that line ends (or a byte no request line holds comes).
func GuardFirstLine(c net.Conn, head []byte, trip func(error)) net.Conn {
	return &lineGuard{Conn: c, line: append([]byte(nil), head...), trip: trip}
}

type lineGuard struct {
	net.Conn
	mu   sync.Mutex
	line []byte // the first line so far; nil once decided
	done bool
	trip func(error)
}

func (g *lineGuard) Read(b []byte) (int, error) {
	n, err := g.Conn.Read(b)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.done || n == 0 {
		return n, err
	}
	g.line = append(g.line, b[:n]...)
	_, source, done := httpStart(g.line)
	switch {
	case done && source == SourceNone:
		g.done, g.line = true, nil
		return n, err
	case done, len(g.line) > maxFirstLine:
		g.done, g.line = true, nil
		e := fmt.Errorf("%w: an HTTP/1 request line sent after the time to read it", ErrUnreadableRequest)
		if g.trip != nil {
			g.trip(e)
		}
		return 0, e
	}
	return n, err
}

// Watching reports whether the first line is still watched: it could
// still become an HTTP request line.
func (g *lineGuard) Watching() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.done
}

// NetConn is the socket, for TCP_INFO (idle timeouts); reads go through
// the guard.
func (g *lineGuard) NetConn() net.Conn { return g.Conn }

// CloseWrite half-closes the socket, as a tunnel does on EOF.
func (g *lineGuard) CloseWrite() error {
	if cw, ok := g.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return g.Conn.Close()
}
