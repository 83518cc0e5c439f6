//go:build linux

package transparent

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
)

// With no redirect at all (no NAT entry, SO_ORIGINAL_DST fails), a
// connection to the listener is one canonical refusal, not_redirected:
// an operator sees it in the log and the metrics like any other.
func TestDirectConnectionWithoutNATIsNotRedirected(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan eventlog.Entry, 1)
	s := &Server{
		Policy: policy.Builtin,
		Events: &eventlog.Sink{Logger: zerolog.New(zerolog.NewTestWriter(t)), Observe: func(e eventlog.Entry) { got <- e }},
		Logger: zerolog.New(zerolog.NewTestWriter(t)),
	}
	go s.Serve(ln)
	defer s.Shutdown(context.Background())

	// The reset may come before or after connect returns.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if !isReset(err) {
		t.Fatalf("read: %v, want a reset", err)
	}
	select {
	case e := <-got:
		if e.Decision.Reason != policy.ReasonNotRedirected || e.Decision.Allowed() || e.ID == "" || e.Err == nil {
			t.Errorf("entry = %+v (err %v), want a not_redirected denial with an id and the error", e.Decision, e.Err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no entry recorded")
	}
}
