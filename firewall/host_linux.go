package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"

	"github.com/egress-proxy/egress/firewall/nflog"
	"github.com/egress-proxy/egress/firewall/nfqueue"
	"github.com/egress-proxy/egress/policy"
)

// Host is the connect filter of egress serve on a host: a table of its
// own (HostTable, family inet) whose output chain sends the new TCP
// connections of some users to the filter of AddRules, at priority -160,
// before the redirect rules of docs/transparent.md (-150 and -100) see
// them. Their refusals are copied to NFLOG group HostLogGroup. Installing
// it needs CAP_NET_ADMIN.
type Host struct {
	mu     sync.Mutex // serialises Update
	table  *nftables.Table
	check  *nftables.Chain
	exempt []uint16
	leases *Leaser
	log    *os.File
	reader *nflog.Reader
	queue  *nfqueue.Queue // nil without HostConfig.Hold, or where it failed
	// HoldError says why HostConfig.Hold could not be done ("" when it
	// was, or was not asked for).
	HoldError string
}

// HostQueue is the NFQUEUE queue the Host holds SYNs in ("ec").
const HostQueue = 0x6563

// HostTable is the nftables table (family inet) a Host owns; Install
// replaces one left behind.
const HostTable = "egress_connect"

// HostLogGroup is the NFLOG group of the Host's refusals ("ec").
const HostLogGroup = 0x6563

// HostConfig says whose connections to filter, and how.
type HostConfig struct {
	// UIDs are the users whose new TCP connections are filtered (the
	// plugin users of docs/transparent.md).
	UIDs []uint32
	// Exempt are egress's own listener ports on loopback (HTTP proxy,
	// transparent, DNS): a filtered user reaches them.
	Exempt []uint16
	Filter policy.ConnectFilter
	// Hold, when set, holds the SYN of the users' new TCP connections
	// that the filter passes in queue HostQueue until Queue's reader
	// answers it (see AddHold). Where the kernel has no NFQUEUE target,
	// HoldError says why and nothing is held.
	Hold bool
}

// InstallHost installs the Host's table in the current network namespace.
func InstallHost(cfg HostConfig) (*Host, error) {
	if len(cfg.UIDs) == 0 {
		return nil, errors.New("connect filter: no users to filter")
	}
	c, err := NewConn()
	if err != nil {
		return nil, fmt.Errorf("connect filter: nftables: %w", err)
	}
	h := &Host{exempt: cfg.Exempt}
	h.table = &nftables.Table{Family: nftables.TableFamilyINet, Name: HostTable}
	// Replace a table an earlier egress left (add, then delete, then add:
	// deleting a table that does not exist fails the batch).
	c.AddTable(h.table)
	c.DelTable(h.table)
	c.AddTable(h.table)
	base := c.AddChain(&nftables.Chain{
		Name: "output", Table: h.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityRef(-160),
		Policy: ptr(nftables.ChainPolicyAccept),
	})
	h.check = c.AddChain(&nftables.Chain{Name: "check", Table: h.table})
	// A positive match on the user, as in docs/transparent.md: packets
	// the kernel sends on nobody's behalf (the resets of reject) have no
	// owner and must not be filtered.
	for _, uid := range cfg.UIDs {
		c.AddRule(&nftables.Rule{Table: h.table, Chain: base, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(uid)},
			&expr.Verdict{Kind: expr.VerdictJump, Chain: h.check.Name},
		}})
	}
	if err := AddRules(c, h.table, h.check, &cfg.Filter, cfg.Exempt, HostLogGroup); err != nil {
		return nil, fmt.Errorf("connect filter: %w", err)
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("connect filter: install table inet %s: %w", HostTable, err)
	}
	sock, err := OpenSocket()
	if err != nil {
		h.remove()
		return nil, fmt.Errorf("connect filter: %w", err)
	}
	h.leases = NewLeaser(sock, HostTable)
	if h.log, err = nflog.Open(HostLogGroup); err != nil {
		h.leases.Close()
		h.remove()
		return nil, fmt.Errorf("connect filter: refusal log: %w", err)
	}
	if cfg.Hold {
		if err := h.installHold(cfg); err != nil {
			h.HoldError = err.Error()
		}
	}
	return h, nil
}

// installHold binds queue HostQueue, then adds AddHold's chains to the
// table (a batch of its own: the filter stands without them).
func (h *Host) installHold(cfg HostConfig) error {
	f, err := nfqueue.Open(HostQueue)
	if err != nil {
		return err
	}
	c, err := NewConn()
	if err != nil {
		f.Close()
		return fmt.Errorf("nftables: %w", err)
	}
	AddHold(c, h.table, HostQueue, cfg.Exempt, cfg.UIDs)
	if err := c.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("install the NFQUEUE rules (needs nft_compat and xt_NFQUEUE): %w", err)
	}
	h.queue = nfqueue.New(f, HostQueue)
	return nil
}

// Queue is where the SYNs HostConfig.Hold holds wait for a verdict; nil
// when nothing is held.
func (h *Host) Queue() *nfqueue.Queue { return h.queue }

// Update replaces the filter's rules with those of f (after a reload);
// the leases stay.
func (h *Host) Update(f policy.ConnectFilter) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, err := NewConn()
	if err != nil {
		return fmt.Errorf("connect filter: nftables: %w", err)
	}
	c.FlushChain(h.check)
	if err := addRules(c, h.table, h.check, &f, h.exempt, HostLogGroup, false); err != nil {
		return fmt.Errorf("connect filter: %w", err)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("connect filter: update table inet %s: %w", HostTable, err)
	}
	return nil
}

// Lease is Leaser.Lease on the Host's sets.
func (h *Host) Lease(addr netip.Addr, ports []policy.PortRange, all bool, d time.Duration) error {
	return h.leases.Lease(addr, ports, all, d)
}

// ReadRefusals calls fn, from another goroutine, for each connection the
// filter refuses from now on, until Close. Call it at most once.
func (h *Host) ReadRefusals(fn func(nflog.Packet)) {
	if h.reader == nil && h.log != nil {
		h.reader = nflog.NewReader(h.log, fn)
	}
}

// Close removes the table: the users' connections are then decided by
// the transparent listener alone.
func (h *Host) Close() error {
	h.leases.Close()
	if h.queue != nil {
		h.queue.Close()
	}
	if h.reader != nil {
		h.reader.Close()
	} else if h.log != nil {
		h.log.Close()
	}
	return h.remove()
}

func (h *Host) remove() error {
	c, err := NewConn()
	if err != nil {
		return err
	}
	c.DelTable(h.table)
	return c.Flush()
}

func ptr[T any](v T) *T { return &v }
