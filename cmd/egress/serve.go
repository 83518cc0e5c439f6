package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/admin"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/dnsproxy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/httpproxy"
	"github.com/egress-proxy/egress/proxy/intercept"
	"github.com/egress-proxy/egress/proxy/names"
	"github.com/egress-proxy/egress/proxy/proxyproto"
	"github.com/egress-proxy/egress/proxy/resolve"
	"github.com/egress-proxy/egress/proxy/transparent"
	"github.com/egress-proxy/egress/proxy/tunnel"
	"github.com/egress-proxy/egress/reload"
)

const (
	defaultHTTPListen  = "127.0.0.1:3128"
	defaultAdminListen = "127.0.0.1:9090"
	defaultDrain       = 30 * time.Second
)

func cmdServe(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return serve(ctx, args, stdout, stderr)
}

// service is one listener of egress serve. Adding a data path (the DNS
// proxy, the transparent listener) takes a few lines in listen: bind its
// listener, add the address to self (the loop guard), append a service
// whose handler reads the policy through current.
type service struct {
	name     string                          // "http", "dns", "transparent"
	addr     string                          // bound address, for the startup line
	serve    func() error                    // blocks until shutdown
	shutdown func(ctx context.Context) error // stop accepting, drain until ctx is done
}

// serveFlags are egress serve's command line.
type serveFlags struct {
	config, listen, logFormat, logLevel string
	// admin overrides listen.admin when set; "" turns the admin
	// listener off.
	admin optionalString
}

// optionalString is a string flag that knows whether it was given, so
// that --admin "" (off) differs from no --admin (the policy's).
type optionalString struct {
	value string
	set   bool
}

func (o *optionalString) String() string     { return o.value }
func (o *optionalString) Set(v string) error { o.value, o.set = v, true; return nil }

// listenError is a listener of the policy that could not start: it names
// the setting and the flag that change its address.
type listenError struct {
	setting string // "listen.admin"
	flag    string // "--admin", or "" when no flag overrides the setting
	file    string // the policy file, "" for the built-in policy
	addr    string
	err     error
}

func (e *listenError) Error() string {
	err := e.err
	var op *net.OpError
	if errors.As(err, &op) {
		err = op.Err // "bind: address already in use", without the address again
	}
	msg := fmt.Sprintf("%s %s: %v", e.setting, e.addr, err)
	if errors.Is(e.err, syscall.EADDRINUSE) {
		msg += " (another egress, or another program, holds it)"
	}
	var change []string
	switch {
	case e.file != "":
		change = append(change, "change "+e.setting+" in "+e.file)
	case e.flag == "":
		change = append(change, "set "+e.setting+" in a policy file (--config)")
	}
	if e.flag != "" {
		change = append(change, "pass "+e.flag+" ADDR")
	}
	msg += "; " + strings.Join(change, " or ")
	if e.flag == "--admin" {
		msg += ` (--admin "" turns the admin listener off)`
	}
	return msg
}

func (e *listenError) Unwrap() error { return e.err }

// serve runs egress serve until ctx is cancelled (SIGINT/SIGTERM), then
// drains for up to timeouts.drain and returns exitOK.
func serve(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f, code, ok := parseServeFlags(args, stderr)
	if !ok {
		return code
	}
	pol, watcher, loadedAt, ok := loadServePolicy(f.config, stderr)
	if !ok {
		return exitUsage
	}
	logger, closeLog, err := newLogger(pol.Log, f.logFormat, f.logLevel, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "egress serve: %v\n", err)
		return exitUsage
	}
	defer closeLog()
	defer routeStdLog(logger)()

	e := newServer(pol, watcher, loadedAt, logger)
	defer e.res.Close()
	fail := func(err error) int {
		// The log may be a file: the reason serve stops goes to stderr too.
		logger.Error().Msg("egress serve: cannot start: " + err.Error())
		if pol.Log.File != "" {
			fmt.Fprintf(stderr, "egress serve: cannot start: %v\n", err)
		}
		e.closeServices()
		return exitUsage
	}
	if err := e.listen(f.listen); err != nil {
		return fail(err)
	}
	if e.filter != nil {
		defer e.filter.Close()
	}
	for _, w := range pol.Warnings() {
		logger.Warn().Str(eventlog.FieldPolicy, pol.Source).Msg("policy warning: " + w.String())
	}
	adminAddr := pol.Listen.Admin
	if f.admin.set {
		adminAddr = f.admin.value
	}
	stopAdmin, err := e.startAdmin(adminAddr, f.admin.set)
	if err != nil {
		return fail(err)
	}
	if stopAdmin != nil {
		defer stopAdmin()
	}
	hup, stopReload := e.startReload()
	defer stopReload()
	e.logStartup()
	code = e.run(ctx, hup)
	e.drain()
	return code
}

