package origin

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// WriteBody writes r's body, read from body, as WriteHead framed it: as
// is, or chunked and flushed chunk by chunk (a request body streams), with
// r's trailers but those that frame or route a message.
func WriteBody(bw *bufio.Writer, r *http.Request, body io.Reader) error {
	if r.ContentLength >= 0 {
		_, err := io.Copy(bw, body)
		return err
	}
	cw := httputil.NewChunkedWriter(flushWriter{bw})
	if _, err := io.Copy(cw, body); err != nil {
		return err
	}
	cw.Close()
	writeTrailer(bw, r.Trailer)
	_, err := bw.WriteString("\r\n")
	return err
}

// writeTrailer writes trailer fields but those never allowed there (RFC
// 9110 §6.5.1: a recipient may merge trailers into the header).
func writeTrailer(bw *bufio.Writer, t http.Header) {
	for k, vs := range t {
		if HopHeader(k) || !httpguts.ValidTrailerHeader(k) {
			continue
		}
		for _, v := range vs {
			if !strings.ContainsAny(v, "\r\n") {
				bw.WriteString(k + ": " + v + "\r\n")
			}
		}
	}
}

// flushWriter flushes each write: a chunk goes out as it comes.
type flushWriter struct{ bw *bufio.Writer }

func (f flushWriter) Write(b []byte) (int, error) {
	n, err := f.bw.Write(b)
	if err == nil {
		err = f.bw.Flush()
	}
	return n, err
}

// streams reports whether resp's body is passed on piece by piece as it
// comes: one of unknown length (chunked, or until the origin closes), or
// a stream of events, must not wait in a buffer.
func streams(resp *http.Response) bool {
	return resp.ContentLength < 0 || strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
}

// CopyResponse sends resp's head (hop-by-hop headers dropped, Via added
// with via) and body to w, flushing a streamed body piece by piece, then
// its trailers. An error reading the body (the origin reset) or writing
// it (the client went away) is returned; the caller must then not reuse
// the origin's connection, and should end the client's.
func CopyResponse(w http.ResponseWriter, resp *http.Response, via bool) error {
	h := w.Header()
	CopyHeader(h, resp.Header)
	if via {
		h.Add("Via", Via(resp.ProtoMajor, resp.ProtoMinor))
	}
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		h.Set("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	var flush func()
	if streams(resp) || announced > 0 {
		// The head goes now, as ReverseProxy sends it: a stream's
		// client learns of it before its first event, and net/http's
		// server neither sniffs a Content-Type nor counts a length the
		// origin did not send (trailers need chunking).
		flush = func() { rc.Flush() }
		flush()
	}
	err := copyBody(w, resp.Body, flush)
	if err != nil {
		return err
	}
	if len(resp.Trailer) > 0 {
		rc.Flush() // chunked, so trailers can follow
		if len(resp.Trailer) == announced {
			CopyHeader(h, resp.Trailer)
		} else {
			for k, vs := range resp.Trailer {
				if !HopHeader(k) {
					h[http.TrailerPrefix+k] = vs
				}
			}
		}
	}
	return nil
}

// copyBufs are the buffers bodies are copied through.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyBody copies an origin's body to w, calling flush (if set) after
// each piece.
func copyBody(w io.Writer, body io.Reader, flush func()) error {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return fmt.Errorf("write response to client: %w", err)
			}
			if flush != nil {
				flush()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return fmt.Errorf("read response body: %w", rerr)
		}
	}
}

// WriteInformational writes a 1xx answer on a raw client connection (the
// transparent gate), every header kept.
func WriteInformational(bw *bufio.Writer, code int, h http.Header) error {
	bw.WriteString("HTTP/1.1 " + strconv.Itoa(code) + " " + http.StatusText(code) + "\r\n")
	for k, vs := range h {
		writeField(bw, k, vs)
	}
	bw.WriteString("\r\n")
	return bw.Flush()
}

