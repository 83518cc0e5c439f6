//go:build !linux

package httpproxy

import (
	"io"
	"net"
)

// Outside Linux there is no epoll poller and no splice (poll.go,
// splice.go): every tunnel copies on two goroutines with io.Copy. This is
// enough for plugin authors running egress serve on macOS; appliances run
// Linux.

type poller struct{}

type direction struct{}

func (d *direction) closed() {}

// startPolled is always false here: the caller copies on goroutines.
func (t *tunnel) startPolled(up, client net.Conn) bool { return false }

// copyConn copies src to dst until src's EOF and returns the bytes copied.
func copyConn(dst, src net.Conn) (int64, error) { return io.Copy(dst, src) }
