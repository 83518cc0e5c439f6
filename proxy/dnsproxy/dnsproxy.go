// Package dnsproxy is egress's DNS proxy: a forwarding resolver on UDP and
// TCP (github.com/miekg/dns) that answers only for names the policy could
// allow a connection to, and only with addresses the policy allows.
//
// One query reads top to bottom in handle: check the message, decide on the
// name (policy.Request with Port 0, "some port"), answer from the cache or
// forward to the upstreams, decide on every name of the CNAME chain and on
// every address of the answer, remember the addresses returned (proxy/names),
// fit the answer to the client's buffer, and record one canonical line.
//
// The rules it applies:
//
//   - A refused name gets the policy's dns.blocked answer (NXDOMAIN by
//     default, REFUSED, or an empty NOERROR) carrying an RFC 8914 Extended
//     DNS Error: Blocked (15) for a policy denial, Prohibited (18) for a
//     client outside allow_from (always REFUSED). Its text cites the rule
//     (FILE:LINE and the rule as written) or says no rule matched, and the
//     decision id of the log line.
//   - CNAME chains: every name of the chain, from the question to the last
//     target, must be allowed on its own; the first refused one makes the
//     whole answer the blocked answer, citing that name. Answer records whose
//     owner is not on the chain are dropped (a resolver never uses them; a
//     hostile upstream could use them to smuggle addresses).
//   - Addresses: every A and AAAA record, and every ipv4hint and ipv6hint of
//     an HTTPS or SVCB record, is decided on as Request{Host: qname, IP:
//     addr} (qname, because the client connects to the name it asked for:
//     the same decision the dialer makes after its own lookup). A refused
//     address is removed, so that rebinding a public name to 10.x or
//     169.254.169.254 gives nothing usable; the answer then carries EDE 15
//     naming the removed addresses. A and AAAA records in the additional
//     section (glue) are decided on with their own owner name. The ech key
//     of an HTTPS or SVCB record is dropped, so that clients send the
//     server name in clear for the transparent path and CONNECT to check.
//   - ANY is answered as RFC 8482 §4.2 suggests: one synthesised HINFO record
//     ("RFC8482", TTL 3789), without asking upstream, once the name is
//     allowed. Zone transfers, meta types and class other than IN are
//     refused (NOTIMP, REFUSED). Every other type passes for an allowed name.
//   - EDNS(0): the DO and CD bits are passed upstream and are part of the
//     cache key; the client's other options are not forwarded. Answers are
//     truncated (TC set) to the client's UDP buffer, so that it retries over
//     TCP; a truncated upstream answer is fetched again over TCP.
//   - Upstreams and cache: proxy/resolve, the resolver the dialer uses
//     too (the policy's dns.upstreams, else /etc/resolv.conf's, with
//     failover within dns.timeout, and a cache of upstream answers). When
//     no upstream answers, the client gets SERVFAIL with EDE 22 (No
//     Reachable Authority) whose text says what each upstream did. The
//     cache holds upstream answers; policy decisions are made on every
//     query, so a reloaded policy applies at once.
//
// UDP is served by one reader per socket that answers cached and refused
// names itself, in batches (recvmmsg/sendmmsg on Linux for IPv4), and
// writes queries for an upstream to the upstream's socket, whose reader
// finishes them (udp.go says why); TCP by miekg/dns's Server. Either way a
// query's name is decided on once.
//
// It does not validate DNSSEC (a validating client will reject an RRset the
// proxy shortened), does not serve DNS over TLS or HTTPS, and does not rate
// limit clients.
package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/names"
	"github.com/egress-proxy/egress/proxy/resolve"
)

// Defaults used when the policy leaves a setting at zero.
const (
	DefaultTimeout    = resolve.DefaultTimeout
	DefaultResolvConf = resolve.DefaultResolvConf
	// udpBufSize is the EDNS(0) buffer size egress advertises to clients.
	udpBufSize = resolve.UDPBufSize
	// readBufSize is the largest UDP query read from a client.
	readBufSize = 4096
)

// Server is the DNS proxy. Every field is optional and safe when left
// zero; it is ready to serve once Policy is set (nil means the built-in
// policy). Safe for concurrent use; do not change fields once serving.
type Server struct {
	// Policy returns the current policy. It is called once per query, so
	// an atomically swapped policy applies to the next query. Nil means
	// policy.Builtin().
	Policy func() *policy.Policy
	// Events records one entry per query; nil records nothing.
	Events *eventlog.Sink
	// Logger receives what is not a canonical line: panics, upstream
	// failures (at most one line a second), serve errors. The zero Logger
	// discards.
	Logger zerolog.Logger
	// Names is told which names each address was returned for, per
	// client, before the answer goes out; nil tells nothing.
	Names names.Recorder
	// Resolver asks the upstreams and caches their answers; egress serve
	// shares one with the dialer, so that every path resolves alike. The
	// sockets this Server serves on are added to it (AddSelf), never to
	// be asked. Nil means a Resolver of its own, made from ResolvConf,
	// IsSelf and Now.
	Resolver *resolve.Resolver
	// ResolvConf, IsSelf and Now configure the Resolver made when
	// Resolver is nil (see resolve.Resolver).
	ResolvConf string
	IsSelf     func(netip.AddrPort) bool
	Now        func() time.Time

	builtinOnce  sync.Once
	builtin      *policy.Policy
	resolverOnce sync.Once
	resolver     *resolve.Resolver
	lastWarn     atomic.Int64 // unix nanoseconds of the last upstream warning
	suppressed   atomic.Int64

	mu       sync.Mutex
	servers  []*served
	shutdown bool
}