// parseServeFlags parses egress serve's arguments; ok is false when serve
// should return code at once (--help, a usage error).
func parseServeFlags(args []string, stderr io.Writer) (f serveFlags, code int, ok bool) {
	fs := flag.NewFlagSet("egress serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.config, "config", "", "policy `FILE` (default: the built-in policy, full internet with every guard on)")
	fs.StringVar(&f.listen, "listen", "", "HTTP proxy `ADDR`ess, overriding listen.http (default "+defaultHTTPListen+")")
	fs.Var(&f.admin, "admin", "admin listener `ADDR`ess (metrics, /healthz), overriding listen.admin (default "+defaultAdminListen+`); "" turns it off`)
	fs.StringVar(&f.logFormat, "log-format", "", "json or console, overriding log.format (default json)")
	fs.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error, overriding log.level (default info)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: egress serve [--config FILE] [--listen ADDR] [--admin ADDR] [--log-format json|console] [--log-level LEVEL]")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Runs the HTTP forward proxy (and CONNECT tunnels) enforcing the policy; SIGTERM or SIGINT drains and exits.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return f, exitOK, false
		}
		return f, exitUsage, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "egress serve: unexpected argument %q%s\n", fs.Arg(0), configHint(fs.Arg(0), f.config))
		return f, exitUsage, false
	}
	return f, exitOK, true
}

// loadServePolicy loads --config (printing every error), or the built-in
// policy without one; watcher is nil then: nothing to reload.
func loadServePolicy(config string, stderr io.Writer) (pol *policy.Policy, watcher *reload.Watcher, loadedAt time.Time, ok bool) {
	if config == "" {
		return policy.Builtin(), nil, time.Now(), true
	}
	w, err := reload.New(config)
	if err != nil {
		var errs policy.Errors
		if errors.As(err, &errs) {
			for _, d := range errs {
				fmt.Fprintln(stderr, d.String())
			}
		} else {
			fmt.Fprintf(stderr, "egress serve: %v\n", err)
		}
		return nil, nil, time.Time{}, false
	}
	if err := checkInterception(w.Current()); err != nil {
		fmt.Fprintf(stderr, "egress serve: %s: %v\n", config, err)
		return nil, nil, time.Time{}, false
	}
	// A reload to a policy serve cannot put in force is refused too.
	w.Check = checkInterception
	return w.Current(), w, w.LoadedAt(), true
}

// server is egress serve wired together: the policy in force, the
// shared dialer, loop guard and event sink, and the services built on
// them.
type server struct {
	pol      *policy.Policy // as loaded at start: listeners, log
	cur      atomic.Pointer[policy.Policy]
	watcher  *reload.Watcher // nil without --config
	loadedAt time.Time
	logger   zerolog.Logger

	adm      *admin.Admin
	events   *eventlog.Sink
	self     *dialer.Self
	dial     *dialer.Dialer
	dnsNames *names.Table
	res      *resolve.Resolver
	// tunnels is every tunnel of every path (CONNECT, upgrades,
	// transparent): one limits.max_tunnels, and what a reload re-decides.
	tunnels *tunnel.Set
	// intercept serves the destinations with http: request rules.
	intercept *intercept.Server
	// filter refuses the denied connections of listen.refuse_at_connect's
	// users at connect(); nil without.
	filter *serveFilter

	http        *httpproxy.Proxy
	transparent *transparent.Server // nil without listen.transparent
	svcs        []service
	adminAddr   string // "" without an admin listener
}

func newServer(pol *policy.Policy, watcher *reload.Watcher, loadedAt time.Time, logger zerolog.Logger) *server {
	e := &server{pol: pol, watcher: watcher, loadedAt: loadedAt, logger: logger}
	// The one policy every data path reads, through current, per
	// connection: a reload swaps it here and nowhere else.
	e.cur.Store(pol)
	// Metrics and recent denials see every entry through the sink.
	opts := admin.Options{Policy: e.current, LoadedAt: func() time.Time {
		if watcher != nil {
			return watcher.LoadedAt()
		}
		return loadedAt
	}}
	if watcher != nil {
		opts.RestartWarning = watcher.RestartWarning
	}
	e.adm = admin.New(opts)
	e.events = &eventlog.Sink{Logger: logger, LogAllowed: pol.Log.Allowed, Observe: e.adm.Observe}
	e.self = &dialer.Self{}
	// One resolver (dns.upstreams, else resolv.conf's, with failover and
	// the cache) for the dialer, the transparent path and the DNS
	// listener, following a reloaded dns.upstreams at the next lookup.
	e.res = &resolve.Resolver{Policy: e.current, IsSelf: e.self.Contains}
	e.dial = &dialer.Dialer{Policy: e.current, IsSelf: e.self.Contains, Resolver: e.res}
	// dnsNames remembers which names the DNS proxy answered each address
	// with, per client, for the transparent path (names.Lookup).
	e.dnsNames = &names.Table{}
	e.tunnels = &tunnel.Set{}
	// Interception (http: request rules) for every listener, with the
	// CA of the policy in force.
	e.intercept = newIntercept(e.current, nil, e.dial, e.events, logger)
	return e
}

