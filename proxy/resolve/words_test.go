package resolve_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestLookupStoppedByCallerSaysSoInWords: a lookup whose caller's time ran
// out says so in words, not Go's "context deadline exceeded".
func TestLookupStoppedByCallerSaysSoInWords(t *testing.T) {
	r, _ := resolver(load(t, []string{silent(t)}, "  timeout: 10s\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := r.LookupNetIP(ctx, "ip", "quiet.example")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want it to match context.DeadlineExceeded", err)
	}
	if strings.Contains(err.Error(), "context") {
		t.Errorf("err = %q: Go's wording", err)
	}
}
