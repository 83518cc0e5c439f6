package httpproxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/accept"
	"github.com/egress-proxy/egress/proxy/eventlog"
)

// connectFirst is the listener Serve gives net/http's Server. It accepts
// on l itself and reads the start of each connection's first request on
// a goroutine of its own: a CONNECT is answered there (connect.go), and
// never enters the Server; every other connection is handed to the Server
// with the bytes read so far, and goes on as before (plain HTTP,
// upgrades, later CONNECTs on a kept-alive connection).
//
// A CONNECT through net/http's Server costs the Server's per-connection
// state, its background read, the hijack and the buffers it allocates
// and drops; answered here it costs one pooled 4 KiB reader for the
// time it takes to read the head (issue 13: new tunnels/s).
type connectFirst struct {
	net.Listener
	p          *Proxy
	hdrTimeout time.Duration // timeouts.header: the whole CONNECT head within it
	maxHeader  int           // limits.max_header_bytes

	conns  chan net.Conn
	errc   chan error
	closed chan struct{}

	mu      sync.Mutex
	isDone  bool
	reading map[net.Conn]struct{} // connections whose first bytes are awaited: closed by Close
}

var _ net.Listener = (*connectFirst)(nil)

func (p *Proxy) connectFirst(l net.Listener, hdrTimeout time.Duration, maxHeader int) *connectFirst {
	cf := &connectFirst{Listener: l, p: p, hdrTimeout: hdrTimeout, maxHeader: maxHeader,
		conns: make(chan net.Conn), errc: make(chan error, 1), closed: make(chan struct{}),
		reading: map[net.Conn]struct{}{}}
	go cf.acceptLoop()
	return cf
}

func (l *connectFirst) acceptLoop() {
	err := accept.Loop(l.Listener, &l.p.pending, l.p.Logger, "httpproxy", func(c net.Conn) {
		if !l.track(c) {
			c.Close()
			l.p.pending.Done()
			return
		}
		l.serveConn(c)
	})
	select {
	case l.errc <- err:
	case <-l.closed:
	}
}

// track records c as awaiting its first bytes; false once l is closed.
func (l *connectFirst) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.isDone {
		return false
	}
	l.reading[c] = struct{}{}
	return true
}

// untrack reports false when Close has closed c meanwhile.
func (l *connectFirst) untrack(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.reading[c]
	delete(l.reading, c)
	return ok && !l.isDone
}

// Accept returns the next connection that is not a CONNECT.
func (l *connectFirst) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errc:
		l.errc <- err // every later Accept fails too
		return nil, err
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close closes the listener and the connections that have not sent the
// start of a request yet (idle, as the Server's Shutdown closes its idle
// ones). A CONNECT whose head was read goes on: Shutdown waits for it.
func (l *connectFirst) Close() error {
	l.mu.Lock()
	if !l.isDone {
		l.isDone = true
		close(l.closed)
		for c := range l.reading {
			c.Close()
		}
	}
	l.mu.Unlock()
	return l.Listener.Close()
}

var connectPrefix = []byte("CONNECT ")

