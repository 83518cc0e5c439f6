//go:build linux

package nfqueue

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"sync"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/firewall/nfnetlink"
)

// nfnetlink_queue constants (linux/netfilter/nfnetlink_queue.h,
// linux/netfilter.h).
const (
	nfnlSubsysQueue = 3
	nfqnlMsgPacket  = 0
	nfqnlMsgVerdict = 1
	nfqnlMsgConfig  = 2
	nfqaCfgCmd      = 1
	nfqaCfgParams   = 2
	nfqaCfgQueueLen = 3
	nfqnlCfgCmdBind = 1
	nfqnlCopyPacket = 2
	nfqaPacketHdr   = 1
	nfqaVerdictHdr  = 2
	nfqaMark        = 3
	nfqaPayload     = 10
	copyRange       = 80 // an IPv6 header and a TCP header's ports
	readBufSize     = 64 << 10
	nfDrop          = 0
	nfAccept        = 1
	nfqFlagBypass   = 1
	xtNFQueueRev    = 3
	defaultQueueLen = 4096
	sizeofNlmsghdr  = unix.NLMSG_HDRLEN
	sizeofNfgenmsg  = 4
	sizeofPacketHdr = 7
)

// Target is the rule expression that sends a packet to queue num. With
// bypass, a packet is accepted when nobody listens on the queue (egress
// has not opened it, or has exited), as if the rule were not there.
func Target(num uint16, bypass bool) *expr.Target {
	// struct xt_NFQ_info_v3 {__u16 queuenum, queues_total, flags;},
	// native order, padded to XT_ALIGN (8).
	info := make(xt.Unknown, 8)
	binary.NativeEndian.PutUint16(info[0:], num)
	binary.NativeEndian.PutUint16(info[2:], 1)
	if bypass {
		binary.NativeEndian.PutUint16(info[4:], nfqFlagBypass)
	}
	return &expr.Target{Name: "NFQUEUE", Rev: xtNFQueueRev, Info: &info}
}

// Open opens a netlink socket bound to queue num in the current network
// namespace. It needs CAP_NET_ADMIN there; reading it and sending
// verdicts later does not, so the descriptor can be handed to a process
// outside (see New).
func Open(num uint16) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("nfqueue socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "nfqueue")
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		f.Close()
		return nil, fmt.Errorf("nfqueue bind: %w", err)
	}
	// A queue that overflows drops what it cannot hold: the client then
	// retransmits its SYN, as after any loss.
	unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 1)
	var params [5]byte
	binary.BigEndian.PutUint32(params[:4], copyRange)
	params[4] = nfqnlCopyPacket
	var qlen [4]byte
	binary.BigEndian.PutUint32(qlen[:], defaultQueueLen)
	for i, attr := range [][]byte{
		// struct nfqnl_msg_config_cmd {__u8 command, _pad; __be16 pf;}
		nfnetlink.Attr(nfqaCfgCmd, []byte{nfqnlCfgCmdBind, 0, 0, 0}),
		nfnetlink.Attr(nfqaCfgParams, params[:]),
		nfnetlink.Attr(nfqaCfgQueueLen, qlen[:]),
	} {
		if err := config(fd, num, uint32(i+1), attr); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

// config sends one NFQNL_MSG_CONFIG for queue num and waits for its ack.
func config(fd int, num uint16, seq uint32, attr []byte) error {
	msg := nfnetlink.Msg(nfnlSubsysQueue<<8|nfqnlMsgConfig, unix.NLM_F_REQUEST|unix.NLM_F_ACK, seq, unix.AF_UNSPEC, num, attr)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("nfqueue config: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("nfqueue config ack: %w", err)
	}
	if n >= sizeofNlmsghdr+4 && binary.NativeEndian.Uint16(buf[4:]) == unix.NLMSG_ERROR {
		if code := int32(binary.NativeEndian.Uint32(buf[16:])); code != 0 {
			return fmt.Errorf("nfqueue config: %w", unix.Errno(-code))
		}
	}
	return nil
}

// Queue reads held packets from a socket from Open and answers them.
// Verdict is safe for concurrent use.
type Queue struct {
	f   *os.File
	num uint16
	mu  sync.Mutex // one verdict written at a time
}

// New reads and answers the held packets of queue num through f, a
// socket from Open. It owns f.
func New(f *os.File, num uint16) *Queue {
	// os.NewFile polls a descriptor only if it is non-blocking when the
	// File is made (see nflog.NewReader).
	if fd, err := unix.Dup(int(f.Fd())); err == nil {
		unix.CloseOnExec(fd)
		unix.SetNonblock(fd, true)
		f.Close()
		f = os.NewFile(uintptr(fd), "nfqueue")
	}
	return &Queue{f: f, num: num}
}

// Read calls fn for each held packet, in order, until Close; fn must not
// block (answer with Verdict, at once or later). A packet whose addresses
// cannot be read is given to fn with zero addresses.
func (q *Queue) Read(fn func(Packet)) error {
	rc, err := q.f.SyscallConn()
	if err != nil {
		return err
	}
	buf := make([]byte, readBufSize)
	for {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			return err // closed
		}
		if rerr != nil {
			if rerr == unix.EINTR || rerr == unix.ENOBUFS {
				continue
			}
			return fmt.Errorf("nfqueue read: %w", rerr)
		}
		b := buf[:n]
		for len(b) >= sizeofNlmsghdr {
			ml := int(binary.NativeEndian.Uint32(b[0:]))
			if ml < sizeofNlmsghdr || ml > len(b) {
				break
			}
			typ := binary.NativeEndian.Uint16(b[4:])
			if typ == nfnlSubsysQueue<<8|nfqnlMsgPacket && ml >= sizeofNlmsghdr+sizeofNfgenmsg {
				if p, ok := parse(b[sizeofNlmsghdr+sizeofNfgenmsg : ml]); ok {
					fn(p)
				}
			}
			b = b[min((ml+3)&^3, len(b)):]
		}
	}
}

