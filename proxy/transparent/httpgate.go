package transparent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// requestGate stands for the client of a plain-HTTP transparent
// connection: what the tunnel reads from it are the client's requests,
// each decided on its Host before it goes up. A kept-alive connection may
// name another host on each request, and the first one's decision must not
// carry the rest (domain fronting through a shared address). A refused
// request ends the connection: answering it could interleave with
// responses still coming for earlier, pipelined ones.
//
// It hides the client's socket on purpose: the tunnel must copy from the
// gate, never splice from the socket past it.
type requestGate struct {
	c  *net.TCPConn
	pr *io.PipeReader
}

// errRequestRefused ends the gate's stream when a request was refused.
var errRequestRefused = errors.New("a request on the connection was refused")

// newRequestGate starts reading requests from head, then c. allow is
// called for each request after the first (which was decided already) with
// its Host; false refuses it. bad is told of a request that cannot be
// read, which ends the connection.
func newRequestGate(c *net.TCPConn, head []byte, allow func(host string) bool, bad func(error)) *requestGate {
	pr, pw := io.Pipe()
	g := &requestGate{c: c, pr: pr}
	go g.run(bufio.NewReader(io.MultiReader(bytes.NewReader(head), c)), pw, allow, bad)
	return g
}

func (g *requestGate) run(br *bufio.Reader, pw *io.PipeWriter, allow func(string) bool, bad func(error)) {
	for first := true; ; first = false {
		req, err := http.ReadRequest(br)
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				pw.Close() // the client is done: the tunnel half-closes upstream
				return
			}
			bad(fmt.Errorf("a request on the connection cannot be read: %w", err))
			pw.CloseWithError(err)
			return
		}
		if !first && !allow(req.Host) {
			pw.CloseWithError(errRequestRefused)
			return
		}
		if _, ok := req.Header["User-Agent"]; !ok {
			req.Header["User-Agent"] = []string{""} // Write adds Go's own otherwise
		}
		if err := req.Write(pw); err != nil {
			pw.CloseWithError(err)
			return
		}
		if req.Header.Get("Upgrade") != "" || req.Method == http.MethodConnect {
			// A protocol switch: what follows is no longer HTTP/1.1
			// requests (the response decides, but a refused upgrade
			// leaves the client nothing more to say on this connection).
			_, err := io.Copy(pw, br)
			pw.CloseWithError(err)
			return
		}
	}
}

func (g *requestGate) Read(b []byte) (int, error)         { return g.pr.Read(b) }
func (g *requestGate) Write(b []byte) (int, error)        { return g.c.Write(b) }
func (g *requestGate) Close() error                       { g.pr.Close(); return g.c.Close() }
func (g *requestGate) CloseWrite() error                  { return g.c.CloseWrite() }
func (g *requestGate) LocalAddr() net.Addr                { return g.c.LocalAddr() }
func (g *requestGate) RemoteAddr() net.Addr               { return g.c.RemoteAddr() }
func (g *requestGate) SetDeadline(t time.Time) error      { return g.c.SetDeadline(t) }
func (g *requestGate) SetReadDeadline(t time.Time) error  { return g.c.SetReadDeadline(t) }
func (g *requestGate) SetWriteDeadline(t time.Time) error { return g.c.SetWriteDeadline(t) }

var _ net.Conn = (*requestGate)(nil)
