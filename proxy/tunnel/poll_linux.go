//go:build linux

package tunnel

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// An idle tunnel costs no goroutine. Each direction of a tunnel is either
// armed (its source socket registered, one-shot, in the poller's epoll
// set; nothing else), running (a goroutine splicing what is queued), or
// done. The poller's one goroutine starts a running goroutine when a
// source becomes readable; the goroutine splices until the socket is
// drained and re-arms it. Two goroutines parked per idle tunnel would cost
// more than the tunnel's sockets themselves (their stacks), and Go's
// splice would hold two pipes (four descriptors) per idle tunnel.
//
// Registrations are made inside RawConn.Control, which holds the socket
// open, so a re-arm can never touch a descriptor number reused by another
// connection; closing a socket removes its registration (epoll(7)).

const (
	dirRunning int32 = iota
	dirArmed
	dirDone
)

// direction copies one way of a tunnel: src to dst.
type direction struct {
	t          *Tunnel
	dst, src   *net.TCPConn
	rc         syscall.RawConn
	n          *int64 // bytes copied, written only while running
	state      atomic.Int32
	token      uint32
	registered bool // only touched while running
	inspected  bool // Inspect has seen the first bytes; only touched while running
}

// thePoller is the process's one poller, started by the first tunnel
// that can use it.
var thePoller poller

type poller struct {
	once sync.Once
	err  error
	epfd int
	file *os.File // epfd, registered in Go's own netpoller

	mu   sync.Mutex
	next uint32
	dirs map[uint32]*direction
}

func (p *poller) init() error {
	p.once.Do(func() {
		p.epfd, p.err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if p.err != nil {
			p.err = fmt.Errorf("epoll: %w", p.err)
			return
		}
		// An epoll set is itself pollable: readable when it has events.
		// Non-blocking, it joins Go's netpoller, and the loop waits
		// there, parked like any goroutine reading a socket, instead of
		// in a blocking epoll_wait that takes a thread off its P and
		// costs a hand-off on every wake-up (issue 13: setup).
		if err := unix.SetNonblock(p.epfd, true); err != nil {
			p.err = fmt.Errorf("epoll: %w", err)
			return
		}
		p.file = os.NewFile(uintptr(p.epfd), "tunnel-epoll")
		rc, err := p.file.SyscallConn()
		if err != nil {
			p.err = fmt.Errorf("epoll: %w", err)
			return
		}
		p.dirs = map[uint32]*direction{}
		go p.loop(rc)
	})
	return p.err
}

func (p *poller) loop(rc syscall.RawConn) {
	events := make([]unix.EpollEvent, 256)
	for {
		var n int
		var err error
		rerr := rc.Read(func(fd uintptr) bool {
			n, err = unix.EpollWait(int(fd), events, 0)
			if errors.Is(err, unix.EINTR) {
				n, err = 0, nil
			}
			return n > 0 || err != nil // none yet: park until the set is readable
		})
		if rerr != nil || err != nil {
			return // cannot happen with a valid epfd; armed tunnels then wait for Close
		}
		p.mu.Lock()
		for _, ev := range events[:n] {
			d := p.dirs[uint32(ev.Fd)]
			if d != nil && d.state.CompareAndSwap(dirArmed, dirRunning) {
				go d.run()
			}
		}
		p.mu.Unlock()
	}
}

func (p *poller) add(d *direction) {
	p.mu.Lock()
	for {
		p.next++
		if _, used := p.dirs[p.next]; !used {
			break
		}
	}
	d.token = p.next
	p.dirs[d.token] = d
	p.mu.Unlock()
}

func (p *poller) remove(d *direction) {
	p.mu.Lock()
	delete(p.dirs, d.token)
	p.mu.Unlock()
}