// parse reads a packet message's attributes: the id, and the addresses
// and ports of the IP and TCP headers of the payload.
func parse(attrs []byte) (p Packet, ok bool) {
	var payload []byte
	haveID := false
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs[0:]))
		typ := binary.NativeEndian.Uint16(attrs[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < 4 || l > len(attrs) {
			break
		}
		v := attrs[4:l]
		switch typ {
		case nfqaPacketHdr:
			if len(v) >= sizeofPacketHdr {
				p.ID, haveID = binary.BigEndian.Uint32(v), true
			}
		case nfqaPayload:
			payload = v
		}
		attrs = attrs[min((l+3)&^3, len(attrs)):]
	}
	if !haveID {
		return p, false
	}
	p.Src, p.Dst, _ = addrs(payload)
	return p, true
}

// addrs reads the source and destination of a TCP packet's IP header and
// the ports of its TCP header.
func addrs(b []byte) (src, dst netip.AddrPort, ok bool) {
	if len(b) < 1 {
		return src, dst, false
	}
	var s, d netip.Addr
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		ihl := int(b[0]&0xf) * 4
		if len(b) < ihl+4 || ihl < 20 || b[9] != unix.IPPROTO_TCP {
			return src, dst, false
		}
		s = netip.AddrFrom4([4]byte(b[12:16]))
		d = netip.AddrFrom4([4]byte(b[16:20]))
		l4 = b[ihl:]
	case 6:
		// Extension headers before TCP are not followed: a SYN with one
		// is accepted as it came.
		if len(b) < 40+4 || b[6] != unix.IPPROTO_TCP {
			return src, dst, false
		}
		s = netip.AddrFrom16([16]byte(b[8:24]))
		d = netip.AddrFrom16([16]byte(b[24:40]))
		l4 = b[40:]
	default:
		return src, dst, false
	}
	return netip.AddrPortFrom(s, binary.BigEndian.Uint16(l4[0:])), netip.AddrPortFrom(d, binary.BigEndian.Uint16(l4[2:])), true
}

// Verdict answers the held packet id.
func (q *Queue) Verdict(id uint32, v Verdict) error {
	var hdr [8]byte
	if v.Accept {
		binary.BigEndian.PutUint32(hdr[0:], nfAccept)
	} else {
		binary.BigEndian.PutUint32(hdr[0:], nfDrop)
	}
	binary.BigEndian.PutUint32(hdr[4:], id)
	attrs := nfnetlink.Attr(nfqaVerdictHdr, hdr[:])
	if v.Mark != 0 {
		var m [4]byte
		binary.BigEndian.PutUint32(m[:], v.Mark)
		attrs = append(attrs, nfnetlink.Attr(nfqaMark, m[:])...)
	}
	msg := nfnetlink.Msg(nfnlSubsysQueue<<8|nfqnlMsgVerdict, unix.NLM_F_REQUEST, 0, unix.AF_UNSPEC, q.num, attrs)
	rc, err := q.f.SyscallConn()
	if err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN && serr != unix.EINTR
	}); err != nil {
		return fmt.Errorf("nfqueue verdict: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("nfqueue verdict: %w", serr)
	}
	return nil
}

// Close closes the socket; a Read in progress returns.
func (q *Queue) Close() error { return q.f.Close() }
