// Package admin is egress's admin HTTP handler: Prometheus metrics,
// health and readiness probes, the policy in force and the recent denials.
//
// It learns what happens on the data paths through Observe, which the
// eventlog.Sink calls for every connection, request and query, and through
// a few small hooks (ObserveReload, TrackTunnels, SetListener). It uses its
// own Prometheus registry, never the global one. It does not listen by
// itself: mount Handler on a loopback listener (listen.admin).
//
// Endpoints:
//
//	/metrics   Prometheus text format
//	/healthz   200 while the process serves
//	/readyz    200 when a policy is loaded and every listener is up, else 503
//	/policy    JSON: source, hash, loaded_at, default, mode, and the last
//	           reload attempt (time, result, errors as FILE:LINE:COL)
//	/denials   JSON: the last denials, oldest first (?limit=N)
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
)

// DefaultDenials is how many denials /denials keeps by default.
const DefaultDenials = 200

// Metric names. Dashboards and alerts use them: never rename one.
const (
	MetricDecisions         = "egress_decisions_total"                  // {verdict,reason,proto}
	MetricDNSQueries        = "egress_dns_queries_total"                // {verdict}
	MetricUpstreamErrors    = "egress_upstream_errors_total"            // {proto}; proto="dns" = DNS upstream errors
	MetricBytes             = "egress_bytes_total"                      // {proto,direction}
	MetricDuration          = "egress_duration_seconds"                 // {proto} histogram
	MetricActiveTunnels     = "egress_active_tunnels"                   // {proto} gauge
	MetricReloads           = "egress_policy_reloads_total"             // {result}
	MetricLastReloadSuccess = "egress_policy_last_reload_successful"    // gauge 0/1
	MetricPolicyLoaded      = "egress_policy_loaded_timestamp_seconds"  // gauge
	MetricListenerUp        = "egress_listener_up"                      // {listener} gauge 0/1
	MetricDenialsDropped    = "egress_denials_buffer_overwritten_total" // denials pushed out of /denials
)

// Admin collects metrics and recent denials and serves them. Create it
// with New; its methods are safe for concurrent use.
type Admin struct {
	policyFn    func() *policy.Policy
	loadedAt    func() time.Time
	restartWarn func(*policy.Policy) string

	reg        *prometheus.Registry
	decisions  *prometheus.CounterVec
	dnsQueries *prometheus.CounterVec
	upErrors   *prometheus.CounterVec
	bytes      *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	reloads    *prometheus.CounterVec
	lastOK     prometheus.Gauge
	loadedTS   prometheus.Gauge
	listenerUp *prometheus.GaugeVec
	dropped    prometheus.Counter

	mu        sync.Mutex
	ring      []Denial
	next      int // ring index of the next write
	full      bool
	listeners map[string]bool
	tracked   map[string]bool
	// lastReload is the last reload attempt; nil before the first.
	lastReload *ReloadAttempt

	mux *http.ServeMux
	eps []endpoint // what mux serves, listed by GET /

	srvMu  sync.Mutex
	srv    *http.Server
	closed bool // Shutdown was called: a later Serve returns at once
}

var _ http.Handler = (*Admin)(nil)

// Options configure New.
type Options struct {
	// Policy returns the policy in force (reload.Watcher.Current). Nil
	// means none: /readyz answers 503.
	Policy func() *policy.Policy
	// LoadedAt returns when that policy was loaded; nil leaves loaded_at
	// out of /policy.
	LoadedAt func() time.Time
	// Denials is the size of the /denials ring; 0 means DefaultDenials.
	Denials int
	// RestartWarning, if set, says what a reload to a policy changed that
	// applies only after a restart (reload.Watcher.RestartWarning); /policy
	// shows it with the last reload.
	RestartWarning func(*policy.Policy) string
}

