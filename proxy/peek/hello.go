package peek

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/egress-proxy/egress/policy"
)

// The bounds of the ClientHello reader.
//
// MaxHello bounds the ClientHello handshake message (its 4-byte header
// included): the largest real hellos (post-quantum key shares, dozens of
// extensions, padding) are under 8 KiB, Go's crypto/tls takes up to
// 64 KiB (maxHandshake) and OpenSSL up to 128 KiB; anything larger is
// refused, never passed. maxHelloWire bounds the TLS records carrying it
// (a hello cut into 1-byte records costs 6 bytes of record per byte).
const (
	MaxHello     = 64 << 10
	maxHelloWire = 2 * MaxHello
	// maxRecord is the largest record payload Go's crypto/tls reads
	// before the version is known (maxCiphertext: 2^14 + 2048);
	// OpenSSL's limit is lower.
	maxRecord = 1<<14 + 2048
	// maxUseless is how many records in a row may carry nothing
	// (empty handshake records, warning alerts) before both servers
	// give up (Go: 16, OpenSSL: 32 empty records).
	maxUseless = 32
)

const (
	recordTypeChangeCipherSpec = 20 // RFC 8446 §5.1
	recordTypeAlert            = 21
	extensionECH               = 0xfe0d // draft-ietf-tls-esni-22 §5
	alertLevelWarning          = 1      // RFC 5246 §7.2
	alertCloseNotify           = 0
)

// Hello is what a complete ClientHello said.
type Hello struct {
	// Name is the host_name of its server_name extension (RFC 6066 §3),
	// "" when it has none (clients send none for an IP literal).
	Name string
	// ECH: it carries encrypted_client_hello (a real one or GREASE).
	ECH bool
	// Records is how many TLS records it came in, Bytes how many bytes
	// of records.
	Records, Bytes int
}

// UnreadableError says why the start of a TLS handshake could not be
// read as one ClientHello: the connection is refused
// (policy.ReasonTLSUnreadable), never passed.
type UnreadableError struct {
	Bytes   int    // bytes read from the client
	Records int    // complete TLS records among them
	Why     string // what went wrong
}

func (e *UnreadableError) Error() string {
	return fmt.Sprintf("no readable TLS ClientHello in %d bytes (%d records): %s", e.Bytes, e.Records, e.Why)
}

// Reader choice (issue 18, DESIGN.md): crypto/tls itself could be the
// reader, a server handshake over a conn replaying the recorded bytes
// that stops in GetConfigForClient. It is not, for three reasons: it is
// not incremental (with 1-byte records it would have to be restarted for
// every segment, quadratic in the hello's size), it is stricter than
// OpenSSL in framing (empty records), so the bytes an OpenSSL upstream
// takes would be "unreadable" to it, and it costs a tls.Conn, a
// handshake state and a full parse of every extension per connection
// (on an ordinary 1.5 KB hello, BenchmarkHelloCryptoTLS: ~5.5 µs, 8.8 KB
// and 41 allocations; BenchmarkHello: ~0.25 µs, 48 B, 2 allocations).
// This reader follows the same rules (crypto/tls's handshake_messages.go
// and conn.go, OpenSSL 3's record layer and tls_parse_ctos_server_name)
// and the differential tests hold it to both servers.
//
// What the servers take as a first flight, found with the differential
// test (Go 1.26, OpenSSL 3.0.19): Go takes any record version below
// 0x1000 and up to 16 warning alerts first, but no empty record; OpenSSL
// takes only versions 0x03xx and up to 32 empty handshake records, but
// no alert first; neither takes a change_cipher_spec, application data,
// a fatal alert or close_notify first, nor a second server_name or
// host_name; Go takes records up to 18432 bytes, OpenSSL 16384; Go takes
// a name with a NUL byte or a name type other than host_name before it,
// OpenSSL neither. The reader takes the union of the framings and
// refuses the dubious names.

