package eventlog_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
)

func decide(t *testing.T, yaml string, r policy.Request) policy.Decision {
	t.Helper()
	p, err := policy.Load("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return p.Decide(r)
}

const denyAll = "version: 1\ndefault: deny\nallow:\n  - host: api.example.com\n    ports: [443]\n"

func lines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		m := map[string]any{}
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func TestSinkLogsDenialsWithEveryField(t *testing.T) {
	var buf bytes.Buffer
	var seen []eventlog.Entry
	s := &eventlog.Sink{Logger: zerolog.New(&buf), Observe: func(e eventlog.Entry) { seen = append(seen, e) }}
	d := decide(t, denyAll, policy.Request{Host: "db.example.com", IP: netip.MustParseAddr("203.0.113.7"), Port: 5432})
	s.Record(eventlog.Entry{ID: "abc", Proto: eventlog.ProtoConnect, Client: netip.MustParseAddrPort("127.0.0.1:4000"), Decision: d})

	got := lines(t, &buf)
	if len(got) != 1 {
		t.Fatalf("want one line, got %d: %s", len(got), buf.String())
	}
	want := map[string]any{
		"level": "warn", "id": "abc", "event": "deny", "proto": "connect", "client": "127.0.0.1:4000",
		"host": "db.example.com", "port": float64(5432), "ip": "203.0.113.7", "rule": "",
		"policy": "test.yaml", "client_policy": "default",
	}
	for k, v := range want {
		if got[0][k] != v {
			t.Errorf("field %s = %v, want %v", k, got[0][k], v)
		}
	}
	if got[0]["reason"] == "" || got[0]["hint"] == nil {
		t.Errorf("a denial must carry its reason and hint: %v", got[0])
	}
	if len(seen) != 1 || seen[0].ID != "abc" {
		t.Errorf("Observe saw %v, want the one entry", seen)
	}
}

func TestSinkLogsAllowedOnlyWhenAsked(t *testing.T) {
	allowed := decide(t, denyAll, policy.Request{Host: "api.example.com", IP: netip.MustParseAddr("203.0.113.7"), Port: 443})
	if !allowed.Allowed() {
		t.Fatalf("fixture: want an allow, got %+v", allowed)
	}
	e := eventlog.Entry{ID: "x", Proto: eventlog.ProtoConnect, Decision: allowed, BytesUp: 10, BytesDown: 20, Duration: 1500 * time.Millisecond, Err: errors.New("boom")}

	var quiet bytes.Buffer
	observed := 0
	ok := e
	ok.Err = nil
	(&eventlog.Sink{Logger: zerolog.New(&quiet), Observe: func(eventlog.Entry) { observed++ }}).Record(ok)
	if quiet.Len() != 0 {
		t.Errorf("allowed entry logged without LogAllowed: %s", quiet.String())
	}
	if observed != 1 {
		t.Errorf("Observe must see allowed entries too; saw %d", observed)
	}

	var loud bytes.Buffer
	(&eventlog.Sink{Logger: zerolog.New(&loud), LogAllowed: true}).Record(e)
	got := lines(t, &loud)
	if len(got) != 1 || got[0]["level"] != "warn" || got[0]["event"] != "allow" ||
		got[0]["bytes_up"] != float64(10) || got[0]["bytes_down"] != float64(20) ||
		got[0]["duration_ms"] != float64(1500) || got[0]["error"] != "boom" {
		t.Errorf("allowed close line = %v", got)
	}
}

func TestNilSinkRecordsNothing(t *testing.T) {
	var s *eventlog.Sink
	s.Record(eventlog.Entry{}) // must not panic
}

func TestNewIDIsUniqueHex(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := eventlog.NewID()
		if len(id) != 16 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("id %q is not 16 hex digits", id)
		}
		if seen[id] {
			t.Fatalf("id %q repeated", id)
		}
		seen[id] = true
	}
}

// An allowed destination that could not be reached is a line even when
// allowed connections are not logged: the client's 502 carries its id.
func TestSinkLogsFailures(t *testing.T) {
	allowed := decide(t, denyAll, policy.Request{Host: "api.example.com", Port: 443})
	var buf bytes.Buffer
	(&eventlog.Sink{Logger: zerolog.New(&buf)}).Record(eventlog.Entry{ID: "f1", Proto: eventlog.ProtoConnect, Decision: allowed, Err: errors.New("lookup api.example.com: no such host")})
	got := lines(t, &buf)
	if len(got) != 1 || got[0]["id"] != "f1" || got[0]["level"] != "warn" || got[0]["error"] != "lookup api.example.com: no such host" {
		t.Errorf("failure line = %v", got)
	}
}

// BenchmarkLog is one canonical line of an allowed plain-HTTP request,
// as log.allowed writes it.
func BenchmarkLog(b *testing.B) {
	pol, err := policy.Load("bench.yaml", []byte("version: 1\ndefault: deny\nallow:\n  - cidr: 127.0.0.1/32\n"))
	if err != nil {
		b.Fatal(err)
	}
	d := pol.Decide(policy.Request{Host: "127.0.0.1", Port: 8080, IP: netip.MustParseAddr("127.0.0.1")})
	l := zerolog.New(io.Discard).With().Timestamp().Logger()
	e := eventlog.Entry{ID: eventlog.NewID(), Proto: eventlog.ProtoHTTP, Client: netip.MustParseAddrPort("127.0.0.1:40000"), Decision: d,
		Method: "GET", URL: "http://127.0.0.1:8080/", BytesDown: 2, Duration: time.Millisecond}
	b.ReportAllocs()
	for b.Loop() {
		eventlog.Log(l, e)
	}
}

// egress run's refusals of what never reached a listener (a unix socket,
// a UDP packet) are canonical lines too, with the fields of their kind.
func TestSandboxRefusalLines(t *testing.T) {
	var buf bytes.Buffer
	l := zerolog.New(&buf)
	eventlog.Log(l, eventlog.Entry{ID: "u", Proto: eventlog.ProtoUnix, PID: 42, Process: "python3",
		Decision: policy.Decision{Verdict: policy.Deny, Reason: policy.ReasonUnixDatagram, Hint: "use SOCK_STREAM"}})
	eventlog.Log(l, eventlog.Entry{ID: "p", Proto: "udp",
		Decision: policy.Decision{Verdict: policy.Deny, Reason: policy.ReasonSandboxRefused, IP: netip.MustParseAddr("192.0.2.1"), Port: 123}})
	ls := lines(t, &buf)
	if len(ls) != 2 {
		t.Fatalf("%d lines, want 2", len(ls))
	}
	u, p := ls[0], ls[1]
	if u["event"] != "deny" || u["proto"] != "unix" || u["path"] != "" || u["socket"] != "" || u["pid"] != 42.0 ||
		u["process"] != "python3" || u["reason"] != "unix_dgram_refused" || u["hint"] != "use SOCK_STREAM" || u["level"] != "warn" {
		t.Errorf("unix line %v", u)
	}
	if p["event"] != "deny" || p["proto"] != "udp" || p["ip"] != "192.0.2.1" || p["port"] != 123.0 || p["reason"] != "sandbox_refused" || p["path"] != nil {
		t.Errorf("packet line %v", p)
	}
}