// preparePolled makes t's two directions for the poller; false when the
// connections are not both TCP or there is no epoll (the caller then
// copies on two goroutines). It runs before t joins the set: closing t
// reads t.dirs, so they are written before anyone else can see t.
func (t *Tunnel) preparePolled(client, upstream net.Conn) bool {
	cu, ok1 := client.(*net.TCPConn)
	uu, ok2 := upstream.(*net.TCPConn)
	if !ok1 || !ok2 || thePoller.init() != nil {
		return false
	}
	urc, err1 := cu.SyscallConn()
	drc, err2 := uu.SyscallConn()
	if err1 != nil || err2 != nil {
		return false
	}
	t.dirs[0] = &direction{t: t, dst: uu, src: cu, rc: urc, n: &t.Up}
	t.dirs[1] = &direction{t: t, dst: cu, src: uu, rc: drc, n: &t.Down}
	for _, d := range t.dirs {
		thePoller.add(d)
		d.state.Store(dirRunning)
	}
	return true
}

// startPolled starts both prepared directions: each copies what is
// already queued, then arms its source on the poller.
func (t *Tunnel) startPolled() {
	for _, d := range t.dirs {
		go d.run()
	}
}

// run splices what src has queued until it would block, then arms src
// and returns; it ends the direction on EOF (half-closing dst) or error.
func (d *direction) run() {
	defer func() {
		if v := recover(); v != nil {
			d.t.panicked(v)
			d.end()
		}
	}()
	for {
		queued, eof, err := d.peek()
		if queued > 0 && d.n == &d.t.Up && d.t.Inspect != nil && !d.inspected {
			// The client's first bytes: decided on before any goes up.
			d.inspected = true
			if !d.t.inspectHead(d.dst, d.src) {
				d.end()
				return
			}
			continue
		}
		switch {
		case err != nil:
			d.t.closeBoth()
			d.end()
			return
		case eof:
			if d.dst.CloseWrite() != nil {
				d.t.closeBoth()
			}
			d.end()
			return
		case queued == 0:
			d.arm()
			return
		}
		// A burst: splice until src has been quiet for burstGrace (the
		// read deadline ends the splice without losing a byte: data only
		// moves once read), then go back to peeking and, if idle, arm.
		d.src.SetReadDeadline(time.Now().Add(burstGrace))
		n, err := d.dst.ReadFrom(d.src)
		*d.n += n
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			d.t.closeBoth()
			d.end()
			return
		}
		if d.src.SetReadDeadline(time.Time{}) != nil {
			d.t.closeBoth()
			d.end()
			return
		}
		if err == nil { // src reached EOF
			if d.dst.CloseWrite() != nil {
				d.t.closeBoth()
			}
			d.end()
			return
		}
	}
}

// burstGrace is how long a running direction keeps splicing (and holds
// a pipe) after the last byte before it hands src back to the poller.
const burstGrace = 100 * time.Millisecond

// peek reports, without blocking, how many bytes src has queued (0: none
// yet) or whether it reached EOF.
func (d *direction) peek() (queued int, eof bool, err error) {
	var serr error
	cerr := d.rc.Read(func(fd uintptr) bool {
		queued, eof, _, serr = peekQueued(int(fd))
		return true // never wait here: waiting is the poller's job
	})
	if cerr != nil {
		return 0, false, cerr
	}
	return queued, eof, serr
}

// arm registers src for one readability event; on failure (the tunnel was
// closed meanwhile) the direction ends.
func (d *direction) arm() {
	var eerr error
	err := d.rc.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(d.token)}
		op := unix.EPOLL_CTL_MOD
		if !d.registered {
			op = unix.EPOLL_CTL_ADD
		}
		d.registered = true
		// From the Store on, the poller may start a run: every write of
		// this run happens before it.
		d.state.Store(dirArmed)
		eerr = unix.EpollCtl(thePoller.epfd, op, int(fd), &ev)
	})
	if err == nil && eerr == nil {
		return
	}
	if err != nil {
		d.state.Store(dirArmed) // Control failed before the Store: the socket is closed
	}
	if d.state.CompareAndSwap(dirArmed, dirDone) {
		d.t.closeBoth()
		d.finish()
	}
}

// end marks a running direction done.
func (d *direction) end() {
	if d.state.Swap(dirDone) != dirDone {
		d.finish()
	}
}

// closed is called after the tunnel's sockets are closed: an armed
// direction will get no more events, so it ends here.
func (d *direction) closed() {
	if d.state.CompareAndSwap(dirArmed, dirDone) {
		d.finish()
	}
}

func (d *direction) finish() {
	thePoller.remove(d)
	d.t.directionEnded(d.n == &d.t.Up)
}
