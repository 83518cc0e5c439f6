package tunnel

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/egress-proxy/egress/policy"
)

// TestDrainDeadlineSaysSoInWords: a tunnel closed because the drain time
// ran out says so in its line, in words, not Go's "context deadline
// exceeded".
func TestDrainDeadlineSaysSoInWords(t *testing.T) {
	g, l := newGroup(t, nil)
	c, cc := tcpPair(t)
	defer c.Close()
	up, _ := tcpPair(t)
	tn, err := g.Acquire(10)
	if err != nil {
		t.Fatal(err)
	}
	fill(tn, policy.Request{IP: netip.MustParseAddr("127.0.0.1"), Port: 1})
	tn.Start(cc, up)
	ctx, cancel := context.WithTimeout(context.Background(), 0)
	defer cancel()
	g.Drain(ctx)
	e := l.next(t)
	if e.Err == nil || strings.Contains(e.Err.Error(), "context") || !strings.Contains(e.Err.Error(), "timeouts.drain") {
		t.Errorf("the line's error is %v, want the drain time named in words", e.Err)
	}
}
