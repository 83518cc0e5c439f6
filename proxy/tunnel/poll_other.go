//go:build !linux

package tunnel

import "net"

// direction is the poller's state of one direction; without epoll there
// is none and every tunnel copies on two goroutines.
type direction struct{}

func (d *direction) closed() {}

func (t *Tunnel) preparePolled(client, upstream net.Conn) bool { return false }

func (t *Tunnel) startPolled() {}
