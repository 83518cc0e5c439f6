package origin

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/egress-proxy/egress/proxy/answer"
	"github.com/egress-proxy/egress/proxy/peek"
)

// Gate relays HTTP/1 between a client's raw connection (the transparent
// listener's, a CONNECT tunnel's) and an origin, one exchange at a time,
// each request decided before it goes up. Requests are read with
// peek.RequestReader (net/http's reader) and sent re-serialised, never as
// the raw bytes, so an origin that parses differently sees what egress
// decided on; responses are read with the origin client (header cap, 1xx,
// status checks). The gate is left, and bytes copied raw, only when the
// origin really switched protocols: it answered a request asking to
// upgrade with 101, or a CONNECT with 2xx; an h2c upgrade offer is
// removed from every request first (StripH2C), since HTTP/2 frames are
// not read here. A request that Allow refuses, or that cannot be read
// (with Unreadable set), is answered with egress's refusal after the
// answers to the requests before it, and nothing of it or after it goes
// up.
//
// Client and Upstream are the two ends proxy/tunnel copies between: they
// hide the sockets on purpose, so the tunnel copies through the gate and
// never splices past it.
type Gate struct {
	Client   net.Conn // the client's side: reads give the checked requests
	Upstream net.Conn // the origin's side: reads give the checked responses
	g        *gate
}

// GateConfig is what a gate needs besides the two connections.
type GateConfig struct {
	// Requests reads the client's requests; First, if not nil, is the
	// first one, read (and decided) already.
	Requests *peek.RequestReader
	First    *http.Request
	// Allow decides each request after First; !ok refuses it (Allow
	// records why). refusal is egress's answer to it (a 403 with
	// Connection: close, as bytes on the wire), which the client gets
	// after the answers to the requests before it; then nothing more of
	// the client's goes up, and the connection ends once the client has
	// had the time to read the answer (answer.Linger). A refusal without
	// an answer ends the connection at once.
	Allow func(*http.Request) (refusal []byte, ok bool)
	// Unreadable, if set, is told of a request that cannot be read (a
	// malformed head, one net/http's server refuses, a head over
	// limits.max_header_bytes), and records the refusal; the client gets
	// egress's 400 to it (431 for a head over its bound: answer.BadRequest),
	// which ends the connection as Allow's refusal does. A connection
	// that failed under the read (closed, reset, timed out) gets no
	// answer, and Fail is told, as it is of any unreadable request when
	// Unreadable is nil.
	Unreadable func(error)
	// Fail is told why the gate ended the connection: a request that
	// cannot be read, a response that cannot be relayed.
	Fail func(error)
	// ID is the connection's decision id, named in the answers the gate
	// writes itself (a 502 for a switch to a protocol nobody asked for).
	ID string
}

// errRefused ends the gate's request stream when Allow refused one.
var errRefused = errors.New("a request on the connection was refused")

// maxPipelined bounds the requests sent up whose answers have not come.
const maxPipelined = 16

// NewGate makes a gate between client and up; from here on the returned
// ends own both connections. Start it once whatever Allow and Fail act on
// is ready (the tunnel started).
func NewGate(client, up net.Conn, cfg GateConfig) *Gate {
	reqR, reqW := io.Pipe()
	respR, respW := io.Pipe()
	g := &gate{cfg: cfg, client: client, up: up, oc: NewConn(up), reqW: reqW, respW: respW,
		pending: make(chan exchange, maxPipelined), done: make(chan struct{})}
	return &Gate{
		Client:   &gateEnd{Conn: client, r: reqR},
		Upstream: &gateEnd{Conn: up, r: respR},
		g:        g,
	}
}

// Start starts relaying.
func (g *Gate) Start() {
	go g.g.requests()
	go g.g.responses()
}

type gate struct {
	cfg         GateConfig
	client, up  net.Conn
	oc          *Conn
	reqW, respW *io.PipeWriter
	pending     chan exchange // requests sent up, in order
	done        chan struct{} // closed when responses has returned
	// badSwitch, set before done is closed, is why responses ended the
	// connection with a 502 of its own (a switch to a protocol nobody
	// asked for): requests lets the client read it, then fails the gate.
	badSwitch error
	failOnce  sync.Once
}

