//go:build linux

package main

import (
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/internal/tlstest"
)

// Issue 18 under egress run: a program in the sandbox that connects to
// an address the policy allows and sends a ClientHello naming a refused
// server, framed the ways a Go or OpenSSL server still reads, or only
// after the peek time, is refused before a byte of it reaches the
// server.
func TestRunHelloFramings(t *testing.T) {
	t.Parallel()
	requireSandbox(t)
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	var got, open atomic.Int64
	upstream := testnet.ServeTCP(t, func(c net.Conn) {
		open.Add(1)
		defer open.Add(-1)
		n, _ := io.Copy(io.Discard, c)
		got.Add(n)
	})
	config := writeConfig(t, fmt.Sprintf("version: 1\ndefault: deny\nallow:\n  - {cidr: 127.0.0.1, ports: [%d]}\ndeny:\n  - {host: denied.test}\n", upstream.Port))
	msg := tlstest.Msg(t, "denied.test")
	one := tlstest.Records(msg, 0x0301, 1<<14)
	framings := []struct {
		name  string
		delay string // seconds before sending
		wire  []byte
	}{
		{"a warning alert first", "0", append(append([]byte(nil), tlstest.WarningAlert...), one...)},
		{"an empty handshake record first", "0", append(append([]byte(nil), tlstest.EmptyHandshake...), one...)},
		{"a record of version 0x0201", "0", tlstest.Records(msg, 0x0201, 1<<14)},
		{"padding past 16 KiB", "0", tlstest.Records(tlstest.Padded(msg, 17<<10), 0x0301, 1<<14)},
		{"a whole hello after the peek time", "1", one},
	}
	script := `
import socket, sys, time, binascii
port = int(sys.argv[1])
for arg in sys.argv[2:]:
    delay, wire = arg.split(":")
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    time.sleep(float(delay))
    try:
        s.sendall(binascii.unhexlify(wire))
        s.recv(10)
    except Exception as e:
        pass
    s.close()
`
	file := filepath.Join(t.TempDir(), "hello.py")
	if err := os.WriteFile(file, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"run", "--config", config, "--", py, file, fmt.Sprint(upstream.Port)}
	for _, f := range framings {
		args = append(args, f.delay+":"+hex.EncodeToString(f.wire))
	}
	r := runEgress(t, nil, args...)
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	// Every connection's bytes were refused: the server may have seen
	// connections (a late hello's, dialled on the address), never a byte
	// of a hello. Wait for the ones it saw to end.
	testwait.Until(t, 5*time.Second, "the server's connections to end", func() bool { return open.Load() == 0 })
	if n := got.Load(); n != 0 {
		t.Errorf("the server received %d bytes of ClientHello", n)
	}
	want := fmt.Sprintf("%d connections, %d denied", len(framings), len(framings))
	if !strings.Contains(r.stderr, want) {
		t.Errorf("summary lacks %q:\n%s", want, r.stderr)
	}
}
