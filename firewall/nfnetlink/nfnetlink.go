// Package nfnetlink encodes the netfilter netlink messages egress writes
// by hand (NFLOG's configuration, nf_tables set elements): a message
// header with its struct nfgenmsg, and attributes. It sends nothing.
package nfnetlink

import "encoding/binary"

// Header sizes (linux/netlink.h, linux/netfilter/nfnetlink.h).
const (
	sizeofNlmsghdr = 16
	sizeofNfgenmsg = 4
)

// Msg is one netlink message of type typ with a struct nfgenmsg (family
// fam, version 0, res_id resID in network order) followed by attrs.
func Msg(typ, flags uint16, seq uint32, fam byte, resID uint16, attrs []byte) []byte {
	b := make([]byte, sizeofNlmsghdr+sizeofNfgenmsg, sizeofNlmsghdr+sizeofNfgenmsg+len(attrs))
	b = append(b, attrs...)
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	binary.NativeEndian.PutUint32(b[8:], seq)
	b[16], b[17] = fam, 0
	binary.BigEndian.PutUint16(b[18:], resID)
	return b
}

// Attr is one netlink attribute, padded to 4 bytes.
func Attr(typ uint16, data []byte) []byte {
	l := 4 + len(data)
	b := make([]byte, (l+3)&^3)
	binary.NativeEndian.PutUint16(b[0:], uint16(l))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[4:], data)
	return b
}
