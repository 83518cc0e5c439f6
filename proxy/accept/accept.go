// Package accept is the plumbing every listener of egress shares: the
// accept loop (the HTTP proxy's, the PROXY protocol listener's, the
// transparent listener's), with one rule for transient errors and one
// for the end, and InFlight, the count of work a shutdown waits for
// (connections accepted and not yet handed on, tunnels being drained).
//
// It neither reads from nor answers a connection: the handler each
// listener passes does.
package accept

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// Backoff bounds of a transient accept error, as net/http's Server's.
const (
	minBackoff = 5 * time.Millisecond
	maxBackoff = time.Second
)

// Loop accepts on l until it fails for good (closed, most often), and
// returns that error. Each connection goes to handle on a goroutine of
// its own, so that a slow client holds up no other.
//
// A transient error (out of file descriptors or buffers, a timeout) is
// logged to logger at warn level with what, then Accept is retried after
// a backoff from 5 ms, doubling up to 1 s, reset by the next success:
// retrying at once would spin, and giving up would stop the listener for
// a condition that passes.
//
// count, if not nil, counts each connection from before Accept returns
// it: a shutdown that closes l and then waits on count cannot miss a
// connection accepted in between. handle then owns that count and must
// call count.Done once, when the connection is handed on (a tunnel, a
// server) or closed.
func Loop(l net.Listener, count *InFlight, logger zerolog.Logger, what string, handle func(net.Conn)) error {
	var backoff time.Duration
	for {
		if count != nil {
			count.Add(1)
		}
		c, err := l.Accept()
		if err != nil {
			if count != nil {
				count.Done()
			}
			if !Transient(err) {
				return err
			}
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			logger.Warn().Err(err).Dur("retry_in", backoff).Msg(what + ": accept failed")
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		go handle(c)
	}
}

// Transient reports whether an accept error passes on its own: the
// process or system is out of file descriptors (EMFILE, ENFILE) or
// buffers (ENOBUFS, ENOMEM), or the error says it is a timeout or
// temporary (net/http's rule).
func Transient(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var te interface{ Temporary() bool }
	return errors.As(err, &te) && te.Temporary()
}

// InFlight counts work in flight and lets a shutdown wait until there is
// none, without polling. Unlike sync.WaitGroup, Add may run while Wait
// waits (an accept loop counts a connection as a shutdown begins) and
// Wait gives up when its context is done. The zero value is ready.
type InFlight struct {
	mu   sync.Mutex
	n    int
	zero chan struct{} // closed when n drops to 0; nil while n is 0
}

// Add adds d, which may be negative, to the count; the count must not
// drop below zero.
func (f *InFlight) Add(d int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	was := f.n
	f.n += d
	switch {
	case f.n < 0:
		panic("accept: InFlight below zero")
	case was == 0 && f.n > 0:
		f.zero = make(chan struct{})
	case was > 0 && f.n == 0:
		close(f.zero)
		f.zero = nil
	}
}

// Done subtracts one.
func (f *InFlight) Done() { f.Add(-1) }

// N is the count now.
func (f *InFlight) N() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// Wait returns nil once the count is zero, or ctx's error when ctx is
// done first.
func (f *InFlight) Wait(ctx context.Context) error {
	for {
		f.mu.Lock()
		zero := f.zero
		f.mu.Unlock()
		if zero == nil {
			return nil
		}
		select {
		case <-zero:
			// Zero for a moment: count again, work may have begun since.
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