// exchange is one request sent up; switched, for a request that asks to
// switch protocols, hears whether the origin did. An exchange with a
// refusal is a request refused and not sent: the refusal is its answer.
type exchange struct {
	req      *http.Request
	switched chan bool
	refusal  []byte
}

func (g *gate) fail(err error) {
	g.failOnce.Do(func() {
		if g.cfg.Fail != nil {
			g.cfg.Fail(err)
		}
	})
}

// asksToSwitch reports whether req's answer may end HTTP/1 on the
// connection.
func asksToSwitch(req *http.Request) bool {
	return req.Method == http.MethodConnect || IsUpgrade(req)
}

// requests reads, decides and sends up the client's requests.
func (g *gate) requests() {
	defer close(g.pending)
	bw := bufio.NewWriterSize(g.reqW, 4<<10)
	req := g.cfg.First
	for {
		if req == nil {
			var err error
			req, err = g.cfg.Requests.Read()
			if err == io.EOF {
				g.reqW.Close() // the client is done: the tunnel half-closes upstream
				return
			}
			if err != nil {
				if g.cfg.Unreadable != nil && answerable(err) {
					g.cfg.Unreadable(err)
					g.refuse(answer.BadRequest(g.cfg.ID, err).Raw("HTTP/1.1", false))
					return
				}
				g.fail(err)
				g.reqW.CloseWithError(err)
				return
			}
			if refusal, ok := g.cfg.Allow(req); !ok {
				g.refuse(refusal)
				return
			}
		}
		StripH2C(req.Header) // HTTP/2 after a 101 would leave the gate
		ex := exchange{req: req}
		if asksToSwitch(req) {
			ex.switched = make(chan bool, 1)
		}
		select {
		case g.pending <- ex:
		case <-g.done:
			g.reqW.CloseWithError(io.ErrClosedPipe)
			return
		}
		WriteHead(bw, req, Request{Transparent: true})
		var err error
		if req.Body != nil && req.Body != http.NoBody {
			err = WriteBody(bw, req, req.Body)
		}
		if err == nil {
			err = bw.Flush()
		}
		if err != nil {
			g.reqW.CloseWithError(err)
			return
		}
		if ex.switched != nil {
			// Nothing more is read until the origin said whether it
			// switched: what follows may not be HTTP/1 at all.
			select {
			case ok := <-ex.switched:
				if ok {
					_, err := io.Copy(g.reqW, g.cfg.Requests.Buffered())
					g.reqW.CloseWithError(err)
					return
				}
			case <-g.done:
				if g.badSwitch != nil {
					answer.Linger(g.client) // the 502 first
					g.fail(g.badSwitch)
				}
				g.reqW.CloseWithError(io.ErrClosedPipe)
				return
			}
		}
		req = nil
	}
}

// answerable reports whether err, from reading a request, is about the
// bytes the client sent, which egress answers, rather than about the
// connection (closed under the read, reset, timed out), which only ends:
// where net/http's server draws the line (isCommonNetReadError). A head
// the client cut short by ending its side is answered, as net/http's
// server answers it: a half-closed client still reads the answers to the
// requests before it, then egress's.
func answerable(err error) bool {
	var ne net.Error
	var oe *net.OpError
	return !errors.Is(err, net.ErrClosed) && !(errors.As(err, &ne) && ne.Timeout()) &&
		!(errors.As(err, &oe) && oe.Op == "read")
}

// refuse ends the requests of the connection at one Allow refused (or
// one that could not be read), with its answer when there is one:
// queued behind the answers to the requests sent before it, then, once
// it is out, what the client still
// sends is read and dropped for a moment (answer.Linger) before the
// client's direction ends, so that the close that follows does not
// reset the answer away. Nothing of the refused request, nor of any
// request behind it, goes up.
func (g *gate) refuse(refusal []byte) {
	if len(refusal) == 0 {
		g.reqW.CloseWithError(errRefused)
		return
	}
	select {
	case g.pending <- exchange{refusal: refusal}:
	case <-g.done:
		g.reqW.CloseWithError(io.ErrClosedPipe)
		return
	}
	<-g.done // the answer is out, or the origin's answers failed first
	answer.Linger(g.client)
	g.reqW.Close()
}

