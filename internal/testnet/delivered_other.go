//go:build !linux

package testnet

import (
	"net"
	"testing"
)

// Delivered skips the test: only Linux tells how much of what was
// written its peer has acknowledged (SIOCOUTQ).
func Delivered(tb testing.TB, c net.Conn) {
	tb.Helper()
	tb.Skip("testnet.Delivered needs Linux's SIOCOUTQ")
}
