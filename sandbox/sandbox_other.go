//go:build !linux

// Package sandbox runs a command in a network namespace whose only way out
// is egress. It needs Linux (network namespaces, nftables): elsewhere Start
// returns an error.
package sandbox

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/egress-proxy/egress/firewall/nflog"
	"github.com/egress-proxy/egress/firewall/nfqueue"
	"github.com/egress-proxy/egress/policy"
)

// Exit codes of a sandbox that could not run its command.
const (
	ExitSetupFailed = 125
	ExitCannotExec  = 126
	ExitNotFound    = 127
)

// Config says what to run.
type Config struct {
	Args           []string
	Env            []string
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Exe            string
	ExeArgs        []string
	Filter         *policy.ConnectFilter
	AllowUnix      []string
	UnixRefused    func(UnixRefusal)
	Hold           bool
}

// Sandbox is a running command and the listeners of its namespace.
type Sandbox struct {
	Transparent, HTTP, DNSTCP net.Listener
	DNS                       net.PacketConn
	ProxyURL                  string
	Rootless                  bool
	HoldError                 string
}

// Drop is one packet the namespace's rules refused.
type Drop = nflog.Packet

// Process is a process of the sandbox.
type Process struct {
	PID       int
	Comm, Exe string
}

func (p Process) String() string { return p.Comm }

var errUnsupported = errors.New("egress run needs Linux (network namespaces and nftables)")

// Start fails: there are no network namespaces here.
func Start(Config) (*Sandbox, error) { return nil, errUnsupported }

// MaybeChild returns at once.
func MaybeChild([]string, io.Writer) {}

func (sb *Sandbox) Pid() int                             { return 0 }
func (sb *Sandbox) Signal(os.Signal) error               { return errUnsupported }
func (sb *Sandbox) ReadDrops(func(Drop))                 {}
func (sb *Sandbox) Wait() (int, error)                   { return ExitSetupFailed, errUnsupported }
func (sb *Sandbox) Close() error                         { return nil }
func (sb *Sandbox) Owner(netip.AddrPort) (Process, bool) { return Process{}, false }
func (sb *Sandbox) Settle(context.Context)               {}
func (sb *Sandbox) Queue() *nfqueue.Queue                { return nil }
func (sb *Sandbox) Lease(netip.Addr, []policy.PortRange, bool, time.Duration) error {
	return errUnsupported
}
