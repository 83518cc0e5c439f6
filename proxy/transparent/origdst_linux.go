package transparent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Netfilter's getsockopt options returning a redirected connection's
// destination before NAT: SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and
// IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h), both 80.
const (
	soOriginalDst     = 80
	ip6tSoOriginalDst = 80
)

// OriginalDst returns the destination a connection redirected by netfilter
// (nftables redirect/dnat, iptables REDIRECT) was addressed to before NAT.
// For a connection that was not redirected it returns the listener's own
// address, which callers treat as a loop.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	local, _ := netip.ParseAddrPort(c.LocalAddr().String())
	var ap netip.AddrPort
	var gerr error
	cerr := rc.Control(func(fd uintptr) {
		// An IPv4 connection on a dual-stack socket has a v4-mapped
		// local address and is tracked as IPv4: ask SOL_IP first then.
		if local.Addr().Is4() || local.Addr().Is4In6() {
			ap, gerr = getOrigDst(int(fd), unix.SOL_IP, soOriginalDst)
			if gerr == nil || !local.Addr().Is4In6() {
				return
			}
		}
		ap, gerr = getOrigDst(int(fd), unix.SOL_IPV6, ip6tSoOriginalDst)
	})
	if cerr != nil {
		return netip.AddrPort{}, cerr
	}
	if gerr != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", gerr)
	}
	return ap, nil
}

func getOrigDst(fd, level, opt int) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet6 // large enough for sockaddr_in too
	size := uint32(unsafe.Sizeof(sa))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&size)), 0)
	if e != 0 {
		return netip.AddrPort{}, e
	}
	raw := (*[unsafe.Sizeof(sa)]byte)(unsafe.Pointer(&sa))
	// sin_port / sin6_port are in network byte order at offset 2.
	port := binary.BigEndian.Uint16(raw[2:4])
	switch sa.Family {
	case unix.AF_INET:
		in4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa))
		return netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), port), nil
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port), nil
	}
	return netip.AddrPort{}, errors.New("original destination: unknown address family " + fmt.Sprint(sa.Family))
}