// New returns an Admin with its metrics registered on a fresh registry
// (plus the Go and process collectors).
func New(o Options) *Admin {
	n := o.Denials
	if n <= 0 {
		n = DefaultDenials
	}
	a := &Admin{
		policyFn:    o.Policy,
		loadedAt:    o.LoadedAt,
		restartWarn: o.RestartWarning,
		reg:         prometheus.NewRegistry(),
		ring:        make([]Denial, n),
		listeners:   map[string]bool{},
		tracked:     map[string]bool{},
	}
	a.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricDecisions,
		Help: "Decisions on connections, requests and DNS queries, by verdict (allow, deny, audit_deny), reason code and protocol.",
	}, []string{"verdict", "reason", "proto"})
	a.dnsQueries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricDNSQueries,
		Help: "DNS queries answered by the DNS proxy, by verdict.",
	}, []string{"verdict"})
	a.upErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricUpstreamErrors,
		Help: "Allowed connections, requests or queries that failed upstream (dial, resolve, DNS upstream), by protocol.",
	}, []string{"proto"})
	a.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricBytes,
		Help: "Bytes copied, by protocol and direction (up: client to destination, down: back), counted when a connection closes.",
	}, []string{"proto", "direction"})
	a.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: MetricDuration,
		Help: "Lifetime of connections, requests and DNS queries, by protocol.",
		// 1ms to ~17min: DNS answers and plain requests at the low end,
		// long-lived tunnels at the top.
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 11),
	}, []string{"proto"})
	a.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricReloads,
		Help: "Policy reload attempts by result (success, failure); a failure keeps the old policy.",
	}, []string{"result"})
	a.lastOK = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: MetricLastReloadSuccess,
		Help: "1 if the last policy reload succeeded (or none was tried), 0 if it was refused.",
	})
	a.loadedTS = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: MetricPolicyLoaded,
		Help: "Unix time the policy in force was loaded.",
	})
	a.listenerUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: MetricListenerUp,
		Help: "1 while a listener is serving, 0 when it is configured but down.",
	}, []string{"listener"})
	a.dropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: MetricDenialsDropped,
		Help: "Denials pushed out of the /denials buffer by newer ones.",
	})
	a.reg.MustRegister(a.decisions, a.dnsQueries, a.upErrors, a.bytes, a.duration,
		a.reloads, a.lastOK, a.loadedTS, a.listenerUp, a.dropped,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Present from the start so that rate() and alerts see a zero.
	a.reloads.WithLabelValues("success")
	a.reloads.WithLabelValues("failure")
	a.lastOK.Set(1)
	if a.loadedAt != nil {
		a.loadedTS.Set(float64(a.loadedAt().UnixNano()) / 1e9)
	}

	a.mux = http.NewServeMux()
	a.eps = a.endpoints()
	for _, e := range a.eps {
		a.mux.Handle("GET "+e.path, e.h)
	}
	// GET / lists the endpoints: an operator who opens the admin address
	// in a browser or curl learns what it serves, not a bare 404.
	a.mux.HandleFunc("GET /{$}", a.serveIndex)
	return a
}

// endpoint is one path of the admin listener and what it serves.
type endpoint struct {
	path, about string
	h           http.Handler
}

