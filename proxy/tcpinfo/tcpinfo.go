// Package tcpinfo reads what the kernel knows of a TCP connection
// (TCP_INFO), so that a tunnel's idle time can be known without putting its
// bytes through user space: the copy stays in splice(2), untouched.
//
// It reads; it never changes a socket. On systems without TCP_INFO every
// answer is "unknown".
package tcpinfo

import (
	"net"
	"time"
)

// Idle is how long neither end of a tunnel has received data: the smaller
// of the two connections' times since their last received segment with
// data. ok is false when either cannot be known (not a TCP socket, not
// Linux, the socket is closed).
func Idle(a, b net.Conn) (d time.Duration, ok bool) {
	da, ok1 := lastRecv(a)
	db, ok2 := lastRecv(b)
	if !ok1 || !ok2 {
		return 0, false
	}
	return min(da, db), true
}
