//go:build !linux

package tcpinfo

import (
	"net"
	"time"
)

func lastRecv(net.Conn) (time.Duration, bool) { return 0, false }