// endpoints are the admin listener's paths, in the order GET / lists them.
func (a *Admin) endpoints() []endpoint {
	return []endpoint{
		{"/metrics", "Prometheus metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{ErrorLog: nil})},
		{"/healthz", "200 while the process serves", http.HandlerFunc(a.serveHealthz)},
		{"/readyz", "200 once the policy is loaded and every listener is up; 503 while draining", http.HandlerFunc(a.serveReadyz)},
		{"/policy", "the policy in force: source, hash, load time, default, mode, last reload (JSON)", http.HandlerFunc(a.servePolicy)},
		{"/denials", "the last denials, newest last (JSON; ?limit=N)", http.HandlerFunc(a.serveDenials)},
	}
}

// serveIndex lists the endpoints, one per line.
func (a *Admin) serveIndex(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	var b strings.Builder
	b.WriteString("egress admin: GET one of\n")
	for _, e := range a.eps {
		fmt.Fprintf(&b, "  %-9s %s\n", e.path, e.about)
	}
	io.WriteString(w, b.String())
}

// Registry is the registry /metrics serves, for callers that add their
// own collectors.
func (a *Admin) Registry() *prometheus.Registry { return a.reg }

// Serve serves the admin endpoints on l until Shutdown. The server has
// its own timeouts: a slow scraper cannot hold a connection for ever.
func (a *Admin) Serve(l net.Listener) error {
	srv := &http.Server{
		Handler:           a,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
	}
	a.srvMu.Lock()
	if a.closed {
		a.srvMu.Unlock()
		l.Close()
		return http.ErrServerClosed
	}
	if a.srv != nil {
		a.srvMu.Unlock()
		return errors.New("admin: already serving")
	}
	a.srv = srv
	a.srvMu.Unlock()
	return srv.Serve(l)
}

// Shutdown stops Serve, waiting for requests in flight until ctx is done.
func (a *Admin) Shutdown(ctx context.Context) error {
	a.srvMu.Lock()
	srv := a.srv
	a.closed = true
	a.srvMu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Shutdown(ctx)
}

// ServeHTTP serves the admin endpoints.
func (a *Admin) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// Observe counts one entry of the data paths and remembers it if it is a
// denial. Set eventlog.Sink.Observe to it.
func (a *Admin) Observe(e eventlog.Entry) {
	d := e.Decision
	verdict := d.Event()
	a.decisions.WithLabelValues(verdict, string(d.Reason), e.Proto).Inc()
	if e.Proto == eventlog.ProtoDNS {
		a.dnsQueries.WithLabelValues(verdict).Inc()
	}
	// An error on an entry that was allowed (and not an audit denial,
	// whose Err may say what a DNS answer lost) happened upstream: dial,
	// resolve, a DNS upstream that failed.
	if e.Err != nil && !d.Denied() {
		a.upErrors.WithLabelValues(e.Proto).Inc()
	}
	if e.BytesUp > 0 {
		a.bytes.WithLabelValues(e.Proto, "up").Add(float64(e.BytesUp))
	}
	if e.BytesDown > 0 {
		a.bytes.WithLabelValues(e.Proto, "down").Add(float64(e.BytesDown))
	}
	if e.Duration > 0 {
		a.duration.WithLabelValues(e.Proto).Observe(e.Duration.Seconds())
	}
	if d.Denied() {
		a.remember(newDenial(e))
	}
}

// ObserveReload counts a reload attempt: err nil for a policy swapped in,
// non-nil for a refused file. Set reload.Watcher.OnReload to it.
func (a *Admin) ObserveReload(p *policy.Policy, err error) {
	attempt := &ReloadAttempt{Time: time.Now().UTC(), Result: "success"}
	if err == nil && p != nil && a.restartWarn != nil {
		attempt.Warning = a.restartWarn(p)
	}
	if err != nil {
		attempt.Result = "failure"
		var diags policy.Errors
		if errors.As(err, &diags) {
			for _, d := range diags {
				attempt.Errors = append(attempt.Errors, d.String()) // FILE:LINE:COL: message
			}
		} else {
			attempt.Errors = []string{err.Error()}
		}
	}
	a.mu.Lock()
	a.lastReload = attempt
	a.mu.Unlock()
	if err != nil {
		a.reloads.WithLabelValues("failure").Inc()
		a.lastOK.Set(0)
		return
	}
	a.reloads.WithLabelValues("success").Inc()
	a.lastOK.Set(1)
	if a.loadedAt != nil {
		a.loadedTS.Set(float64(a.loadedAt().UnixNano()) / 1e9)
	} else {
		a.loadedTS.SetToCurrentTime()
	}
}

// TrackTunnels reports n() as the open tunnels of proto (e.g. the HTTP
// proxy's OpenTunnels for "connect"). Later calls for the same proto are
// ignored.
func (a *Admin) TrackTunnels(proto string, n func() int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tracked[proto] {
		return
	}
	a.tracked[proto] = true
	a.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        MetricActiveTunnels,
		Help:        "Open tunnels (CONNECT, transparent TCP), by protocol.",
		ConstLabels: prometheus.Labels{"proto": proto},
	}, func() float64 { return float64(n()) }))
}

// SetListener records whether a listener ("http", "dns", "transparent")
// is up. /readyz fails while any listener set is down: set each one to
// false when it is configured and to true once it serves.
func (a *Admin) SetListener(name string, up bool) {
	a.mu.Lock()
	a.listeners[name] = up
	a.mu.Unlock()
	v := 0.0
	if up {
		v = 1
	}
	a.listenerUp.WithLabelValues(name).Set(v)
}

func (a *Admin) serveHealthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

func (a *Admin) serveReadyz(w http.ResponseWriter, r *http.Request) {
	var problems []string
	if a.policyFn == nil || a.policyFn() == nil {
		problems = append(problems, "no policy loaded")
	}
	a.mu.Lock()
	for name, up := range a.listeners {
		if !up {
			problems = append(problems, "listener "+name+" is down")
		}
	}
	a.mu.Unlock()
	sort.Strings(problems)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, strings.Join(problems, "\n"))
		return
	}
	fmt.Fprintln(w, "ready")
}

