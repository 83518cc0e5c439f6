// Package tlstest builds TLS ClientHello framings for tests: a real
// crypto/tls ClientHello, re-framed the ways Go and OpenSSL servers
// still accept (records of any size, odd record versions, warning
// alerts and empty records first, padding past 16 KiB) and the ways
// that smuggle a name (issue 18). It is for tests only.
package tlstest

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// Hello returns the first record crypto/tls sends for serverName: its
// ClientHello, header included, as it is on the wire.
func Hello(tb testing.TB, serverName string) []byte {
	tb.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Client(a, &tls.Config{ServerName: serverName, InsecureSkipVerify: true}).Handshake()
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(b, hdr); err != nil {
		tb.Fatal(err)
	}
	body := make([]byte, binary.BigEndian.Uint16(hdr[3:]))
	if _, err := io.ReadFull(b, body); err != nil {
		tb.Fatal(err)
	}
	return append(hdr, body...)
}

// HelloNaming returns crypto/tls's ClientHello with a server_name
// extension naming name as it is, an IP literal included (which
// crypto/tls itself never sends, RFC 6066 §3).
func HelloNaming(tb testing.TB, name string) []byte {
	tb.Helper()
	ext := make([]byte, 5, 5+len(name))
	binary.BigEndian.PutUint16(ext, uint16(3+len(name))) // server_name_list
	ext[2] = 0                                           // host_name
	binary.BigEndian.PutUint16(ext[3:], uint16(len(name)))
	ext = append(ext, name...)
	return Record(22, 0x0301, WithExtension(Msg(tb, ""), 0, ext, true))
}

// Msg returns the ClientHello handshake message (its 4-byte header
// included) crypto/tls sends for serverName.
func Msg(tb testing.TB, serverName string) []byte {
	tb.Helper()
	return Hello(tb, serverName)[5:]
}

// Record is one TLS record.
func Record(typ byte, vers uint16, payload []byte) []byte {
	r := []byte{typ, byte(vers >> 8), byte(vers), byte(len(payload) >> 8), byte(len(payload))}
	return append(r, payload...)
}

// Records frames msg as handshake records of version vers carrying at
// most size bytes each.
func Records(msg []byte, vers uint16, size int) []byte {
	var out []byte
	for len(msg) > 0 {
		k := min(size, len(msg))
		out = append(out, Record(22, vers, msg[:k])...)
		msg = msg[k:]
	}
	return out
}

// WarningAlert and EmptyHandshake are records a server skips before a
// ClientHello (Go the first, OpenSSL the second).
var (
	WarningAlert   = Record(21, 0x0301, []byte{1, 112})
	EmptyHandshake = Record(22, 0x0301, nil)
)

// WithExtension returns msg with an extension added in front (first)
// or at the end of its extensions.
func WithExtension(msg []byte, typ uint16, data []byte, first bool) []byte {
	body := msg[4:]
	i := 2 + 32
	i += 1 + int(body[i])                           // session id
	i += 2 + int(binary.BigEndian.Uint16(body[i:])) // cipher suites
	i += 1 + int(body[i])                           // compression
	exts := body[i+2 : i+2+int(binary.BigEndian.Uint16(body[i:]))]
	e := binary.BigEndian.AppendUint16(nil, typ)
	e = binary.BigEndian.AppendUint16(e, uint16(len(data)))
	e = append(e, data...)
	var all []byte
	if first {
		all = append(e, exts...)
	} else {
		all = append(append([]byte(nil), exts...), e...)
	}
	nb := append(append([]byte(nil), body[:i]...), byte(len(all)>>8), byte(len(all)))
	nb = append(nb, all...)
	return append([]byte{1, byte(len(nb) >> 16), byte(len(nb) >> 8), byte(len(nb))}, nb...)
}

// Padded is msg with a padding extension (RFC 7685) of n bytes before
// its server_name.
func Padded(msg []byte, n int) []byte { return WithExtension(msg, 21, make([]byte, n), true) }

// WithECH is msg with an encrypted_client_hello extension (a GREASE-like
// outer one).
func WithECH(msg []byte) []byte {
	return WithExtension(msg, 0xfe0d, []byte{0, 0, 1, 0, 1, 7, 0, 0, 0, 0}, false)
}

// Framing is one way of sending a ClientHello for a name.
type Framing struct {
	Name string
	// Wire is the bytes; Late, if set, is sent after Pause (the rest of
	// a hello whose first bytes are Wire).
	Wire, Late []byte
	Pause      time.Duration
}

// Smuggling returns the framings of issue 18 for a ClientHello naming
// serverName: each one a Go or OpenSSL server reads that name from,
// and the reader before issue 18 let through.
func Smuggling(tb testing.TB, serverName string, pause time.Duration) []Framing {
	msg := Msg(tb, serverName)
	one := Records(msg, 0x0301, 1<<14)
	return []Framing{
		{Name: "a record of version 0x0201", Wire: Records(msg, 0x0201, 1<<14)},
		{Name: "a warning alert first", Wire: append(append([]byte(nil), WarningAlert...), one...)},
		{Name: "an empty handshake record first", Wire: append(append([]byte(nil), EmptyHandshake...), one...)},
		{Name: "padding past 16 KiB before server_name", Wire: Records(Padded(msg, 17<<10), 0x0301, 1<<14)},
		{Name: "records of 1 byte, padded past 16 KiB", Wire: Records(Padded(msg, 3<<10), 0x0303, 1)},
		{Name: "the first byte, then the rest after the inspection time", Wire: one[:1], Late: one[1:], Pause: pause},
		{Name: "an encrypted_client_hello extension", Wire: Records(WithECH(msg), 0x0301, 1<<14)},
	}
}
