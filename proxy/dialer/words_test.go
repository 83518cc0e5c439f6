package dialer_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
)

// TestDialStoppedByCallerSaysSoInWords: a dial its caller stopped says why
// in words, not Go's "context canceled" or "context deadline exceeded",
// and still matches the context's error.
func TestDialStoppedByCallerSaysSoInWords(t *testing.T) {
	ap := testnet.FullBacklog(t)
	d := &dialer.Dialer{Policy: load(t, allowLoopback), Timeout: 10 * time.Second}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	timed, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	for _, tt := range []struct {
		name string
		ctx  context.Context
		want error
	}{
		{"canceled", canceled, context.Canceled},
		{"deadline", timed, context.DeadlineExceeded},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := d.Dial(tt.ctx, "tcp", policy.Request{Host: "127.0.0.1", Port: ap.Port()})
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want it to match %v", err, tt.want)
			}
			if strings.Contains(err.Error(), "context") {
				t.Errorf("err = %q: Go's wording", err)
			}
		})
	}
}
