package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func loadPolicy(t *testing.T, text string) *policy.Policy {
	t.Helper()
	p, err := policy.Load("test.yaml", []byte(text))
	if err != nil {
		t.Fatalf("policy.Load: %v", err)
	}
	return p
}

func entry(proto string, d policy.Decision) eventlog.Entry {
	return eventlog.Entry{ID: eventlog.NewID(), Proto: proto, Client: netip.MustParseAddrPort("127.0.0.1:40000"), Decision: d}
}

func TestMetricsCountWhatTheSinkRecords(t *testing.T) {
	p := loadPolicy(t, "version: 1\ndefault: deny\nallow:\n  - host: api.example.com\n    ports: [443]\n")
	a := New(Options{Policy: func() *policy.Policy { return p }})
	srv := httptest.NewServer(a)
	defer srv.Close()
	sink := &eventlog.Sink{Logger: zerolog.New(zerolog.NewTestWriter(t)), Observe: a.Observe}

	allow := p.Decide(policy.Request{Host: "api.example.com", IP: netip.MustParseAddr("93.184.215.14"), Port: 443})
	deny := p.Decide(policy.Request{Host: "evil.example.net", Port: 443})
	if !allow.Allowed() || allow.Denied() || !deny.Denied() {
		t.Fatalf("policy decided unexpectedly: allow %+v, deny %+v", allow, deny)
	}
	e := entry(eventlog.ProtoConnect, allow)
	e.BytesUp, e.BytesDown, e.Duration = 100, 2000, 1500*time.Millisecond
	sink.Record(e)
	sink.Record(entry(eventlog.ProtoConnect, deny))
	sink.Record(entry(eventlog.ProtoConnect, deny))
	failed := entry(eventlog.ProtoDNS, allow)
	failed.Err = errors.New("upstream timeout")
	failed.Duration = 3 * time.Millisecond
	sink.Record(failed)
	a.ObserveReload(p, nil)
	a.ObserveReload(p, policy.Errors{{File: "test.yaml", Line: 1, Column: 1, Message: "bad"}})
	var open atomic.Int64
	open.Store(7)
	a.TrackTunnels(eventlog.ProtoConnect, func() int { return int(open.Load()) })

	code, body := get(t, srv.URL+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`egress_decisions_total{proto="connect",reason="allowed_by_rule",verdict="allow"} 1`,
		`egress_decisions_total{proto="connect",reason="no_rule_matched",verdict="deny"} 2`,
		`egress_decisions_total{proto="dns",reason="allowed_by_rule",verdict="allow"} 1`,
		`egress_dns_queries_total{verdict="allow"} 1`,
		`egress_upstream_errors_total{proto="dns"} 1`,
		`egress_bytes_total{direction="up",proto="connect"} 100`,
		`egress_bytes_total{direction="down",proto="connect"} 2000`,
		`egress_duration_seconds_count{proto="connect"} 1`,
		`egress_duration_seconds_bucket{proto="connect",le="4.096"} 1`,
		`egress_duration_seconds_bucket{proto="connect",le="1.024"} 0`,
		`egress_active_tunnels{proto="connect"} 7`,
		`egress_policy_reloads_total{result="success"} 1`,
		`egress_policy_reloads_total{result="failure"} 1`,
		`egress_policy_last_reload_successful 0`,
		`go_goroutines `,
	} {
		if !strings.Contains(body, want+"\n") && !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	open.Store(3)
	if _, body := get(t, srv.URL+"/metrics"); !strings.Contains(body, `egress_active_tunnels{proto="connect"} 3`+"\n") {
		t.Error("active tunnels gauge does not follow the data path")
	}
}

func TestDenialsKeepsTheLastN(t *testing.T) {
	p := loadPolicy(t, "version: 1\ndefault: deny\n")
	a := New(Options{Policy: func() *policy.Policy { return p }, Denials: 3})
	srv := httptest.NewServer(a)
	defer srv.Close()

	// An allowed entry is not a denial.
	a.Observe(entry(eventlog.ProtoHTTP, policy.Decision{Verdict: policy.Allow, Reason: policy.ReasonDefaultAllow}))
	for i := range 5 {
		d := p.Decide(policy.Request{Host: fmt.Sprintf("h%d.example.com", i), Port: 443})
		a.Observe(entry(eventlog.ProtoConnect, d))
	}
	code, body := get(t, srv.URL+"/denials")
	if code != 200 {
		t.Fatalf("/denials: %d %s", code, body)
	}
	var ds []Denial
	if err := json.Unmarshal([]byte(body), &ds); err != nil {
		t.Fatalf("/denials is not JSON: %v\n%s", err, body)
	}
	var hosts []string
	for _, d := range ds {
		hosts = append(hosts, d.Host)
		if d.Event != "deny" || d.Reason != string(policy.ReasonNoRuleMatched) || d.Port != 443 || d.Policy != "test.yaml" || d.Client != "127.0.0.1:40000" {
			t.Errorf("denial %+v: wrong fields", d)
		}
	}
	if got, want := strings.Join(hosts, ","), "h2.example.com,h3.example.com,h4.example.com"; got != want {
		t.Errorf("/denials hosts = %s, want %s (the last 3, oldest first)", got, want)
	}
	_, body = get(t, srv.URL+"/denials?limit=1")
	if !strings.Contains(body, "h4.example.com") || strings.Contains(body, "h3.example.com") {
		t.Errorf("/denials?limit=1 = %s, want only the newest", body)
	}
	if code, _ := get(t, srv.URL+"/denials?limit=x"); code != http.StatusBadRequest {
		t.Errorf("/denials?limit=x: %d, want 400", code)
	}
	if _, body := get(t, srv.URL+"/metrics"); !strings.Contains(body, "egress_denials_buffer_overwritten_total 2\n") {
		t.Error("overwritten denials are not counted")
	}
}

func TestDenialsIsAnEmptyArrayAtFirst(t *testing.T) {
	srv := httptest.NewServer(New(Options{}))
	defer srv.Close()
	if _, body := get(t, srv.URL+"/denials"); strings.TrimSpace(body) != "[]" {
		t.Errorf("/denials = %q, want []", body)
	}
}

func TestProbesAndPolicy(t *testing.T) {
	var cur atomic.Pointer[policy.Policy]
	loaded := time.Date(2026, 11, 25, 14, 0, 0, 0, time.UTC)
	a := New(Options{Policy: cur.Load, LoadedAt: func() time.Time { return loaded }})
	srv := httptest.NewServer(a)
	defer srv.Close()

	if code, _ := get(t, srv.URL+"/healthz"); code != 200 {
		t.Errorf("/healthz: %d, want 200", code)
	}
	if code, body := get(t, srv.URL+"/readyz"); code != 503 || !strings.Contains(body, "no policy loaded") {
		t.Errorf("/readyz without a policy: %d %q, want 503 no policy loaded", code, body)
	}
	if code, _ := get(t, srv.URL+"/policy"); code != 503 {
		t.Errorf("/policy without a policy: %d, want 503", code)
	}

	const text = "version: 1\ndefault: deny\nmode: audit\n"
	cur.Store(loadPolicy(t, text))
	a.SetListener("http", false)
	if code, body := get(t, srv.URL+"/readyz"); code != 503 || !strings.Contains(body, "listener http is down") {
		t.Errorf("/readyz with a listener down: %d %q, want 503", code, body)
	}
	a.SetListener("http", true)
	if code, body := get(t, srv.URL+"/readyz"); code != 200 {
		t.Errorf("/readyz ready: %d %q, want 200", code, body)
	}

	code, body := get(t, srv.URL+"/policy")
	var info PolicyInfo
	if err := json.Unmarshal([]byte(body), &info); code != 200 || err != nil {
		t.Fatalf("/policy: %d %v %s", code, err, body)
	}
	want := PolicyInfo{Source: "test.yaml", Hash: cur.Load().Hash(), LoadedAt: loaded, Default: "deny", Mode: "audit"}
	if info != want {
		t.Errorf("/policy = %+v, want %+v", info, want)
	}
	if info.Hash == "" {
		t.Error("/policy has an empty hash")
	}

	// A refused reload shows in /policy with its errors; a later success
	// replaces it.
	a.ObserveReload(cur.Load(), fmt.Errorf("load policy: %w", policy.Errors{{File: "test.yaml", Line: 3, Column: 5, Message: "unknown field \"defualt\""}}))
	_, body = get(t, srv.URL+"/policy")
	info = PolicyInfo{}
	if err := json.Unmarshal([]byte(body), &info); err != nil || info.LastReload == nil {
		t.Fatalf("/policy after a refused reload: %v %s", err, body)
	}
	if r := info.LastReload; r.Result != "failure" || len(r.Errors) != 1 || !strings.HasPrefix(r.Errors[0], "test.yaml:3:5: ") || r.Time.IsZero() {
		t.Errorf("last_reload = %+v, want a failure at test.yaml:3:5", r)
	}
	if info.Hash != cur.Load().Hash() {
		t.Errorf("/policy hash %s after a refusal, want the policy kept", info.Hash)
	}
	a.ObserveReload(cur.Load(), nil)
	_, body = get(t, srv.URL+"/policy")
	info = PolicyInfo{}
	if err := json.Unmarshal([]byte(body), &info); err != nil || info.LastReload == nil || info.LastReload.Result != "success" || len(info.LastReload.Errors) != 0 {
		t.Errorf("/policy after a successful reload: %s", body)
	}
	resp, err := http.Post(srv.URL+"/policy", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /policy: %d, want 405", resp.StatusCode)
	}
}

func TestServeAndShutdown(t *testing.T) {
	a := New(Options{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- a.Serve(l) }()
	if code, body := get(t, "http://"+l.Addr().String()+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Serve did not return after Shutdown")
	}

	// Shutdown before Serve: Serve must not start serving.
	b := New(Options{})
	b.Shutdown(ctx)
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Serve(l2); !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve after Shutdown: %v, want ErrServerClosed", err)
	}
}

// BenchmarkRecord compares recording through an eventlog.Sink with and
// without the admin's Observe: the cost metrics add to the data path.
func BenchmarkRecord(b *testing.B) {
	p, err := policy.Load("bench.yaml", []byte("version: 1\ndefault: deny\n"))
	if err != nil {
		b.Fatal(err)
	}
	allow := entry(eventlog.ProtoConnect, policy.Decision{Verdict: policy.Allow, Reason: policy.ReasonDefaultAllow, Policy: "default"})
	allow.BytesUp, allow.BytesDown, allow.Duration = 10, 10, time.Second
	deny := entry(eventlog.ProtoConnect, p.Decide(policy.Request{Host: "x.example.com", Port: 443}))
	for _, tc := range []struct {
		name string
		e    eventlog.Entry
	}{{"allow", allow}, {"deny", deny}} {
		b.Run(tc.name+"/baseline", func(b *testing.B) {
			s := &eventlog.Sink{Logger: zerolog.New(io.Discard)}
			b.ReportAllocs()
			for b.Loop() {
				s.Record(tc.e)
			}
		})
		b.Run(tc.name+"/admin", func(b *testing.B) {
			s := &eventlog.Sink{Logger: zerolog.New(io.Discard), Observe: New(Options{}).Observe}
			b.ReportAllocs()
			for b.Loop() {
				s.Record(tc.e)
			}
		})
	}
}

// TestIndexListsEndpoints (issue 21): GET / lists the endpoints instead of
// a bare 404, and each one it lists is served.
func TestIndexListsEndpoints(t *testing.T) {
	p := loadPolicy(t, "version: 1\ndefault: deny\n")
	a := New(Options{Policy: func() *policy.Policy { return p }})
	srv := httptest.NewServer(a)
	defer srv.Close()
	code, body := get(t, srv.URL+"/")
	if code != http.StatusOK {
		t.Fatalf("GET / = %d %q", code, body)
	}
	for _, path := range []string{"/metrics", "/healthz", "/readyz", "/policy", "/denials"} {
		if !strings.Contains(body, "\n  "+path+" ") {
			t.Errorf("GET / lacks %s:\n%s", path, body)
		}
		if code, _ := get(t, srv.URL+path); code == http.StatusNotFound {
			t.Errorf("%s is listed but not served", path)
		}
	}
	if code, _ := get(t, srv.URL+"/nope"); code != http.StatusNotFound {
		t.Errorf("GET /nope = %d; want 404", code)
	}
}
