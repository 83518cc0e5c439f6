//go:build linux

package nflog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/firewall/nfnetlink"
)

// nfnetlink_log constants (linux/netfilter/nfnetlink_log.h).
const (
	nfnlSubsysULOG   = 4
	nfulnlMsgPacket  = 0
	nfulnlMsgConfig  = 1
	nfulaCfgCmd      = 1
	nfulaCfgMode     = 2
	nfulaCfgQThresh  = 5
	nfulnlCfgCmdBind = 1
	nfulnlCopyPacket = 2
	nfulaPayload     = 9
	copyRange        = 128
	readBufSize      = 64 << 10
)

// Open opens a netlink socket bound to NFLOG group in the current network
// namespace. It needs CAP_NET_ADMIN there; reading it later does not, so
// the descriptor can be handed to a process outside.
func Open(group uint16) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("nflog socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "nflog")
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		f.Close()
		return nil, fmt.Errorf("nflog bind: %w", err)
	}
	var mode [6]byte
	binary.BigEndian.PutUint32(mode[:4], copyRange)
	mode[4] = nfulnlCopyPacket
	var qthresh [4]byte
	binary.BigEndian.PutUint32(qthresh[:], 1) // deliver each packet at once
	for i, attr := range [][]byte{
		nfnetlink.Attr(nfulaCfgCmd, []byte{nfulnlCfgCmdBind}),
		nfnetlink.Attr(nfulaCfgMode, mode[:]),
		nfnetlink.Attr(nfulaCfgQThresh, qthresh[:]),
	} {
		if err := nflogConfig(fd, group, uint32(i+1), attr); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

// nflogConfig sends one NFULNL_MSG_CONFIG for group and waits for its ack.
func nflogConfig(fd int, group uint16, seq uint32, attr []byte) error {
	// res_id is the group.
	msg := nfnetlink.Msg(nfnlSubsysULOG<<8|nfulnlMsgConfig, unix.NLM_F_REQUEST|unix.NLM_F_ACK, seq, unix.AF_UNSPEC, group, attr)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("nflog config: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("nflog config ack: %w", err)
	}
	if n >= unix.NLMSG_HDRLEN+4 && binary.NativeEndian.Uint16(buf[4:]) == unix.NLMSG_ERROR {
		if code := int32(binary.NativeEndian.Uint32(buf[16:])); code != 0 {
			return fmt.Errorf("nflog config: %w", unix.Errno(-code))
		}
	}
	return nil
}

// Reader reads an NFLOG socket (see Open).
type Reader struct {
	f    *os.File
	fn   func(Packet)
	done chan struct{}
	mu   sync.Mutex // serialises parsing between the reader and Close's drain
	buf  []byte
}

// NewReader starts reading f, an NFLOG socket, calling fn from another
// goroutine for each packet until Close. It owns f.
func NewReader(f *os.File, fn func(Packet)) *Reader {
	// os.NewFile polls a descriptor only if it is non-blocking when the
	// File is made: make a new one, or packets would be read only at Close.
	if fd, err := unix.Dup(int(f.Fd())); err == nil {
		unix.CloseOnExec(fd)
		unix.SetNonblock(fd, true)
		f.Close()
		f = os.NewFile(uintptr(fd), "nflog")
	}
	d := &Reader{f: f, fn: fn, done: make(chan struct{}), buf: make([]byte, readBufSize)}
	go d.run()
	return d
}

func (d *Reader) run() {
	defer close(d.done)
	rc, err := d.f.SyscallConn()
	if err != nil {
		return
	}
	for {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			d.mu.Lock()
			defer d.mu.Unlock()
			n, _, rerr = unix.Recvfrom(int(fd), d.buf, 0)
			if rerr == unix.EAGAIN {
				return false
			}
			if rerr == nil {
				parseNflog(d.buf[:n], d.fn)
			}
			return true
		})
		if err != nil || (rerr != nil && !errors.Is(rerr, unix.ENOBUFS)) {
			return // closed; ENOBUFS only means the kernel dropped some
		}
	}
}

// Close reads what is already queued, then stops.
func (d *Reader) Close() error {
	if rc, err := d.f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			d.mu.Lock()
			defer d.mu.Unlock()
			for {
				n, _, err := unix.Recvfrom(int(fd), d.buf, unix.MSG_DONTWAIT)
				if err != nil {
					if errors.Is(err, unix.ENOBUFS) {
						continue
					}
					return
				}
				parseNflog(d.buf[:n], d.fn)
			}
		})
	}
	err := d.f.Close()
	<-d.done
	return err
}

// parseNflog calls fn for each NFULNL_MSG_PACKET in a netlink datagram.
func parseNflog(b []byte, fn func(Packet)) {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:]))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return
		}
		typ := binary.NativeEndian.Uint16(b[4:])
		msg := b[unix.NLMSG_HDRLEN:l]
		b = b[min((l+3)&^3, len(b)):]
		if typ != nfnlSubsysULOG<<8|nfulnlMsgPacket || len(msg) < 4 {
			continue
		}
		attrs := msg[4:] // after struct nfgenmsg
		for len(attrs) >= 4 {
			al := int(binary.NativeEndian.Uint16(attrs[0:]))
			at := binary.NativeEndian.Uint16(attrs[2:]) & 0x3fff // without NLA_F_NESTED/NLA_F_NET_BYTEORDER
			if al < 4 || al > len(attrs) {
				break
			}
			if at == nfulaPayload {
				if d, ok := parsePacket(attrs[4:al]); ok {
					fn(d)
				}
			}
			attrs = attrs[min((al+3)&^3, len(attrs)):]
		}
	}
}

// parsePacket reads the protocol and destination of an IP packet.
func parsePacket(p []byte) (Packet, bool) {
	if len(p) < 1 {
		return Packet{}, false
	}
	var proto byte
	var src, dst netip.Addr
	var l4 []byte
	switch p[0] >> 4 {
	case 4:
		if len(p) < 20 {
			return Packet{}, false
		}
		ihl := int(p[0]&0x0f) * 4
		proto = p[9]
		src = netip.AddrFrom4([4]byte(p[12:16]))
		dst = netip.AddrFrom4([4]byte(p[16:20]))
		if ihl <= len(p) {
			l4 = p[ihl:]
		}
	case 6:
		if len(p) < 40 {
			return Packet{}, false
		}
		proto = p[6]
		src = netip.AddrFrom16([16]byte(p[8:24]))
		dst = netip.AddrFrom16([16]byte(p[24:40]))
		l4 = p[40:]
	default:
		return Packet{}, false
	}
	d := Packet{Src: netip.AddrPortFrom(src, 0), Dst: netip.AddrPortFrom(dst, 0)}
	switch proto {
	case unix.IPPROTO_UDP, unix.IPPROTO_TCP, unix.IPPROTO_SCTP, unix.IPPROTO_UDPLITE:
		d.Proto = map[byte]string{unix.IPPROTO_UDP: "udp", unix.IPPROTO_TCP: "tcp", unix.IPPROTO_SCTP: "sctp", unix.IPPROTO_UDPLITE: "udplite"}[proto]
		if len(l4) >= 4 {
			d.Src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(l4[0:2]))
			d.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(l4[2:4]))
		}
	case unix.IPPROTO_ICMP:
		d.Proto = "icmp"
	case unix.IPPROTO_ICMPV6:
		d.Proto = "ipv6-icmp"
	default:
		d.Proto = strconv.Itoa(int(proto))
	}
	return d, true
}