// readerPool holds the readers of connections' first request heads; a
// tunnel keeps none.
var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// serveConn reads the first bytes of c: a CONNECT is read whole and
// answered here; anything else goes to the Server with what was read.
func (l *connectFirst) serveConn(c net.Conn) {
	p := l.p
	defer p.pending.Done()
	var r *http.Request
	defer func() {
		if v := recover(); v != nil {
			method := ""
			if r != nil {
				method = r.Method
			}
			p.logPanic(v, c.RemoteAddr().String(), method)
			c.Close()
		}
	}()
	c.SetReadDeadline(time.Now().Add(l.hdrTimeout))
	lr := &io.LimitedReader{R: c, N: int64(l.maxHeader)}
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(lr)
	defer func() {
		br.Reset(nil)
		readerPool.Put(br)
	}()

	// As many bytes as it takes to tell a CONNECT: one for most clients.
	isConnect := false
	for {
		n := min(br.Buffered()+1, len(connectPrefix))
		b, err := br.Peek(n)
		if !bytes.HasPrefix(connectPrefix, b) {
			break // not a CONNECT, whatever else went wrong: the Server says
		}
		if len(b) == len(connectPrefix) {
			isConnect = true
			break
		}
		if err != nil {
			// A client that closed or fell silent before a request: net/http
			// closes such connections without an answer too.
			if l.untrack(c) {
				c.Close()
			}
			return
		}
	}
	if !isConnect {
		l.handOff(c, br)
		return
	}

	r, err := http.ReadRequest(br)
	if !l.untrack(c) {
		return // closed by Shutdown while the head arrived
	}
	if err != nil {
		var f failure
		switch {
		case lr.N <= 0:
			// Nothing decided, so no id (as for "not a proxy request").
			f = plainFailure(http.StatusRequestHeaderFieldsTooLarge, "egress request header fields too large (limits.max_header_bytes)",
				fmt.Sprintf("egress: the request header is over limits.max_header_bytes (%d bytes)\n", l.maxHeader))
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, os.ErrDeadlineExceeded):
			c.Close() // as net/http: no answer to a head that never came whole
			return
		default:
			f = failureFor(eventlog.NewID(), "", policy.Decision{}, fmt.Errorf("%w: %w", errBadRequest, err))
		}
		f.sendConn(c, "HTTP/1.1", false)
		return
	}
	r.RemoteAddr = c.RemoteAddr().String()
	if r.ProtoMajor != 1 {
		// A 505, as net/http's Server answers before any handler sees
		// the request (http.ReadRequest refuses a second Host header
		// itself). Nothing decided, so no id.
		f := plainFailure(http.StatusHTTPVersionNotSupported, "egress HTTP version not supported: "+r.Proto,
			"egress: "+r.Proto+" is not supported: send CONNECT host:port HTTP/1.1\n")
		f.sendConn(c, "HTTP/1.1", false)
		return
	}
	// Bytes behind the head (a TLS ClientHello sent at once) are the
	// tunnel's: copied out of the pooled reader.
	var early []byte
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		early = append([]byte(nil), b...)
	}
	c.SetReadDeadline(time.Time{})
	p.connect(p.tunnels.Context(), c, early, r)
}

// plainFailure is an answer to a request nothing was decided on: no id.
func plainFailure(status int, reason, body string) failure {
	h := http.Header{}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	return failure{status: status, reason: reason, header: h, body: body}
}

// handOff gives c to the Server, the bytes br read first.
func (l *connectFirst) handOff(c net.Conn, br *bufio.Reader) {
	rc := &replayConn{Conn: c}
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		rc.buf = append([]byte(nil), b...)
	}
	if !l.untrack(c) {
		return
	}
	// The Server sets its own header deadline; until then, ours holds.
	select {
	case l.conns <- rc:
	case <-l.closed:
		c.Close()
	}
}

// replayConn is a connection handed to the Server: Read returns the bytes
// connectFirst read first, then reads the connection. Like
// proxyproto.Conn it keeps the socket reachable (TCPConn, Buffered,
// CloseWrite), so that an upgraded connection is still spliced and polled
// by proxy/tunnel.
type replayConn struct {
	net.Conn
	buf []byte
}

func (c *replayConn) Read(b []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(b, c.buf)
		c.buf = c.buf[n:]
		if len(c.buf) == 0 {
			c.buf = nil
		}
		return n, nil
	}
	return c.Conn.Read(b)
}

// TCPConn is the TCP socket under c, or nil.
func (c *replayConn) TCPConn() *net.TCPConn {
	switch x := c.Conn.(type) {
	case *net.TCPConn:
		return x
	case interface{ TCPConn() *net.TCPConn }:
		return x.TCPConn()
	}
	return nil
}

// Buffered is how many bytes Read returns before it reads the socket.
func (c *replayConn) Buffered() int {
	n := len(c.buf)
	if b, ok := c.Conn.(interface{ Buffered() int }); ok {
		n += b.Buffered()
	}
	return n
}

// CloseWrite half-closes the TCP socket under c.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("httpproxy: CloseWrite: not a TCP connection")
}
