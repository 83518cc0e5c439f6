//go:build linux

package transparent

import (
	"net"
	"sync"
	"syscall"
	"time"
)

// whileUpstreamSilent returns the client connection as the reader of its
// first bytes should see it while up, an upstream already connected, may
// speak first (a server-speaks-first protocol's greeting: MySQL, SMTP):
// once up has something to read, every read deadline is now, so the
// reader stops waiting for the client at once instead of after its
// timeout. It reads nothing of up's. Call stop when the reading is over;
// it leaves c without a deadline.
func whileUpstreamSilent(c *net.TCPConn, up net.Conn) (_ net.Conn, stop func()) {
	tc, ok := up.(*net.TCPConn)
	if !ok {
		return c, func() {}
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c, func() {}
	}
	sc := &speakingConn{TCPConn: c}
	done := make(chan struct{})
	go func() {
		var b [1]byte
		rc.Read(func(fd uintptr) bool {
			select {
			case <-done:
				return true
			default:
			}
			n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if err == syscall.EAGAIN {
				return false
			}
			if n > 0 {
				sc.spoken()
			}
			return true
		})
	}()
	var once sync.Once
	return sc, func() {
		once.Do(func() {
			close(done)
			sc.mu.Lock()
			sc.over = true
			c.SetReadDeadline(time.Time{})
			sc.mu.Unlock()
			// Wake the poller, if it still waits, so that it sees done.
			tc.SetReadDeadline(time.Now())
			tc.SetReadDeadline(time.Time{})
		})
	}
}

// speakingConn is a client connection whose read deadlines become now
// once its upstream has spoken (see whileUpstreamSilent). The socket
// stays reachable as TCPConn.
type speakingConn struct {
	*net.TCPConn
	mu    sync.Mutex // orders spoken against the reader's deadlines
	spoke bool
	over  bool // stop was called: leave the deadlines alone
}

func (c *speakingConn) spoken() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.spoke = true
	if !c.over {
		c.TCPConn.SetReadDeadline(time.Now())
	}
}

func (c *speakingConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.spoke && !t.IsZero() {
		t = time.Now()
	}
	return c.TCPConn.SetReadDeadline(t)
}

func (c *speakingConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.TCPConn.SetDeadline(t); err != nil || !c.spoke || t.IsZero() {
		return err
	}
	return c.TCPConn.SetReadDeadline(time.Now())
}
