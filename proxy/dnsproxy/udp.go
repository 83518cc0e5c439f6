package dnsproxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"

	"github.com/egress-proxy/egress/proxy/eventlog"
)

// UDP is served by one reader goroutine per socket, not by miekg/dns's
// Server, which starts a goroutine per packet: the policy's decision and
// the answer's packing need a deeper stack than a new goroutine has, and
// growing it on every query, with readers queueing on the socket's lock,
// cost half the CPU of a cached answer (bench/dns/run.sh). The reader
// answers what it can without waiting (cache hits, refusals, errors) and
// writes the other queries to an upstream (resolve.Resolver.Forward); the
// upstream socket's reader finishes them and sends the answers. No
// goroutine waits on a query, and each is decided on once. miekg/dns
// still parses and packs every message, and serves TCP.

// maxUDPPending bounds the queries waiting on an upstream over UDP (each
// for at most dns.timeout); past it, the reader waits for one to finish,
// queries queue in the socket's receive buffer and the kernel drops the
// excess.
const maxUDPPending = 4096

type udpServer struct {
	s  *Server
	pc net.PacketConn
	uc *net.UDPConn // pc, when it is one: allocation-free reads and writes

	pending chan struct{}  // a slot per query waiting on an upstream
	wg      sync.WaitGroup // the reader and the queries waiting
	closed  atomic.Bool
	err     error
	done    chan struct{} // closed when every query is answered
}

// packBufs are the buffers answers from an upstream are packed into.
var packBufs = sync.Pool{New: func() any { b := make([]byte, 0, udpBufSize); return &b }}

func newUDPServer(s *Server, pc net.PacketConn) *udpServer {
	u := &udpServer{s: s, pc: pc, pending: make(chan struct{}, maxUDPPending), done: make(chan struct{})}
	u.uc, _ = pc.(*net.UDPConn)
	return u
}

// serve reads until the socket is closed or fails, then waits for the
// queries in progress.
func (u *udpServer) serve() error {
	u.wg.Add(1)
	u.reader()
	u.wg.Wait()
	close(u.done)
	if u.closed.Load() {
		return nil
	}
	return u.err
}

// close stops reading; queries in progress are still answered.
func (u *udpServer) close() {
	if u.closed.CompareAndSwap(false, true) {
		u.pc.Close()
	}
}

func (u *udpServer) reader() {
	defer u.wg.Done()
	if u.uc != nil {
		if a, ok := u.uc.LocalAddr().(*net.UDPAddr); ok && a.IP.To4() != nil {
			u.readBatches()
			return
		}
	}
	buf := make([]byte, readBufSize)
	out := make([]byte, 0, udpBufSize)
	for {
		n, from, err := u.read(buf)
		if err != nil {
			if u.stopOn(err) {
				return
			}
			continue
		}
		if resp := u.take(buf[:n], from); resp != nil {
			out = u.write(resp, from, out)
		}
	}
}

// batchSize is how many packets one recvmmsg/sendmmsg call moves: under
// load, the system calls, not the answers, were most of a cached answer's
// cost.
const batchSize = 32

// readBatches is reader for an IPv4 socket on Linux: packets are read and
// answers sent batchSize at a time (golang.org/x/net/ipv4, recvmmsg and
// sendmmsg; one packet at a time elsewhere).
func (u *udpServer) readBatches() {
	pc := ipv4.NewPacketConn(u.uc)
	in := make([]ipv4.Message, batchSize)
	out := make([]ipv4.Message, 0, batchSize)
	bufs := make([][]byte, batchSize)   // read buffers
	packed := make([][]byte, batchSize) // answer buffers
	slots := make([][][]byte, batchSize)
	for i := range in {
		bufs[i] = make([]byte, readBufSize)
		in[i].Buffers = [][]byte{bufs[i]}
		packed[i] = make([]byte, 0, udpBufSize)
		slots[i] = make([][]byte, 1)
	}
	for {
		n, err := pc.ReadBatch(in, 0)
		if err != nil {
			if u.stopOn(err) {
				return
			}
			continue
		}
		out = out[:0]
		for i := range n {
			ua, ok := in[i].Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			resp := u.take(bufs[i][:in[i].N], ua.AddrPort())
			if resp == nil {
				continue
			}
			b, err := resp.PackBuffer(packed[i][:cap(packed[i])])
			if err != nil {
				u.s.Logger.Error().Err(err).Str(eventlog.FieldClient, ua.String()).Msg("dns answer does not pack")
				continue
			}
			if cap(b) > cap(packed[i]) && cap(b) <= dns.MaxMsgSize {
				packed[i] = b[:0]
			}
			slots[i][0] = b
			out = append(out, ipv4.Message{Buffers: slots[i], Addr: in[i].Addr})
		}
		for len(out) > 0 {
			k, err := pc.WriteBatch(out, 0)
			if err != nil || k == 0 {
				break // the client will ask again
			}
			out = out[k:]
		}
	}
}

