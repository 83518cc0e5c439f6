package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/dnsproxy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/httpproxy"
	"github.com/egress-proxy/egress/proxy/names"
	"github.com/egress-proxy/egress/proxy/transparent"
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
	if *config != "" {
		data, err := os.ReadFile(*config)
		if err != nil {
			fmt.Fprintf(stderr, "egress serve: %v\n", err)
			return exitUsage
		}
		pol, err = policy.Load(*config, data)
		if err != nil {
			var errs policy.Errors
			if errors.As(err, &errs) {
				for _, d := range errs {
					fmt.Fprintln(stderr, d.String())
				}
			} else {
				fmt.Fprintf(stderr, "%s: %v\n", *config, err)
			}
			return exitUsage
		}
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
	events := &eventlog.Sink{Logger: logger, LogAllowed: pol.Log.Allowed}
	self := &dialer.Self{}
	dial := &dialer.Dialer{Policy: current, IsSelf: self.Contains}

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
	svcs = append(svcs, service{name: "http", addr: ln.Addr().String(), serve: func() error { return hp.Serve(ln) }, shutdown: hp.Shutdown})

	// proxy/dnsproxy and proxy/transparent plug in here, each when its
	// listen address is set: listen, self.Add, append a service sharing
	// current, dial and events.

	// DNS proxy, UDP and TCP on one address. dnsNames remembers which
	// names it answered each address with, per client, for the
	// transparent path (names.Lookup).
	dnsNames := &names.Table{}
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
		ds := &dnsproxy.Server{Policy: current, Events: events, Logger: logger, Names: dnsNames, IsSelf: self.Contains}
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
	start := logger.Info().Str(eventlog.FieldPolicy, pol.Source).
		Str("default", pol.Default.String()).Str("mode", pol.Mode.String())
	var on []string
	for _, s := range svcs {
		start = start.Str("listen_"+s.name, s.addr)
		on = append(on, s.name+" proxy on "+s.addr)
	}
	start.Msgf("egress serving: %s; enforcing policy %s (default %s, mode %s)",
		strings.Join(on, ", "), pol.Source, pol.Default, pol.Mode)

	errc := make(chan error, len(svcs))
	for _, s := range svcs {
		go func() {
			err := s.serve()
			if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				errc <- fmt.Errorf("%s: %w", s.name, err)
			}
		}()
	}
	code := exitOK
	select {
	case <-ctx.Done():
	case err := <-errc:
		logger.Error().Err(err).Msg("listener failed; shutting down")
		code = exitUsage
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
		f, err := os.OpenFile(cfg.File, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return zerolog.Logger{}, nil, fmt.Errorf("log file: %w", err)
		}
		out, closeFn = f, func() { f.Close() }
	}
	switch format {
	case "", "json":
	case "console":
		out = zerolog.ConsoleWriter{Out: out, TimeFormat: time.RFC3339}
	default:
		closeFn()
		return zerolog.Logger{}, nil, fmt.Errorf("log format %q: want json or console", format)
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger(), closeFn, nil
}
