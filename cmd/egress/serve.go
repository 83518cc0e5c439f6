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
	"github.com/egress-proxy/egress/proxy/names"
	"github.com/egress-proxy/egress/proxy/proxyproto"
	"github.com/egress-proxy/egress/proxy/resolve"
	"github.com/egress-proxy/egress/proxy/transparent"
	"github.com/egress-proxy/egress/reload"
)

const (
	defaultHTTPListen = "127.0.0.1:3128"
	defaultDrain      = 30 * time.Second
)

func cmdServe(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return serve(ctx, args, stdout, stderr)
}

// service is one listener of egress serve. Adding a data path (the DNS
// proxy, the transparent listener) takes a few lines in serve: bind its
// listener, add the address to self (the loop guard), append a service
// whose handler reads the policy through current.
type service struct {
	name     string                          // "http", "dns", "transparent"
	addr     string                          // bound address, for the startup line
	serve    func() error                    // blocks until shutdown
	shutdown func(ctx context.Context) error // stop accepting, drain until ctx is done
}

// serve runs egress serve until ctx is cancelled (SIGINT/SIGTERM), then
// drains for up to timeouts.drain and returns exitOK.
func serve(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("egress serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "", "policy `FILE` (default: the built-in policy, full internet with every guard on)")
	listen := fs.String("listen", "", "HTTP proxy `ADDR`ess, overriding listen.http (default "+defaultHTTPListen+")")
	logFormat := fs.String("log-format", "", "json or console, overriding log.format (default json)")
	logLevel := fs.String("log-level", "", "debug, info, warn or error, overriding log.level (default info)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: egress serve [--config FILE] [--listen ADDR] [--log-format json|console] [--log-level LEVEL]")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Runs the HTTP forward proxy (and CONNECT tunnels) enforcing the policy; SIGTERM or SIGINT drains and exits.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "egress serve: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}

	pol := policy.Builtin()
	loadedAt := time.Now()
	var watcher *reload.Watcher // nil without --config: nothing to reload
	if *config != "" {
		w, err := reload.New(*config)
		if err != nil {
			var errs policy.Errors
			if errors.As(err, &errs) {
				for _, d := range errs {
					fmt.Fprintln(stderr, d.String())
				}
			} else {
				fmt.Fprintf(stderr, "egress serve: %v\n", err)
			}
			return exitUsage
		}
		watcher, pol, loadedAt = w, w.Current(), w.LoadedAt()
	}
	// The one policy every data path reads, through current, per
	// connection: a reload swaps it here and nowhere else.
	var cur atomic.Pointer[policy.Policy]
	cur.Store(pol)
	current := cur.Load

	logger, closeLog, err := newLogger(pol.Log, *logFormat, *logLevel, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "egress serve: %v\n", err)
		return exitUsage
	}
	defer closeLog()
	// Metrics and recent denials see every entry through the sink.
	adm := admin.New(admin.Options{Policy: current, LoadedAt: func() time.Time {
		if watcher != nil {
			return watcher.LoadedAt()
		}
		return loadedAt
	}})
	events := &eventlog.Sink{Logger: logger, LogAllowed: pol.Log.Allowed, Observe: adm.Observe}
	self := &dialer.Self{}
	// One resolver (dns.upstreams, else resolv.conf's, with failover and
	// the cache) for the dialer, the transparent path and the DNS
	// listener, following a reloaded dns.upstreams at the next lookup.
	res := &resolve.Resolver{Policy: current, IsSelf: self.Contains}
	defer res.Close()
	dial := &dialer.Dialer{Policy: current, IsSelf: self.Contains, Resolver: res}

	var svcs []service
	fail := func(err error) int {
		logger.Error().Err(err).Msg("egress serve: cannot start")
		for _, s := range svcs {
			s.shutdown(context.Background())
		}
		return exitUsage
	}

	// HTTP forward proxy and CONNECT.
	httpAddr := pol.Listen.HTTP
	if *listen != "" {
		httpAddr = *listen
	}
	if httpAddr == "" {
		httpAddr = defaultHTTPListen
	}
	ln, err := listenTCP(httpAddr)
	if err != nil {
		return fail(fmt.Errorf("listen http: %w", err))
	}
	self.Add(ln.Addr())
	hp := &httpproxy.Proxy{Policy: current, Dialer: dial, Events: events, Logger: logger}
	var hln net.Listener = ln
	if pol.Listen.ProxyProtocol {
		// Behind a load balancer: the client address comes from the
		// PROXY header. Without this, such a header is a 400.
		from := pol.Listen.ProxyProtocolFrom
		hln = &proxyproto.Listener{Listener: ln, Logger: logger, Trusted: func(a netip.Addr) bool {
			a = a.Unmap()
			for _, p := range from {
				if p.Contains(a) {
					return true
				}
			}
			return false
		}}
	}
	svcs = append(svcs, service{name: "http", addr: ln.Addr().String(), serve: func() error { return hp.Serve(hln) }, shutdown: hp.Shutdown})
	adm.TrackTunnels(eventlog.ProtoConnect, hp.OpenTunnels)

	// proxy/dnsproxy and proxy/transparent plug in here, each when its
	// listen address is set: listen, self.Add, append a service sharing
	// current, dial and events.

	// DNS proxy, UDP and TCP on one address. dnsNames remembers which
	// names it answered each address with, per client, for the
	// transparent path (names.Lookup).
	dnsNames := &names.Table{}
	// listen.refuse_at_connect: nftables refuse the denied connections of
	// those users at connect(); the DNS proxy leases its answers there.
	var dnsRecorder names.Recorder = dnsNames
	var sf *serveFilter
	if len(pol.Listen.RefuseAtConnect) > 0 {
		dnsNames.MinTTL, dnsNames.Grace = leaseMinTTL, leaseGrace
		if sf, err = newServeFilter(pol, current, dnsNames, []string{httpAddr, pol.Listen.DNS, pol.Listen.Transparent}, logger); err != nil {
			return fail(err)
		}
		defer sf.Close()
		dnsRecorder = sf.recorder
	}
	if addr := pol.Listen.DNS; addr != "" {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return fail(fmt.Errorf("listen dns: %w", err))
		}
		dl, err := listenTCP(pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			return fail(fmt.Errorf("listen dns: %w", err))
		}
		self.Add(pc.LocalAddr())
		self.Add(dl.Addr())
		ds := &dnsproxy.Server{Policy: current, Events: events, Logger: logger, Names: dnsRecorder, Resolver: res}
		svcs = append(svcs, service{name: "dns", addr: pc.LocalAddr().String(), serve: func() error {
			if err := ds.Serve(pc, dl); !errors.Is(err, dnsproxy.ErrServerClosed) {
				return err
			}
			return nil
		}, shutdown: ds.Shutdown})
	}

	// Transparent TCP: connections nftables or iptables redirected here
	// (docs/transparent.md), decided on their SNI or Host, or on their
	// address and the names the DNS proxy returned it for.
	if addr := pol.Listen.Transparent; addr != "" {
		tl, err := listenTCP(addr)
		if err != nil {
			return fail(fmt.Errorf("listen transparent: %w", err))
		}
		self.Add(tl.Addr())
		ts := &transparent.Server{Policy: current, Dialer: dial, Names: dnsNames, Events: events, Logger: logger}
		adm.TrackTunnels(eventlog.ProtoTCP, ts.Open)
		if sf != nil {
			sf.logRefusals(events, ts.DecideConnect)
		}
		svcs = append(svcs, service{name: "transparent", addr: tl.Addr().String(), serve: func() error {
			if err := ts.Serve(tl); !errors.Is(err, transparent.ErrServerClosed) {
				return err
			}
			return nil
		}, shutdown: ts.Shutdown})
	}

	for _, w := range pol.Warnings() {
		logger.Warn().Str(eventlog.FieldPolicy, pol.Source).Msg("policy warning: " + w.String())
	}
	// The admin listener (metrics, probes, /policy, /denials) is not a
	// service: it keeps answering while the others drain, with /readyz
	// failing. If it cannot be bound, the proxy serves without it.
	var adminAddr string
	if pol.Listen.Admin != "" {
		if al, err := listenTCP(pol.Listen.Admin); err != nil {
			logger.Error().Err(err).Str("listen_admin", pol.Listen.Admin).Msg("admin listener off: cannot listen")
		} else {
			adminAddr = al.Addr().String()
			go adm.Serve(al)
			defer adm.Shutdown(context.Background())
		}
	}

	// Reload the policy file on change and on SIGHUP; the watcher feeds
	// cur, the pointer every data path reads.
	hup := make(chan os.Signal, 1)
	if watcher != nil {
		watcher.Logger = logger
		watcher.OnReload = func(p *policy.Policy, err error) {
			if err == nil {
				if sf != nil {
					sf.reload(p)
				}
				cur.Store(p)
			}
			adm.ObserveReload(p, err)
		}
		watcher.Start()
		defer watcher.Close()
	} else {
		// SIGHUP's default action would kill egress.
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
	}

	start := logger.Info().Str(eventlog.FieldPolicy, pol.Source).
		Str("default", pol.Default.String()).Str("mode", pol.Mode.String())
	var on []string
	for _, s := range svcs {
		start = start.Str("listen_"+s.name, s.addr)
		on = append(on, s.name+" proxy on "+s.addr)
	}
	if adminAddr != "" {
		start = start.Str("listen_admin", adminAddr)
		on = append(on, "admin on "+adminAddr)
	}
	start.Msgf("egress serving: %s; enforcing policy %s (default %s, mode %s)",
		strings.Join(on, ", "), pol.Source, pol.Default, pol.Mode)

	errc := make(chan error, len(svcs))
	for _, s := range svcs {
		adm.SetListener(s.name, true)
		go func() {
			err := s.serve()
			adm.SetListener(s.name, false)
			if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				errc <- fmt.Errorf("%s: %w", s.name, err)
			}
		}()
	}
	code := exitOK
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case err := <-errc:
			logger.Error().Err(err).Msg("listener failed; shutting down")
			code = exitUsage
			break wait
		case <-hup:
			logger.Warn().Msg("SIGHUP: egress runs the built-in policy (no --config); nothing to reload")
		}
	}
	for _, s := range svcs {
		adm.SetListener(s.name, false) // draining: /readyz fails
	}

	drain := pol.Timeouts.Drain
	if drain <= 0 {
		drain = defaultDrain
	}
	logger.Info().Dur("drain", drain).Int("open_tunnels", hp.OpenTunnels()).Msg("shutting down: no new connections; draining open tunnels")
	sctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range svcs {
		wg.Go(func() {
			if err := s.shutdown(sctx); err != nil {
				logger.Warn().Err(err).Str("listener", s.name).Msg("drain deadline reached; closed the remaining connections")
			}
		})
	}
	wg.Wait()
	logger.Info().Msg("egress stopped")
	return code
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
	var out io.Writer = stderr
	closeFn := func() {}
	if cfg.File != "" {
		// Reopened on SIGUSR1, after logrotate moved it away.
		f, err := reload.OpenLogFile(cfg.File)
		if err != nil {
			return zerolog.Logger{}, nil, err
		}
		f.ReopenOnSignal(func(err error) { fmt.Fprintf(stderr, "egress: SIGUSR1: %v; still logging to the old file\n", err) })
		out, closeFn = f, func() { f.Close() }
	}
	switch format {
	case "", "json":
	case "console":
		// Colours only for a terminal: not into files, pipes or journald.
		out = zerolog.ConsoleWriter{Out: out, TimeFormat: time.RFC3339, NoColor: !isTerminal(out)}
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
