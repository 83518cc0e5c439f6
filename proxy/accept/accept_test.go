package accept

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/internal/testwait"
)

// scripted is a listener whose Accept returns errs in turn, then
// connections of a real loopback listener.
type scripted struct {
	net.Listener
	errs []error
}

func (l *scripted) Accept() (net.Conn, error) {
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		return nil, err
	}
	return l.Listener.Accept()
}

func TestLoop(t *testing.T) {
	t.Run("a transient error is retried after a backoff and the next connection served", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
		l := &scripted{Listener: ln, errs: []error{emfile, emfile}}
		var count InFlight
		served := make(chan net.Conn, 1)
		done := make(chan error, 1)
		began := time.Now()
		go func() {
			done <- Loop(l, &count, zerolog.New(zerolog.NewTestWriter(t)), "test", func(c net.Conn) {
				served <- c
			})
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		select {
		case s := <-served:
			if el := time.Since(began); el < 15*time.Millisecond {
				t.Errorf("served after %v: two failures should back off 5 ms then 10 ms", el)
			}
			if n := count.N(); n < 1 {
				t.Errorf("count %d with a connection not handed on, want ≥ 1", n)
			}
			s.Close()
			count.Done()
		case <-time.After(testwait.Timeout):
			t.Fatal("no connection served after two transient errors")
		}
		ln.Close()
		select {
		case err := <-done:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("Loop = %v, want net.ErrClosed", err)
			}
		case <-time.After(testwait.Timeout):
			t.Fatal("Loop did not return when its listener closed")
		}
		if n := count.N(); n != 0 {
			t.Errorf("count %d after the loop ended, want 0", n)
		}
	})
	t.Run("a permanent error ends the loop at once", func(t *testing.T) {
		boom := errors.New("boom")
		l := &scripted{errs: []error{boom}}
		if err := Loop(l, nil, zerolog.Nop(), "test", func(net.Conn) { t.Error("handled a connection") }); !errors.Is(err, boom) {
			t.Errorf("Loop = %v, want boom", err)
		}
	})
}

func TestTransient(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.EMFILE)}, true},
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.ENFILE)}, true},
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.ENOBUFS)}, true},
		{&net.OpError{Op: "accept", Err: os.ErrDeadlineExceeded}, true},
		{net.ErrClosed, false},
		{fmt.Errorf("accept: %w", net.ErrClosed), false},
		{errors.New("other"), false},
	} {
		if got := Transient(tc.err); got != tc.want {
			t.Errorf("Transient(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestInFlight(t *testing.T) {
	t.Run("the zero value waits for nothing", func(t *testing.T) {
		var f InFlight
		if err := f.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("Wait returns when the last work is done, not before", func(t *testing.T) {
		var f InFlight
		f.Add(2)
		waited := make(chan error, 1)
		go func() { waited <- f.Wait(context.Background()) }()
		f.Done()
		select {
		case err := <-waited:
			t.Fatalf("Wait returned %v with one piece of work left", err)
		default:
		}
		f.Add(1) // work begun while Wait waits
		f.Done()
		f.Done()
		select {
		case err := <-waited:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(testwait.Timeout):
			t.Fatal("Wait did not return at zero")
		}
	})
	t.Run("Wait gives up with its context", func(t *testing.T) {
		var f InFlight
		f.Add(1)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if err := f.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Wait = %v, want DeadlineExceeded", err)
		}
	})
	t.Run("below zero panics", func(t *testing.T) {
		defer func() {
			if recover() == nil {
				t.Error("no panic")
			}
		}()
		var f InFlight
		f.Done()
	})
}
