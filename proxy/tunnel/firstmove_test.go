package tunnel

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

// FirstMove returns whichever side speaks first, with what the other
// sent meanwhile, leaves both connections without a deadline, and gives
// up on idle or when its context ends.
func TestFirstMove(t *testing.T) {
	t.Run("the client first", func(t *testing.T) {
		c, cc := tcpPair(t)
		up, _ := tcpPair(t)
		io.WriteString(c, "hello")
		head, down, err := FirstMove(context.Background(), cc, up, time.Minute)
		if string(head) != "hello" || len(down) != 0 || err != nil {
			t.Fatalf("head %q down %q err %v, want the client's bytes", head, down, err)
		}
		// No deadline is left behind: a read waits for the next bytes.
		go io.WriteString(c, "more")
		b := make([]byte, 4)
		if _, err := io.ReadFull(cc, b); err != nil || string(b) != "more" {
			t.Fatalf("read after FirstMove: %q, %v", b, err)
		}
	})
	t.Run("the origin first", func(t *testing.T) {
		_, cc := tcpPair(t)
		up, u := tcpPair(t)
		io.WriteString(u, "220 ready\r\n")
		head, down, err := FirstMove(context.Background(), cc, up, time.Minute)
		if len(head) != 0 || string(down) != "220 ready\r\n" || err != nil {
			t.Fatalf("head %q down %q err %v, want the origin's greeting", head, down, err)
		}
	})
	t.Run("neither within idle", func(t *testing.T) {
		_, cc := tcpPair(t)
		up, _ := tcpPair(t)
		if _, _, err := FirstMove(context.Background(), cc, up, 50*time.Millisecond); !errors.Is(err, ErrFirstMoveIdle) {
			t.Fatalf("err %v, want ErrFirstMoveIdle", err)
		}
	})
	t.Run("the drain", func(t *testing.T) {
		_, cc := tcpPair(t)
		up, _ := tcpPair(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, _, err := FirstMove(ctx, cc, up, 0); !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v, want the context's", err)
		}
	})
}
