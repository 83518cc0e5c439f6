//go:build !unix

package origin

import "net"

// peerClosed cannot peek here: a reused connection the origin closed
// fails its request (retried when idempotent).
func peerClosed(net.Conn) bool { return false }