// current is the policy in force.
func (e *server) current() *policy.Policy { return e.cur.Load() }

// listen binds every listener of the policy (httpAddr, when set, for the
// HTTP proxy) and builds its service. On error the services built so far
// are left for closeServices.
func (e *server) listen(httpAddr string) error {
	if err := e.listenHTTP(httpAddr); err != nil {
		return err
	}
	if err := e.installFilter(); err != nil {
		return err
	}
	if err := e.listenDNS(); err != nil {
		return err
	}
	return e.listenTransparent()
}

// installFilter installs the connect filter of listen.refuse_at_connect,
// after the HTTP proxy is bound (its port, as bound, is exempt) and
// before the DNS proxy starts: it leases the filter its answers.
func (e *server) installFilter() error {
	if len(e.pol.Listen.RefuseAtConnect) == 0 {
		return nil
	}
	listens := []string{e.pol.Listen.DNS, e.pol.Listen.Transparent}
	for _, s := range e.svcs {
		listens = append(listens, s.addr)
	}
	e.dnsNames.MinTTL, e.dnsNames.Grace = leaseMinTTL, leaseGrace
	sf, err := newServeFilter(e.pol, e.current, e.dnsNames, listens, e.logger)
	if err != nil {
		return err
	}
	e.filter = sf
	return nil
}

// listenHTTP: the HTTP forward proxy and CONNECT.
func (e *server) listenHTTP(addr string) error {
	flagged := addr != ""
	if addr == "" {
		addr = e.pol.Listen.HTTP
	}
	if addr == "" {
		addr = defaultHTTPListen
	}
	ln, err := listenTCP(addr)
	if err != nil {
		return e.listenErr("listen.http", "--listen", flagged, addr, err)
	}
	e.self.Add(ln.Addr())
	hp := &httpproxy.Proxy{Policy: e.current, Dialer: e.dial, Events: e.events, Logger: e.logger, Tunnels: e.tunnels, Intercept: e.intercept}
	var hln net.Listener = ln
	if e.pol.Listen.ProxyProtocol {
		// Behind a load balancer: the client address comes from the
		// PROXY header. Without this, such a header is a 400.
		from := e.pol.Listen.ProxyProtocolFrom
		hln = &proxyproto.Listener{Listener: ln, Logger: e.logger, Trusted: func(a netip.Addr) bool {
			a = a.Unmap()
			for _, p := range from {
				if p.Contains(a) {
					return true
				}
			}
			return false
		}}
	}
	e.http = hp
	e.svcs = append(e.svcs, service{name: "http", addr: ln.Addr().String(), serve: func() error { return hp.Serve(hln) }, shutdown: hp.Shutdown})
	e.adm.TrackTunnels(eventlog.ProtoConnect, hp.OpenTunnels)
	return nil
}

// listenDNS: the DNS proxy, UDP and TCP on one address, when listen.dns
// is set.
func (e *server) listenDNS() error {
	addr := e.pol.Listen.DNS
	if addr == "" {
		return nil
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return e.listenErr("listen.dns", "", false, addr, err)
	}
	dl, err := listenTCP(pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return e.listenErr("listen.dns", "", false, addr+" (tcp)", err)
	}
	e.self.Add(pc.LocalAddr())
	e.self.Add(dl.Addr())
	var recorder names.Recorder = e.dnsNames
	if e.filter != nil {
		recorder = e.filter.recorder
	}
	ds := &dnsproxy.Server{Policy: e.current, Events: e.events, Logger: e.logger, Names: recorder, Resolver: e.res}
	e.svcs = append(e.svcs, service{name: "dns", addr: pc.LocalAddr().String(), serve: func() error {
		if err := ds.Serve(pc, dl); !errors.Is(err, dnsproxy.ErrServerClosed) {
			return err
		}
		return nil
	}, shutdown: ds.Shutdown})
	return nil
}

