//go:build linux

package nfqueue

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/firewall/nfnetlink"
)

func TestParse(t *testing.T) {
	v4 := make([]byte, 24)
	v4[0], v4[9] = 0x45, unix.IPPROTO_TCP
	copy(v4[12:], []byte{127, 0, 0, 1})
	copy(v4[16:], []byte{10, 1, 2, 3})
	binary.BigEndian.PutUint16(v4[20:], 40000)
	binary.BigEndian.PutUint16(v4[22:], 5432)
	v6 := make([]byte, 44)
	v6[0], v6[6] = 0x60, unix.IPPROTO_TCP
	v6[23] = 1
	copy(v6[24:], netip.MustParseAddr("64:ff9b::a01:203").AsSlice())
	binary.BigEndian.PutUint16(v6[40:], 40001)
	binary.BigEndian.PutUint16(v6[42:], 443)
	udp := append([]byte(nil), v4...)
	udp[9] = unix.IPPROTO_UDP
	hdr := func(id uint32) []byte {
		b := make([]byte, sizeofPacketHdr)
		binary.BigEndian.PutUint32(b, id)
		return nfnetlink.Attr(nfqaPacketHdr, b)
	}
	for _, tt := range []struct {
		name     string
		attrs    []byte
		ok       bool
		src, dst string
	}{
		{"an IPv4 SYN by its addresses", append(hdr(7), nfnetlink.Attr(nfqaPayload, v4)...), true, "127.0.0.1:40000", "10.1.2.3:5432"},
		{"an IPv6 SYN by its addresses", append(hdr(7), nfnetlink.Attr(nfqaPayload, v6)...), true, "[::1]:40001", "[64:ff9b::a01:203]:443"},
		{"not TCP: an id without addresses", append(hdr(7), nfnetlink.Attr(nfqaPayload, udp)...), true, "invalid AddrPort", "invalid AddrPort"},
		{"a payload cut short: an id without addresses", append(hdr(7), nfnetlink.Attr(nfqaPayload, v4[:21])...), true, "invalid AddrPort", "invalid AddrPort"},
		{"no packet header: nothing to answer", nfnetlink.Attr(nfqaPayload, v4), false, "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, ok := parse(tt.attrs)
			if ok != tt.ok {
				t.Fatalf("ok = %v", ok)
			}
			if !ok {
				return
			}
			if p.ID != 7 || p.Src.String() != tt.src || p.Dst.String() != tt.dst {
				t.Errorf("parsed %d %v -> %v, want 7 %s -> %s", p.ID, p.Src, p.Dst, tt.src, tt.dst)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte{8, 0, 1, 0, 0, 0, 0, 7})
	f.Fuzz(func(t *testing.T, b []byte) { parse(b) })
}