// responses reads the origin's answers, in the order of the requests, and
// sends them to the client.
func (g *gate) responses() {
	defer close(g.done)
	bw := bufio.NewWriterSize(g.respW, 4<<10)
	for ex := range g.pending {
		if ex.refusal != nil {
			// egress's answer, then the end of the connection's answers:
			// the tunnel half-closes the client's side after it.
			_, err := bw.Write(ex.refusal)
			if err == nil {
				err = bw.Flush()
			}
			g.respW.CloseWithError(err)
			return
		}
		req := ex.req
		resp, err := g.oc.ReadResponse(req, func(code int, h http.Header) error {
			return WriteInformational(bw, code, h)
		}, false)
		if err != nil {
			g.fail(err)
			g.respW.CloseWithError(err)
			return
		}
		if ex.switched != nil && resp.StatusCode == http.StatusSwitchingProtocols {
			if err := CheckSwitch(req, resp); err != nil {
				// What follows would be a protocol nobody decided on:
				// the client gets a 502 saying so, as on the forward
				// path, and the connection ends (requests, once the
				// client has had the time to read it), nothing of it
				// relayed.
				resp.Body.Close()
				target := req.Host + req.URL.Path
				a := answer.New(http.StatusBadGateway, g.cfg.ID, "egress got a bad response from "+target+": "+err.Error(), "egress: bad response from "+target+": "+err.Error()+"\n")
				_, werr := bw.Write(a.Raw("HTTP/1.1", req.Method == http.MethodHead))
				if werr == nil {
					werr = bw.Flush()
				}
				if werr != nil {
					g.fail(err)
					g.respW.CloseWithError(werr)
					return
				}
				g.badSwitch = err
				g.respW.Close()
				return
			}
		}
		if ex.switched != nil && switched(req, resp) {
			if _, err := WriteResponse(bw, req, resp); err != nil {
				g.respW.CloseWithError(err)
				return
			}
			ex.switched <- true
			// Another protocol from here on: bytes as they come.
			_, err := io.Copy(g.respW, g.oc.BR)
			g.respW.CloseWithError(err)
			return
		}
		closeAfter, err := WriteResponse(bw, req, resp)
		resp.Body.Close()
		if ex.switched != nil {
			ex.switched <- false
		}
		if err != nil {
			g.respW.CloseWithError(err)
			return
		}
		if closeAfter {
			g.respW.Close()
			return
		}
	}
	// The client is done and every answer is out.
	bw.Flush()
	g.respW.Close()
}

// switched reports whether resp, the answer to req (which asked to
// switch), ends HTTP/1 on the connection: a 101, or a 2xx to a CONNECT
// without the framing fields RFC 9110 §9.3.6 forbids there. A server
// that answers CONNECT with a body of some length (net/http's, from a
// handler that does not hijack) goes on reading requests: the gate stays.
func switched(req *http.Request, resp *http.Response) bool {
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return true
	}
	return req.Method == http.MethodConnect && resp.StatusCode/100 == 2 &&
		len(resp.TransferEncoding) == 0 && resp.Header.Get("Content-Length") == ""
}

// gateEnd is one end of a gate: reads come from the gate, writes go to
// the connection.
type gateEnd struct {
	net.Conn
	r *io.PipeReader
}

func (e *gateEnd) Read(b []byte) (int, error) { return e.r.Read(b) }
func (e *gateEnd) Close() error               { e.r.Close(); return e.Conn.Close() }

// CloseWrite half-closes the connection, as the tunnel does on EOF.
func (e *gateEnd) CloseWrite() error {
	if cw, ok := e.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return e.Conn.Close()
}

// SetReadDeadline is the gate's, not the socket's: the gate reads the
// socket on its own goroutine.
func (e *gateEnd) SetReadDeadline(t time.Time) error { return nil }

// NetConn is the socket, for TCP_INFO (the tunnel's idle timeout); the
// tunnel still copies through the gate.
func (e *gateEnd) NetConn() net.Conn { return e.Conn }
