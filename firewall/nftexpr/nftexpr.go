//go:build linux

// Package nftexpr builds the nftables expressions egress's rules are made
// of (sandbox's redirect rules, firewall's connect filter): matches on
// protocol, port, address and conntrack state, and verdicts. Each function
// returns expressions that use register 1 only, so they chain in one rule.
package nftexpr

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Concat joins expression lists into one rule's.
func Concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// L4 matches the transport protocol.
func L4(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// DPort matches the transport destination port (TCP and UDP both keep it
// at offset 2).
func DPort(p uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: BE16(p)},
	}
}

// DPortRange matches a destination port from lo to hi.
func DPortRange(lo, hi uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: BE16(lo), ToData: BE16(hi)},
	}
}

// Family matches the network protocol family (unix.NFPROTO_IPV4 or
// NFPROTO_IPV6).
func Family(fam byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam}},
	}
}

// DAddr loads the destination address of family fam into reg.
func DAddr(fam byte, reg uint32) []expr.Any {
	if fam == unix.NFPROTO_IPV4 {
		return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}}
	}
	return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16}}
}

// DstIn matches a destination address inside p (its family included).
func DstIn(p netip.Prefix) []expr.Any {
	p = p.Masked()
	fam := byte(unix.NFPROTO_IPV6)
	if p.Addr().Is4() {
		fam = unix.NFPROTO_IPV4
	}
	m := Family(fam)
	if p.Bits() == 0 {
		return m
	}
	m = append(m, DAddr(fam, 1)...)
	if p.Bits() < p.Addr().BitLen() {
		mask := net.CIDRMask(p.Bits(), p.Addr().BitLen())
		m = append(m, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(mask)), Mask: mask, Xor: make([]byte, len(mask))})
	}
	return append(m, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Addr().AsSlice()})
}

// LoopbackDst matches family fam and a loopback destination: 127.0.0.0/8
// or ::1.
func LoopbackDst(fam byte) []expr.Any {
	if fam == unix.NFPROTO_IPV4 {
		return DstIn(netip.MustParsePrefix("127.0.0.0/8"))
	}
	return DstIn(netip.MustParsePrefix("::1/128"))
}

// CtNew matches the first packet of a connection (conntrack state new).
func CtNew() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// RedirectTo redirects to port on the local host (NAT chains only).
func RedirectTo(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: BE16(port)},
		&expr.Redir{RegisterProtoMin: 1},
	}
}

// Verdict ends a rule with k.
func Verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

// Log copies the packet to NFLOG group (with prefix, 128 bytes: the IP and
// transport headers); group 0 logs nothing.
func Log(group uint16, prefix string) []expr.Any {
	if group == 0 {
		return nil
	}
	return []expr.Any{&expr.Log{
		Key:     1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_SNAPLEN,
		Group:   group,
		Data:    []byte(prefix),
		Snaplen: 128,
	}}
}

// BE16 is v in network byte order.
func BE16(v uint16) []byte {
	b := make([]byte, 2)
	binary.BigEndian.PutUint16(b, v)
	return b
}
