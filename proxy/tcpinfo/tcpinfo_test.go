//go:build linux

package tcpinfo

import (
	"net"
	"testing"
	"time"
)

func TestIdleCountsFromTheLastDataReceived(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	// Data both ways, then silence: the silence is what is measured, so
	// this test sleeps for it. Bounded on both sides, so that a value
	// counted from elsewhere (the connection's start, boot) fails.
	for _, w := range []net.Conn{client, server} {
		if _, err := w.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []net.Conn{client, server} {
		if _, err := r.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}
	lastData := time.Now()
	time.Sleep(300 * time.Millisecond)
	d, ok := Idle(client, server)
	if since := time.Since(lastData); !ok || d < 200*time.Millisecond || d > since+20*time.Millisecond {
		t.Fatalf("Idle after 300ms of silence = %v, %v; want between 200ms and %v, true", d, ok, since)
	}
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := server.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if d, ok := Idle(client, server); !ok || d > 100*time.Millisecond {
		t.Errorf("Idle right after data = %v, %v; want < 100ms, true (the server just received)", d, ok)
	}
}

func TestIdleIsUnknownForOtherConns(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, ok := Idle(a, b); ok {
		t.Error("Idle of a net.Pipe claims to know")
	}
}