// helloScan is the incremental state of reading a ClientHello from the
// bytes a client sent so far: records already taken apart are not read
// again when more bytes come.
type helloScan struct {
	off     int    // bytes of whole records consumed
	records int    // whole records consumed
	useless int    // records in a row that carried no handshake bytes
	msg     []byte // handshake bytes so far, when they span records
	single  []byte // the whole hello, when one record held it (no copy)
}

// scan status.
const (
	scanMore   = iota // could still become a ClientHello: read on
	scanDone          // a complete ClientHello
	scanNotTLS        // the first bytes are no TLS record a server takes
	scanBad           // TLS that cannot become a ClientHello: refuse
)

// couldBeRecord reports whether b (at most 5 bytes) could start a TLS
// record that Go's crypto/tls or OpenSSL 3 reads as the first of a
// handshake: a handshake or alert record (Go refuses any other first
// record type, OpenSSL too), a version below 0x1000 (Go accepts any
// such: "16 02 01" included; OpenSSL wants major 3), a length within
// maxRecord. An SSLv2-format hello (OpenSSL only) has no extensions,
// hence no name: it is not TLS here and is decided on the address.
func couldBeRecord(b []byte) bool {
	if len(b) > 0 && b[0] != recordTypeHandshake && b[0] != recordTypeAlert {
		return false
	}
	if len(b) > 1 && b[1] >= 0x10 {
		return false
	}
	if len(b) >= 5 && int(binary.BigEndian.Uint16(b[3:5])) > maxRecord {
		return false
	}
	return true
}

// TLS reports whether b could be the start of a TLS handshake that a Go
// or OpenSSL server accepts: only then is the ClientHello reader the
// one to read it (see ReadHello).
func TLS(b []byte) bool { return len(b) > 0 && couldBeRecord(b[:min(len(b), 5)]) }

// next takes apart the whole records of b (every byte read so far) that
// it has not seen yet.
func (s *helloScan) next(b []byte) (Hello, int, string) {
	if s.off == 0 && !TLS(b) {
		return Hello{}, scanNotTLS, ""
	}
	for {
		rest := b[s.off:]
		if len(rest) < 5 {
			if !couldBeRecord(rest) {
				return Hello{}, scanBad, fmt.Sprintf("a record of type %d, version %#x", rest[0], rest[1:min(len(rest), 3)])
			}
			return Hello{}, scanMore, ""
		}
		typ, n := rest[0], int(binary.BigEndian.Uint16(rest[3:5]))
		if !couldBeRecord(rest[:5]) {
			return Hello{}, scanBad, fmt.Sprintf("record %d: type %d, version %#04x, length %d", s.records+1, typ, binary.BigEndian.Uint16(rest[1:3]), n)
		}
		if s.off+5+n > maxHelloWire {
			return Hello{}, scanBad, fmt.Sprintf("the hello's records are over %d bytes", maxHelloWire)
		}
		if len(rest) < 5+n {
			return Hello{}, scanMore, ""
		}
		payload := rest[5 : 5+n]
		s.off += 5 + n
		s.records++
		switch {
		case typ == recordTypeAlert:
			// A warning alert is dropped by both servers before the
			// hello (Go's readRecordOrCCS retries); a fatal alert or
			// close_notify ends the handshake.
			if n != 2 || payload[0] != alertLevelWarning || payload[1] == alertCloseNotify {
				return Hello{}, scanBad, fmt.Sprintf("record %d: an alert % x", s.records, payload)
			}
			s.useless++
		case n == 0:
			s.useless++ // an empty handshake record: OpenSSL skips it
		default:
			s.useless = 0
			if len(s.msg) == 0 && s.single == nil && n >= 4 {
				if l := 4 + (int(payload[1])<<16 | int(payload[2])<<8 | int(payload[3])); l <= n {
					s.single = payload[:l]
				}
			}
			if s.single == nil {
				s.msg = append(s.msg, payload...)
			}
		}
		if s.useless > maxUseless {
			return Hello{}, scanBad, fmt.Sprintf("%d records in a row without handshake bytes", s.useless)
		}
		msg := s.single
		if msg == nil {
			msg = s.msg
		}
		if len(msg) > 0 && msg[0] != handshakeTypeClientHello {
			return Hello{}, scanBad, fmt.Sprintf("the first handshake message is of type %d, not a ClientHello", msg[0])
		}
		if len(msg) < 4 {
			continue
		}
		l := 4 + (int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3]))
		if l > MaxHello {
			return Hello{}, scanBad, fmt.Sprintf("a ClientHello of %d bytes, over the %d-byte bound", l, MaxHello)
		}
		if len(msg) < l {
			continue
		}
		h, err := parseHello(msg[4:l])
		if err != nil {
			return Hello{}, scanBad, err.Error()
		}
		h.Records, h.Bytes = s.records, s.off
		return h, scanDone, ""
	}
}