// stopOn reports whether a read error ends the reader: the socket was
// closed or failed (then recorded for serve to return).
func (u *udpServer) stopOn(err error) bool {
	if u.closed.Load() {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	u.err = err
	u.close()
	return true
}

// take parses one packet and returns the answer, or nil when there is
// none to send now: nothing for this packet, or it was sent upstream and
// is answered when the upstream's answer comes (forward).
func (u *udpServer) take(pkt []byte, from netip.AddrPort) (resp *dns.Msg) {
	req := new(dns.Msg)
	if err := req.Unpack(pkt); err != nil {
		return formErr(pkt)
	}
	defer u.s.recoverPanic(from, req, &resp)
	resp, qr, ok := u.s.start(from, req, false)
	if !ok {
		return resp
	}
	if up, age, memo := u.s.res().CachedMemo(qr.p.DNS, qr.q, qr.do(), req.CheckingDisabled); up != nil {
		return u.s.finish(&qr, up, age, nil, memo)
	}
	u.forward(qr, from)
	return nil
}

// forward asks the upstreams for qr; the answer is finished and sent from
// the goroutine that reads the upstream's answer.
func (u *udpServer) forward(qr query, from netip.AddrPort) {
	u.pending <- struct{}{}
	u.wg.Add(1)
	u.s.res().Forward(qr.p.DNS, qr.q, qr.do(), qr.req.CheckingDisabled, func(up *dns.Msg, err error) {
		defer u.wg.Done()
		defer func() { <-u.pending }()
		var resp *dns.Msg
		func() {
			defer u.s.recoverPanic(from, qr.req, &resp)
			resp = u.s.finish(&qr, up, 0, err, nil)
		}()
		out := packBufs.Get().(*[]byte)
		*out = u.write(resp, from, *out)
		packBufs.Put(out)
	})
}

func (u *udpServer) read(buf []byte) (int, netip.AddrPort, error) {
	if u.uc != nil {
		n, from, err := u.uc.ReadFromUDPAddrPort(buf)
		return n, from, err
	}
	n, a, err := u.pc.ReadFrom(buf)
	return n, addrPortOf(a), err
}

// write packs m into out and sends it; out is returned for reuse. A nil
// m sends nothing.
func (u *udpServer) write(m *dns.Msg, to netip.AddrPort, out []byte) []byte {
	if m == nil {
		return out
	}
	b, err := m.PackBuffer(out[:cap(out)])
	if err != nil {
		u.s.Logger.Error().Err(err).Str(eventlog.FieldClient, to.String()).Msg("dns answer does not pack")
		return out
	}
	if u.uc != nil {
		_, _ = u.uc.WriteToUDPAddrPort(b, to)
	} else {
		_, _ = u.pc.WriteTo(b, net.UDPAddrFromAddrPort(to))
	}
	if cap(b) > cap(out) && cap(b) <= dns.MaxMsgSize {
		out = b[:0]
	}
	return out
}

// formErr is the answer to a packet that does not parse: FORMERR with the
// query's id, as miekg/dns's Server answers; nothing when even the header
// is short or the packet is a response (answering those would let two
// servers bounce packets between them).
func formErr(pkt []byte) *dns.Msg {
	if len(pkt) < 12 || pkt[2]&0x80 != 0 {
		return nil
	}
	m := new(dns.Msg)
	m.Id = uint16(pkt[0])<<8 | uint16(pkt[1])
	m.Response = true
	m.Opcode = int(pkt[2]>>3) & 0xf
	m.Rcode = dns.RcodeFormatError
	return m
}

// recoverPanic, deferred, turns a panic while answering req into a
// SERVFAIL answer in *resp, logged with its stack.
func (s *Server) recoverPanic(client netip.AddrPort, req *dns.Msg, resp **dns.Msg) {
	if v := recover(); v != nil {
		s.Logger.Error().Str(eventlog.FieldProto, eventlog.ProtoDNS).
			Str(eventlog.FieldClient, client.String()).
			Str("panic", fmt.Sprint(v)).Bytes("stack", debug.Stack()).
			Msg("dns query handler panicked")
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeServerFailure)
		*resp = m
	}
}
