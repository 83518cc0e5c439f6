//go:build linux

package firewall

import (
	"fmt"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

func TestIntervalSet(t *testing.T) {
	ps := []netip.Prefix{
		netip.MustParsePrefix("64:ff9b::a9fe:0/112"),
		netip.MustParsePrefix("64:ff9b::a9fe:a9fe/128"), // inside the one above: left out
		netip.MustParsePrefix("ffff::/16"),              // ends at the last address: no end element
		netip.MustParsePrefix("10.0.0.0/8"),             // the other family
		netip.MustParsePrefix("::a00:0/104"),
	}
	_, elems := intervalSet(nil, unix.NFPROTO_IPV6, ps)
	var got []string
	for _, e := range elems {
		a, _ := netip.AddrFromSlice(e.Key)
		got = append(got, fmt.Sprint(a, e.IntervalEnd))
	}
	want := "[::a00:0 false ::b00:0 true 64:ff9b::a9fe:0 false 64:ff9b::a9ff:0 true ffff:: false]"
	if fmt.Sprint(got) != want {
		t.Errorf("elements %v, want %s", got, want)
	}
	if s, _ := intervalSet(nil, unix.NFPROTO_IPV4, ps[:3]); s != nil {
		t.Error("a set for a family without prefixes")
	}
}
