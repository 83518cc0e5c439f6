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
//     section (glue) are decided on with their own owner name.
//   - ANY is answered as RFC 8482 §4.2 suggests: one synthesised HINFO record
//     ("RFC8482", TTL 3789), without asking upstream, once the name is
//     allowed. Zone transfers, meta types and class other than IN are
//     refused (NOTIMP, REFUSED). Every other type passes for an allowed name.
//   - EDNS(0): the DO and CD bits are passed upstream and are part of the
//     cache key; the client's other options are not forwarded. Answers are
//     truncated (TC set) to the client's UDP buffer, so that it retries over
//     TCP; a truncated upstream answer is fetched again over TCP.
//   - Upstreams: the policy's dns.upstreams, else the nameservers of
//     /etc/resolv.conf (read once), never one of egress's own listeners.
//     They are tried in turn, the last one that answered first, each with
//     an equal share of what is left of dns.timeout, which bounds the whole
//     query: then the client gets SERVFAIL with EDE 22 (No Reachable
//     Authority). Upstream UDP sockets are connected, reused for a few
//     hundred queries at most, and checked to answer the question asked.
//   - Cache: positive answers for the smallest TTL of the answer, negative
//     ones (NXDOMAIN, NODATA) for the SOA minimum (RFC 2308), both clamped to
//     dns.min_ttl..dns.max_ttl, at most dns.cache_size entries (0 turns it
//     off). The cache holds upstream answers; policy decisions are made on
//     every query, so a reloaded policy applies at once.
//
// UDP is served by one reader per socket that answers cached and refused
// names itself, in batches (recvmmsg/sendmmsg on Linux for IPv4), and hands
// queries for an upstream to long-lived goroutines (udp.go says why); TCP by
// miekg/dns's Server.
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
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/names"
)

// Defaults used when the policy leaves a setting at zero.
const (
	DefaultTimeout    = 2 * time.Second
	DefaultResolvConf = "/etc/resolv.conf"
	// udpBufSize is the EDNS(0) buffer size egress advertises, to clients
	// and upstreams: the DNS flag day 2020 value, which avoids IP
	// fragmentation.
	udpBufSize = 1232
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
	// ResolvConf is read once, at the first query that needs it, when the
	// policy lists no upstreams; "" means DefaultResolvConf.
	ResolvConf string
	// IsSelf reports whether an address is one of egress's own listeners;
	// such upstreams are skipped so that the proxy never forwards to
	// itself. The listeners this Server serves on are always checked.
	IsSelf func(netip.AddrPort) bool
	// Now returns the current time for the cache; nil means time.Now.
	Now func() time.Time

	builtinOnce sync.Once
	builtin     *policy.Policy
	cache       cache
	conns       connPool
	self        dialer.Self
	preferred   atomic.Pointer[string] // host:port of the upstream that answered last
	resolvOnce  sync.Once
	resolv      []string
	resolvErr   error
	lastWarn    atomic.Int64 // unix nanoseconds of the last upstream warning
	suppressed  atomic.Int64

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

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
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
		s.self.Add(pc.LocalAddr())
		started := make(chan struct{})
		close(started)
		list = append(list, &served{udp: newUDPServer(s, pc), started: started})
	}
	if l != nil {
		s.self.Add(l.Addr())
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
	s.conns.closeAll()
	return errors.Join(errs...)
}

// isNotStarted reports miekg/dns's error for shutting down a server that
// already stopped (its socket failed); it has no sentinel for it.
func isNotStarted(err error) bool {
	var de *dns.Error
	return errors.As(err, &de) && de.Error() == "dns: server not started"
}

// isSelf reports whether an upstream is one of egress's own listeners.
func (s *Server) isSelf(ap netip.AddrPort) bool {
	if s.self.Contains(ap) {
		return true
	}
	return s.IsSelf != nil && s.IsSelf(ap)
}