// listenTransparent: connections nftables or iptables redirected here
// (docs/transparent.md), decided on their SNI or Host, or on their
// address and the names the DNS proxy returned it for; when
// listen.transparent is set.
func (e *server) listenTransparent() error {
	addr := e.pol.Listen.Transparent
	if addr == "" {
		return nil
	}
	tl, err := listenTCP(addr)
	if err != nil {
		return e.listenErr("listen.transparent", "", false, addr, err)
	}
	e.self.Add(tl.Addr())
	ts := &transparent.Server{Policy: e.current, Dialer: e.dial, Names: e.dnsNames, Events: e.events, Logger: e.logger, Tunnels: e.tunnels, Intercept: e.intercept}
	e.transparent = ts
	e.adm.TrackTunnels(eventlog.ProtoTCP, ts.Open)
	if e.filter != nil {
		e.filter.logRefusals(e.events, ts.DecideConnect)
		if q := e.filter.host.Queue(); q != nil {
			// Until the filter closes its queue at shutdown.
			ts.Held = &transparent.Held{}
			go holdConnects(context.Background(), q, ts, e.logger)
		}
	}
	e.svcs = append(e.svcs, service{name: "transparent", addr: tl.Addr().String(), serve: func() error {
		if err := ts.Serve(tl); !errors.Is(err, transparent.ErrServerClosed) {
			return err
		}
		return nil
	}, shutdown: ts.Shutdown})
	return nil
}

// closeServices closes the listeners of services that never served.
func (e *server) closeServices() {
	for _, s := range e.svcs {
		s.shutdown(context.Background())
	}
}

// startAdmin serves the admin listener (metrics, probes, /policy,
// /denials) on addr (listen.admin, or --admin when flagged), and returns
// its stop function (nil without one). It is not a service: it keeps
// answering while the others drain, with /readyz failing. An admin
// listener that cannot be bound stops egress: serving without it would
// leave `egress health` and the metrics scraper asking whoever holds the
// port (another egress, say) and getting its answer.
func (e *server) startAdmin(addr string, flagged bool) (stop func(), err error) {
	if addr == "" {
		return nil, nil
	}
	al, err := listenTCP(addr)
	if err != nil {
		return nil, e.listenErr("listen.admin", "--admin", flagged, addr, err)
	}
	// The admin listener hands out the policy and recent denials: a
	// connection to it through egress is a loop like any other listener's.
	e.self.Add(al.Addr())
	e.adminAddr = al.Addr().String()
	go e.adm.Serve(al)
	return func() { e.adm.Shutdown(context.Background()) }, nil
}

// listenErr says which setting (and flag) a listener that cannot bind
// addr comes from; flagged is an address given by flag, not the file.
func (e *server) listenErr(setting, flag string, flagged bool, addr string, err error) *listenError {
	le := &listenError{setting: setting, flag: flag, addr: addr, err: err}
	if e.watcher != nil && !flagged {
		le.file = e.watcher.File()
	}
	return le
}

// startReload reloads the policy file on change and on SIGHUP; the
// watcher feeds cur, the pointer every data path reads. Without a file,
// SIGHUP is caught (its default action would kill egress) and delivered
// on hup, for run to log. stop stops either.
func (e *server) startReload() (hup <-chan os.Signal, stop func()) {
	if e.watcher == nil {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGHUP)
		return c, func() { signal.Stop(c) }
	}
	e.watcher.Logger = e.logger
	e.watcher.OnReload = func(p *policy.Policy, err error) {
		if err == nil {
			e.cur.Store(p)
			if e.http != nil {
				// Kept-alive upstream connections were dialled under
				// the old policy: none is reused past the reload.
				e.http.CloseIdleConnections()
			}
			if e.intercept != nil {
				// So are interception's origin connections.
				e.intercept.CloseIdleConnections()
			}
			if e.filter != nil {
				e.filter.reload(p)
			}
			if p.Reload.RevokeOpen {
				// Each one closed logs its line, reason revoked.
				if n := e.tunnels.Revoke(p); n > 0 {
					e.logger.Info().Str(eventlog.FieldPolicy, p.Source).Int("revoked", n).
						Msg("policy reloaded: closed the open tunnels it refuses")
				}
			}
		}
		e.adm.ObserveReload(p, err)
	}
	e.watcher.Start()
	return nil, func() { e.watcher.Close() }
}

