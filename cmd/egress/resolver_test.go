package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
)

// serve's dialer resolves through the DNS proxy's resolver, with its
// failover: with dns.upstreams [down, working] a CONNECT to a name only
// the working one knows succeeds, and with every upstream down the 502
// names each one and what it did.
func TestServeDialerFailsOverAcrossUpstreams(t *testing.T) {
	down := closedUDPPort(t)
	up := dnsUpstream(t, map[string]string{"svc.test": "127.0.0.1"})
	origin := greeterOrigin(t)
	for _, c := range []struct {
		name      string
		upstreams string
		status    string
	}{
		{"a down first upstream is skipped", `["` + down + `", "` + up + `"]`, "HTTP/1.1 200"},
		{"every upstream down is a DNS server failure naming them", `["` + down + `"]`, "HTTP/1.1 502 egress could not resolve svc.test: DNS server failure"},
	} {
		t.Run(c.name, func(t *testing.T) {
			config := writeConfig(t, fmt.Sprintf("version: 1\ndefault: deny\nallow:\n  - host: svc.test\n    ports: [%d]\ndns:\n  upstreams: %s\n  timeout: 1s\n", origin, c.upstreams))
			_, addr, _ := startEgress(t, nil, "serve", "--config", config, "--listen", "127.0.0.1:0")
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "CONNECT svc.test:%d HTTP/1.1\r\nHost: svc.test\r\n\r\n", origin)
			br := bufio.NewReader(conn)
			line, err := br.ReadString('\n')
			if err != nil || !strings.HasPrefix(line, c.status) {
				t.Fatalf("status line %q, %v; want %q...", line, err, c.status)
			}
			if strings.HasPrefix(line, "HTTP/1.1 502") {
				body, _ := io.ReadAll(br)
				if want := "no upstream answered within 1s: " + down + " refused"; !strings.Contains(string(body), want) {
					t.Fatalf("502 body %q; want it to say %q", body, want)
				}
				return
			}
			if greet, _ := br.ReadString('\n'); greet != "db ready\n" {
				// The 200's header ends with an empty line first.
				if greet, _ = br.ReadString('\n'); greet != "db ready\n" {
					t.Fatalf("through the tunnel: %q", greet)
				}
			}
		})
	}
}

// closedUDPPort is a loopback UDP address nobody listens on.
func closedUDPPort(t *testing.T) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := pc.LocalAddr().String()
	pc.Close()
	return a
}