// ParseHello reads the ClientHello in b, the bytes a client sent first.
// It returns errNotTLS when b cannot be the start of a TLS handshake,
// errIncomplete when more bytes could complete one, and an
// *UnreadableError when they cannot.
func ParseHello(b []byte) (Hello, error) {
	var s helloScan
	h, st, why := s.next(b)
	return h, s.result(st, why, len(b))
}

var (
	errNotTLS     = errors.New("not TLS")
	errIncomplete = errors.New("incomplete ClientHello")
)

func (s *helloScan) result(st int, why string, n int) error {
	switch st {
	case scanDone:
		return nil
	case scanNotTLS:
		return errNotTLS
	case scanMore:
		return errIncomplete
	}
	return &UnreadableError{Bytes: n, Records: s.records, Why: why}
}

// ReadHello reads a TLS ClientHello from c, buf being the bytes read from
// it already (TLS(buf) is true). It reads until the hello is complete, or
// cannot become one, or MaxHello is passed, or timeout passes (counted
// from the call: the caller calls it when the first byte came). It
// returns every byte read, which the caller replays upstream once it
// has decided. Anything but a complete hello is an *UnreadableError: the
// caller refuses the connection (policy.ReasonTLSUnreadable).
func ReadHello(c net.Conn, buf []byte, timeout time.Duration) (Hello, []byte, error) {
	var s helloScan
	h, st, why := s.next(buf)
	if st != scanMore {
		return h, buf, s.result(st, why, len(buf))
	}
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return Hello{}, buf, err
	}
	defer c.SetReadDeadline(time.Time{})
	if cap(buf)-len(buf) < 2048 {
		buf = append(make([]byte, 0, max(2048, 2*len(buf))), buf...)
	}
	for {
		if len(buf) >= maxHelloWire {
			return Hello{}, buf, &UnreadableError{Bytes: len(buf), Records: s.records, Why: fmt.Sprintf("the hello's records are over %d bytes", maxHelloWire)}
		}
		if len(buf) == cap(buf) {
			nb := make([]byte, len(buf), min(2*cap(buf), maxHelloWire))
			copy(nb, buf)
			buf = nb
		}
		n, rerr := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if n > 0 {
			h, st, why = s.next(buf)
			if st != scanMore {
				return h, buf, s.result(st, why, len(buf))
			}
		}
		if rerr != nil {
			why := "the client closed before the hello was complete"
			if errors.Is(rerr, os.ErrDeadlineExceeded) {
				why = fmt.Sprintf("the inspection time (%s) passed before the hello was complete", timeout)
			} else if !errors.Is(rerr, net.ErrClosed) && rerr.Error() != "EOF" {
				why = fmt.Sprintf("reading the hello: %v", rerr)
			}
			return Hello{}, buf, &UnreadableError{Bytes: len(buf), Records: s.records, Why: why}
		}
	}
}