// logStartup writes the line that says egress serves, on which addresses,
// and with which policy.
func (e *server) logStartup() {
	pol := e.pol
	start := e.logger.Info().Str(eventlog.FieldPolicy, pol.Source).
		Str("default", pol.Default.String()).Str("mode", pol.Mode.String())
	var on []string
	for _, s := range e.svcs {
		start = start.Str("listen_"+s.name, s.addr)
		on = append(on, s.name+" proxy on "+s.addr)
	}
	if e.adminAddr != "" {
		start = start.Str("listen_admin", e.adminAddr)
		on = append(on, "admin on "+e.adminAddr)
	}
	start.Msgf("egress serving: %s; enforcing policy %s (default %s, mode %s)",
		strings.Join(on, ", "), pol.Source, pol.Default, pol.Mode)
}

// run serves every service until ctx is done or one fails (exitUsage),
// logging each SIGHUP on hup (nil with a watcher: it reloads on SIGHUP).
func (e *server) run(ctx context.Context, hup <-chan os.Signal) int {
	errc := make(chan error, len(e.svcs))
	for _, s := range e.svcs {
		e.adm.SetListener(s.name, true)
		go func() {
			err := s.serve()
			e.adm.SetListener(s.name, false)
			if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				errc <- fmt.Errorf("%s: %w", s.name, err)
			}
		}()
	}
	for {
		select {
		case <-ctx.Done():
			return exitOK
		case err := <-errc:
			e.logger.Error().Err(err).Msg("listener failed; shutting down")
			return exitUsage
		case <-hup:
			e.logger.Warn().Msg("SIGHUP: egress runs the built-in policy (no --config); nothing to reload")
		}
	}
}

// drain stops accepting and lets open connections finish for up to
// timeouts.drain, then closes the rest.
func (e *server) drain() {
	for _, s := range e.svcs {
		e.adm.SetListener(s.name, false) // draining: /readyz fails
	}
	// The policy in force: a reload that changed timeouts.drain applies.
	drain := e.current().Timeouts.Drain
	if drain <= 0 {
		drain = defaultDrain
	}
	e.logger.Info().Str("drain", drain.String()).Int("open_tunnels", e.tunnels.Open()).Msg("shutting down: no new connections; draining open tunnels")
	sctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range e.svcs {
		wg.Go(func() {
			if err := s.shutdown(sctx); err != nil {
				e.logger.Warn().Err(err).Str("listener", s.name).Msg("drain deadline reached; closed the remaining connections")
			}
		})
	}
	wg.Wait()
	e.logger.Info().Msg("egress stopped")
}

// listenTCP listens with TCP keep-alive on accepted connections, so that
// a client that vanished without a FIN does not hold a tunnel forever.
func listenTCP(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: dialer.DefaultKeepAlive}
	return lc.Listen(context.Background(), "tcp", addr)
}

// newLogger builds the logger from the policy's log: section and the
// flags that override it.
func newLogger(cfg policy.Log, format, level string, stderr io.Writer) (zerolog.Logger, func(), error) {
	if format == "" {
		format = cfg.Format
	}
	if level == "" {
		level = cfg.Level
	}
	if level == "" {
		level = "info"
	}
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || lvl == zerolog.NoLevel {
		return zerolog.Logger{}, nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	// Lines are written in batches (reload.LineBuffer): when 64 KiB are
	// waiting, 100 ms after the first of them, on SIGUSR1 and when serve
	// returns. One write(2) per line cost about 8% of plain-HTTP
	// requests/s with log.allowed (BENCHMARKS.md); a crash loses at most
	// the last 100 ms of lines.
	var out io.Writer
	var closeFn func()
	if cfg.File != "" {
		// Reopened on SIGUSR1, after logrotate moved it away.
		f, err := reload.OpenLogFile(cfg.File)
		if err != nil {
			return zerolog.Logger{}, nil, err
		}
		f.ReopenOnSignal(func(err error) { fmt.Fprintf(stderr, "egress: SIGUSR1: %v; still logging to the old file\n", err) })
		b := f.Buffered(0, 0)
		out, closeFn = b, func() { b.Close(); f.Close() }
	} else {
		b := reload.NewLineBuffer(stderr, 0, 0)
		out, closeFn = b, func() { b.Close() }
	}
	switch format {
	case "", "json":
	case "console":
		// Colours only for a terminal: not into files, pipes or journald.
		out = zerolog.ConsoleWriter{Out: out, TimeFormat: time.RFC3339, NoColor: !isTerminal(stderr) || cfg.File != ""}
	default:
		closeFn()
		return zerolog.Logger{}, nil, fmt.Errorf("log format %q: want json or console", format)
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger(), closeFn, nil
}

// isTerminal reports whether w is a character device such as a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