// PolicyInfo is the JSON of /policy.
type PolicyInfo struct {
	Source   string    `json:"source"`
	Hash     string    `json:"hash"`
	LoadedAt time.Time `json:"loaded_at,omitzero"`
	Default  string    `json:"default"`
	Mode     string    `json:"mode"`
	// LastReload is the last reload attempt, absent before the first: a
	// refused file leaves the policy above in force and says why here.
	LastReload *ReloadAttempt `json:"last_reload,omitempty"`
}

// ReloadAttempt is one reload of the policy file, as /policy shows it.
type ReloadAttempt struct {
	Time   time.Time `json:"time"`
	Result string    `json:"result"`           // success or failure
	Errors []string  `json:"errors,omitempty"` // a failure's FILE:LINE:COL: message lines
	// Warning names the settings a successful reload changed that apply
	// only after a restart, as the log line's warning does.
	Warning string `json:"warning,omitempty"`
}

func (a *Admin) servePolicy(w http.ResponseWriter, r *http.Request) {
	var p *policy.Policy
	if a.policyFn != nil {
		p = a.policyFn()
	}
	if p == nil {
		http.Error(w, "no policy loaded", http.StatusServiceUnavailable)
		return
	}
	info := PolicyInfo{Source: p.Source, Hash: p.Hash(), Default: p.Default.String(), Mode: p.Mode.String()}
	a.mu.Lock()
	info.LastReload = a.lastReload
	a.mu.Unlock()
	if a.loadedAt != nil {
		info.LoadedAt = a.loadedAt().UTC()
	}
	writeJSON(w, info)
}

// Denial is one entry of /denials. Its field names are those of the
// canonical log line (package eventlog), plus time.
type Denial struct {
	Time         time.Time `json:"time"`
	ID           string    `json:"id"`
	Event        string    `json:"event"`
	Proto        string    `json:"proto"`
	Client       string    `json:"client,omitempty"`
	Host         string    `json:"host"`
	Port         uint16    `json:"port"`
	IP           string    `json:"ip,omitempty"`
	Method       string    `json:"method,omitempty"`
	URL          string    `json:"url,omitempty"`
	QName        string    `json:"qname,omitempty"`
	QType        string    `json:"qtype,omitempty"`
	Rule         string    `json:"rule"`
	RuleText     string    `json:"rule_text,omitempty"`
	Reason       string    `json:"reason"`
	Policy       string    `json:"policy"`
	ClientPolicy string    `json:"client_policy"`
	Hint         string    `json:"hint,omitempty"`
}

func newDenial(e eventlog.Entry) Denial {
	d := e.Decision
	x := Denial{
		Time: time.Now().UTC(), ID: e.ID, Event: d.Event(), Proto: e.Proto,
		Host: d.Host, Port: d.Port, Method: e.Method, URL: e.URL, QName: e.QName, QType: e.QType,
		Rule: d.RuleLocation(), Reason: string(d.Reason), Policy: d.Source, ClientPolicy: d.Policy, Hint: d.Hint,
	}
	if e.Client.IsValid() {
		x.Client = e.Client.String()
	}
	if d.IP.IsValid() {
		x.IP = d.IP.String()
	}
	if d.Rule != nil {
		x.RuleText = d.Rule.Text
	}
	return x
}

func (a *Admin) remember(d Denial) {
	a.mu.Lock()
	if a.full {
		a.dropped.Inc()
	}
	a.ring[a.next] = d
	a.next++
	if a.next == len(a.ring) {
		a.next, a.full = 0, true
	}
	a.mu.Unlock()
}

// Denials returns up to limit recent denials, oldest first; limit <= 0
// means all that are kept.
func (a *Admin) Denials(limit int) []Denial {
	a.mu.Lock()
	defer a.mu.Unlock()
	var all []Denial
	if a.full {
		all = append(all, a.ring[a.next:]...)
	}
	all = append(all, a.ring[:a.next]...)
	if limit > 0 && len(all) > limit {
		all = all[len(all)-limit:]
	}
	return all
}

func (a *Admin) serveDenials(w http.ResponseWriter, r *http.Request) {
	limit := 0
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			http.Error(w, "limit: want a non-negative integer", http.StatusBadRequest)
			return
		}
		limit = n
	}
	ds := a.Denials(limit)
	if ds == nil {
		ds = []Denial{} // [] rather than null
	}
	writeJSON(w, ds)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