// parseHello reads a ClientHello body (RFC 8446 §4.1.2) as Go's
// crypto/tls does, and refuses what either Go or OpenSSL would: a
// server_name extension or host_name twice (RFC 6066 §3 allows one
// name of a type; Go and OpenSSL refuse a second), any extension twice,
// trailing bytes.
func parseHello(b []byte) (Hello, error) {
	var h Hello
	r := reader(b)
	if !r.skip(2+32) || // legacy_version, random
		!r.skipVec(1) || // legacy_session_id
		!r.skipVec(2) || // cipher_suites
		!r.skipVec(1) { // legacy_compression_methods
		return h, errBadHello
	}
	if len(r) == 0 {
		return h, nil // no extensions at all (TLS 1.0 style)
	}
	exts, ok := r.vec(2)
	if !ok || len(r) != 0 {
		return h, errBadHello
	}
	var seen [8]uint16 // the common case: a handful of extensions, no allocation
	seenExt := seen[:0]
	for len(exts) > 0 {
		typ, ok1 := exts.u16()
		data, ok2 := exts.vec(2)
		if !ok1 || !ok2 {
			return h, errBadHello
		}
		for _, t := range seenExt {
			if t == typ {
				return h, fmt.Errorf("extension %d twice", typ)
			}
		}
		seenExt = append(seenExt, typ)
		switch typ {
		case extensionECH:
			h.ECH = true
		case extensionServerName:
			list, ok := data.vec(2)
			if !ok || len(data) != 0 || len(list) == 0 {
				return h, fmt.Errorf("%w: server_name", errBadHello)
			}
			for len(list) > 0 {
				nt := list[0]
				list = list[1:]
				host, ok := list.vec(2)
				if !ok || len(host) == 0 {
					return h, fmt.Errorf("%w: server_name", errBadHello)
				}
				if nt != nameTypeHostName {
					continue // Go skips other types; OpenSSL refuses them
				}
				if h.Name != "" {
					return h, errors.New("two host_name entries in server_name")
				}
				if bytes.IndexByte(host, 0) >= 0 {
					return h, errors.New("a server_name with a NUL byte")
				}
				h.Name = string(host)
			}
		}
	}
	return h, nil
}

// First is a client's first bytes, with the ClientHello read from them
// when they start a TLS handshake.
type First struct {
	Bytes []byte // every byte read: the caller replays them upstream
	TLS   bool   // they start a TLS handshake (see TLS)
	Hello Hello  // the ClientHello, when TLS and Err is nil
	Err   error  // when TLS: why no ClientHello could be read (*UnreadableError)
}

// ReadFirst completes b, the first bytes read from c: when they start a
// TLS handshake, the ClientHello is read within timeout, counted from
// now (see ReadHello); other bytes are returned as they are.
func ReadFirst(c net.Conn, b []byte, timeout time.Duration) First {
	if !TLS(b) {
		return First{Bytes: b}
	}
	h, b, err := ReadHello(c, b, timeout)
	return First{Bytes: b, TLS: true, Hello: h, Err: err}
}

// Refusal is the refusal of a connection on its TLS alone, whatever
// name the hello carries, or nil: a handshake that could not be read
// (policy.ReasonTLSUnreadable) or one carrying ECH that pol does not let
// through (policy.ReasonTLSECH). d is the connection's decision so far (its
// address, port, client), which the refusal fills in. The name a
// complete hello carries is the caller's to decide on.
func (f First) Refusal(pol *policy.Policy, d policy.Decision) *policy.Decision {
	if !f.TLS {
		return nil
	}
	d.Verdict, d.Audit, d.Rule = policy.Deny, false, nil
	switch {
	case f.Err != nil:
		d.Reason = policy.ReasonTLSUnreadable
		d.Hint = "the connection starts a TLS handshake, but egress could not read its ClientHello (" + f.Err.Error() + "): a server might read a name from it that egress did not see"
	case f.Hello.ECH && !pol.TLS.ECHPass && pol.DecidesOnNames():
		d.Reason = policy.ReasonTLSECH
		if f.Hello.Name != "" {
			d.Host = f.Hello.Name
		}
		d.Hint = "the ClientHello carries encrypted_client_hello: the server routes on an encrypted name egress cannot read; tls: {ech: pass} in the policy lets it through"
	default:
		return nil
	}
	return &d
}