// served is one socket served by Serve: UDP by a udpServer, TCP by
// miekg/dns's Server.
type served struct {
	udp     *udpServer
	tcp     *dns.Server
	started chan struct{} // closed once it serves or has failed to
}

// stop closes the socket; ctx bounds the wait for queries in progress.
func (sv *served) stop(ctx context.Context) error {
	select {
	case <-sv.started:
	case <-ctx.Done():
		return ctx.Err()
	}
	if sv.udp != nil {
		sv.udp.close()
		select {
		case <-sv.udp.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := sv.tcp.ShutdownContext(ctx); err != nil && !isNotStarted(err) {
		return err
	}
	return nil
}

func (s *Server) policy() *policy.Policy {
	if s.Policy != nil {
		if p := s.Policy(); p != nil {
			return p
		}
	}
	s.builtinOnce.Do(func() { s.builtin = policy.Builtin() })
	return s.builtin
}

// res returns the Resolver: the one given, or one of its own.
func (s *Server) res() *resolve.Resolver {
	s.resolverOnce.Do(func() {
		s.resolver = s.Resolver
		if s.resolver == nil {
			s.resolver = &resolve.Resolver{Policy: s.Policy, ResolvConf: s.ResolvConf, IsSelf: s.IsSelf, Now: s.Now}
		}
	})
	return s.resolver
}

// ErrServerClosed is returned by Serve and ListenAndServe after Shutdown.
var ErrServerClosed = errors.New("dns server closed")

// ListenAndServe listens on addr over UDP and TCP and serves until
// Shutdown, which makes it return ErrServerClosed.
func (s *Server) ListenAndServe(addr string) error {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return fmt.Errorf("dns listen udp %s: %w", addr, err)
	}
	// Listen on TCP at the port UDP got, so that ":0" gives one port.
	l, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return fmt.Errorf("dns listen tcp %s: %w", addr, err)
	}
	return s.Serve(pc, l)
}

// Serve answers queries on pc (UDP) and l (TCP); either may be nil, not
// both. It closes them when it returns: ErrServerClosed after Shutdown,
// another error if a socket fails.
func (s *Server) Serve(pc net.PacketConn, l net.Listener) error {
	if pc == nil && l == nil {
		return errors.New("dns serve: no socket to serve")
	}
	var list []*served
	if pc != nil {
		s.res().AddSelf(pc.LocalAddr())
		started := make(chan struct{})
		close(started)
		list = append(list, &served{udp: newUDPServer(s, pc), started: started})
	}
	if l != nil {
		s.res().AddSelf(l.Addr())
		sv := &served{started: make(chan struct{})}
		sv.tcp = &dns.Server{
			Listener: l, Handler: s,
			ReadTimeout:       DefaultTimeout, // the first query of a connection
			MaxTCPQueries:     -1,
			NotifyStartedFunc: sync.OnceFunc(func() { close(sv.started) }),
		}
		list = append(list, sv)
	}
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		if pc != nil {
			pc.Close()
		}
		if l != nil {
			l.Close()
		}
		return ErrServerClosed
	}
	s.servers = append(s.servers, list...)
	s.mu.Unlock()

	errc := make(chan error, len(list))
	for _, sv := range list {
		go func() {
			if sv.udp != nil {
				errc <- sv.udp.serve()
				return
			}
			err := sv.tcp.ActivateAndServe()
			sv.tcp.NotifyStartedFunc() // unblock stop if it never started
			errc <- err
		}()
	}
	var first error
	for range list {
		if err := <-errc; err != nil && first == nil {
			first = err
			// One socket failed: stop the other too.
			for _, sv := range list {
				_ = sv.stop(context.Background())
			}
		}
	}
	s.mu.Lock()
	closed := s.shutdown
	s.mu.Unlock()
	if first != nil && !closed {
		return fmt.Errorf("dns serve: %w", first)
	}
	return ErrServerClosed
}

// Shutdown stops every Serve: it closes the sockets and waits, until ctx
// ends, for the queries in progress to be answered.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	list := s.servers
	s.servers = nil
	s.mu.Unlock()
	var errs []error
	for _, sv := range list {
		if err := sv.stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Resolver == nil {
		s.res().Close() // its own; a shared one belongs to its owner
	}
	return errors.Join(errs...)
}

// isNotStarted reports miekg/dns's error for shutting down a server that
// already stopped (its socket failed); it has no sentinel for it.
func isNotStarted(err error) bool {
	var de *dns.Error
	return errors.As(err, &de) && de.Error() == "dns: server not started"
}
