package sandbox

import "github.com/egress-proxy/egress/policy"

// UnixRefusal is a unix socket the sandbox refused a process.
type UnixRefusal struct {
	// Path is the address as the process gave it (relative perhaps), ""
	// for a datagram socket.
	Path string
	// Socket is the socket file Path named, absolute and with symlinks
	// resolved: what --allow-unix would have to name.
	Socket  string
	Process Process
	Reason  policy.Reason
}