// WriteResponse writes resp, the answer to req, on a raw client
// connection (the transparent gate): every header kept but the framing,
// which is egress's own: Content-Length when known, chunked (with
// trailers) for an HTTP/1.1 request, or until close. A streamed body is
// flushed piece by piece. It reports whether the client connection must
// close after it (a close-delimited body, or Connection: close).
func WriteResponse(bw *bufio.Writer, req *http.Request, resp *http.Response) (closeAfter bool, err error) {
	text := resp.Status
	if len(text) > 4 && text[3] == ' ' {
		text = text[4:]
	} else {
		text = http.StatusText(resp.StatusCode)
	}
	proto := "HTTP/1.1 "
	if resp.ProtoMajor == 1 && resp.ProtoMinor == 0 {
		proto = "HTTP/1.0 " // the origin's: the client talks to it, not to a proxy
	}
	bw.WriteString(proto + strconv.Itoa(resp.StatusCode) + " " + text + "\r\n")
	for k, vs := range resp.Header {
		if k == "Content-Length" || k == "Transfer-Encoding" || k == "Trailer" {
			continue
		}
		writeField(bw, k, vs)
	}
	bodiless := req.Method == http.MethodHead || resp.StatusCode == http.StatusNoContent ||
		resp.StatusCode == http.StatusNotModified || resp.StatusCode < 200 ||
		req.Method == http.MethodConnect && resp.StatusCode < 300
	chunked := false
	closeAfter = resp.Close
	switch {
	case bodiless:
		if cl := resp.Header["Content-Length"]; len(cl) > 0 {
			writeField(bw, "Content-Length", cl[:1]) // what a GET would have had
		}
	case resp.ContentLength >= 0:
		writeField(bw, "Content-Length", []string{strconv.FormatInt(resp.ContentLength, 10)})
	case req.ProtoAtLeast(1, 1) && resp.ProtoAtLeast(1, 1):
		chunked = true
		bw.WriteString("Transfer-Encoding: chunked\r\n")
		if len(resp.Trailer) > 0 {
			keys := make([]string, 0, len(resp.Trailer))
			for k := range resp.Trailer {
				keys = append(keys, k)
			}
			writeField(bw, "Trailer", []string{strings.Join(keys, ", ")})
		}
	default:
		closeAfter = true // HTTP/1.0: the body ends with the connection
	}
	bw.WriteString("\r\n")
	if bodiless {
		return closeAfter, bw.Flush()
	}
	var dst io.Writer = bw
	var cw io.WriteCloser
	if chunked {
		cw = httputil.NewChunkedWriter(bw)
		dst = cw
	}
	var flush func()
	if streams(resp) {
		flush = func() { bw.Flush() }
	}
	if err := copyBody(dst, resp.Body, flush); err != nil {
		return true, err
	}
	if chunked {
		cw.Close()
		writeTrailer(bw, resp.Trailer)
		bw.WriteString("\r\n")
	}
	return closeAfter, bw.Flush()
}

// IdleBody bounds the silence of body, a response body read from c: each
// read gets c's read deadline idle from its start, so a body the origin
// stops sending for idle ends with an error (timeouts.tunnel_idle, as a
// tunnel's). Zero idle returns body as is. Clear c's read deadline after
// the body, before c is reused.
func IdleBody(body io.ReadCloser, c net.Conn, idle time.Duration) io.ReadCloser {
	if idle <= 0 {
		return body
	}
	return &idleBody{ReadCloser: body, c: c, idle: idle}
}

type idleBody struct {
	io.ReadCloser
	c    net.Conn
	idle time.Duration
}

func (b *idleBody) Read(p []byte) (int, error) {
	b.c.SetReadDeadline(time.Now().Add(b.idle))
	n, err := b.ReadCloser.Read(p)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("no bytes from the origin for %s (timeouts.tunnel_idle): %w", b.idle, err)
	}
	return n, err
}
