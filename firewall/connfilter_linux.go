//go:build linux

package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/firewall/nfnetlink"
	"github.com/egress-proxy/egress/firewall/nftexpr"
	"github.com/egress-proxy/egress/policy"
)

// The sets of address leases (see Sandbox.Lease): an address and a port,
// or an address on every port, per family.
const (
	setLease4    = "lease4"
	setLease6    = "lease6"
	setLeaseAll4 = "leaseall4"
	setLeaseAll6 = "leaseall6"
)

// maxLeases bounds each lease set: the kernel refuses more (ENOSPC), and
// the addresses beyond it stay refused until leases run out.
const maxLeases = 65536

// maxLeasePorts is how many ports of a lease are written one by one; a
// lease on more ports covers every port (a superset: the transparent
// listener still decides on the port).
const maxLeasePorts = 64

// MaxRules bounds the rules a connect filter may add to its chain
// (nftables walks them one by one for each new connection): see Check.
const MaxRules = 4096

// AddRules adds to chain, before anything accepts TCP, the rules of
// the connect filter f: a new TCP connection (conntrack state new, so an
// established connection outlives its lease) to a leased or allowed
// destination goes on to the NAT redirect (in the order of
// policy.ConnectFilter), one that f refuses is copied to
// NFLOG group logGroup (prefix "tcp"; 0 logs nothing) and answered with a TCP reset, which connect()
// reports as ECONNREFUSED. Egress's own listeners on loopback (exempt) and
// DNS over TCP always go on.
func AddRules(c *nftables.Conn, t *nftables.Table, chain *nftables.Chain, f *policy.ConnectFilter, exempt []uint16, logGroup uint16) error {
	return addRules(c, t, chain, f, exempt, logGroup, true)
}

// addRules is AddRules, making the lease sets only with makeSets (a
// Host's Update finds them in place).
func addRules(c *nftables.Conn, t *nftables.Table, chain *nftables.Chain, f *policy.ConnectFilter, exempt []uint16, logGroup uint16, makeSets bool) error {
	var rules [][]expr.Any
	add := func(e ...[]expr.Any) { rules = append(rules, nftexpr.Concat(e...)) }
	accept := nftexpr.Verdict(expr.VerdictAccept)
	newTCP := nftexpr.Concat(nftexpr.L4(unix.IPPROTO_TCP), nftexpr.CtNew())
	for _, p := range exempt {
		for _, fam := range []byte{unix.NFPROTO_IPV4, unix.NFPROTO_IPV6} {
			add(newTCP, nftexpr.LoopbackDst(fam), nftexpr.DPort(p), accept)
		}
	}
	add(newTCP, nftexpr.DPort(53), accept)

	sets := []struct {
		name string
		fam  byte
		key  nftables.SetDatatype
		port bool
	}{
		{setLease4, unix.NFPROTO_IPV4, nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService), true},
		{setLease6, unix.NFPROTO_IPV6, nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService), true},
		{setLeaseAll4, unix.NFPROTO_IPV4, nftables.TypeIPAddr, false},
		{setLeaseAll6, unix.NFPROTO_IPV6, nftables.TypeIP6Addr, false},
	}
	for _, s := range sets {
		set := &nftables.Set{Table: t, Name: s.name, KeyType: s.key, Concatenation: s.port, HasTimeout: true, Size: maxLeases}
		if makeSets {
			if err := c.AddSet(set, nil); err != nil {
				return fmt.Errorf("add set %s: %w", s.name, err)
			}
		}
		e := nftexpr.Concat(newTCP, nftexpr.Family(s.fam), nftexpr.DAddr(s.fam, unix.NFT_REG_1))
		if s.port {
			// The port goes in the 32-bit register after the address
			// (NFT_REG32_00 + 1 or + 4): a concatenation is read from
			// consecutive registers.
			next := uint32(unix.NFT_REG32_00 + 1)
			if s.fam == unix.NFPROTO_IPV6 {
				next = unix.NFT_REG32_00 + 4
			}
			e = append(e, &expr.Payload{DestRegister: next, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
		}
		e = append(e, &expr.Lookup{SourceRegister: unix.NFT_REG_1, SetName: s.name, SetID: set.ID})
		add(e, accept)
	}

	for _, d := range f.Allow {
		for _, m := range destMatches(d) {
			add(newTCP, m, accept)
		}
	}
	refuse := nftexpr.Concat([]expr.Any{&expr.Counter{}}, nftexpr.Log(logGroup, "tcp"), []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}})
	// The IPv6 forms of refused IPv4 ranges, then what is left of the
	// ranges that carry IPv4 addresses, before the guards that cover
	// those ranges (policy.ConnectFilter's order).
	// They are many (every refused IPv4 range under five translations):
	// those on every port go in one interval set per family, one lookup
	// instead of a rule each, which would also overflow the socket with
	// the kernel's echo of each rule (ENOBUFS).
	var whole []netip.Prefix
	for _, d := range f.RefuseCarried {
		if len(d.Ports) == 0 {
			whole = append(whole, d.Prefix)
			continue
		}
		for _, m := range destMatches(d) {
			add(newTCP, m, refuse)
		}
	}
	for _, fam := range []byte{unix.NFPROTO_IPV4, unix.NFPROTO_IPV6} {
		set, elems := intervalSet(t, fam, whole)
		if set == nil {
			continue
		}
		if err := c.AddSet(set, elems); err != nil {
			return fmt.Errorf("add set of refused translations: %w", err)
		}
		add(newTCP, nftexpr.Family(fam), nftexpr.DAddr(fam, unix.NFT_REG_1),
			[]expr.Any{&expr.Lookup{SourceRegister: unix.NFT_REG_1, SetName: set.Name, SetID: set.ID}}, refuse)
	}
	for _, d := range f.Carriers {
		for _, m := range destMatches(d) {
			add(newTCP, m, accept)
		}
	}
	if f.RefuseRest {
		add(newTCP, refuse)
	} else {
		for _, d := range f.Refuse {
			for _, m := range destMatches(d) {
				add(newTCP, m, refuse)
			}
		}
	}
	if len(rules) > MaxRules {
		return fmt.Errorf("the policy needs %d connect filter rules, more than %d", len(rules), MaxRules)
	}
	for _, e := range rules {
		c.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: e})
	}
	return nil
}

// intervalSet returns an anonymous interval set of the prefixes of family
// fam in ps and its elements, or nil when there are none. A prefix inside
// another is left out: the kernel refuses overlapping intervals.
func intervalSet(t *nftables.Table, fam byte, ps []netip.Prefix) (*nftables.Set, []nftables.SetElement) {
	var in []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is4() == (fam == unix.NFPROTO_IPV4) {
			in = append(in, p.Masked())
		}
	}
	in = slices.DeleteFunc(in, func(p netip.Prefix) bool {
		for _, q := range in {
			if q != p && q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
				return true
			}
		}
		return false
	})
	if len(in) == 0 {
		return nil, nil
	}
	slices.SortFunc(in, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	in = slices.Compact(in)
	var elems []nftables.SetElement
	for _, p := range in {
		elems = append(elems, nftables.SetElement{Key: p.Addr().AsSlice()})
		if end := lastAddr(p).Next(); end.IsValid() {
			elems = append(elems, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	key := nftables.TypeIPAddr
	if fam == unix.NFPROTO_IPV6 {
		key = nftables.TypeIP6Addr
	}
	return &nftables.Set{Table: t, Anonymous: true, Constant: true, Interval: true, KeyType: key}, elems
}

// lastAddr is the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// destMatches returns the matches of d, one per port range (a rule holds
// one range).
func destMatches(d policy.Dest) [][]expr.Any {
	p := d.Prefix
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	m := nftexpr.DstIn(p)
	if len(d.Ports) == 0 {
		return [][]expr.Any{m}
	}
	out := make([][]expr.Any, 0, len(d.Ports))
	for _, pr := range d.Ports {
		out = append(out, nftexpr.Concat(m, nftexpr.DPortRange(pr.Lo, pr.Hi)))
	}
	return out
}

// Leaser writes address leases into the sets AddRules made, through a
// NETLINK_NETFILTER socket opened in their network namespace. The socket
// works from outside the namespace too: the kernel checks CAP_NET_ADMIN
// over the namespace of the socket's opener and of the sender, and egress
// run, root or the owner of the sandbox's user namespace, has it. Safe for
// concurrent use.
type Leaser struct {
	table string
	mu    sync.Mutex
	f     *os.File
	seq   uint32
	buf   []byte
	have  map[leaseKey]time.Time // when each lease written runs out
}

type leaseKey struct {
	addr netip.Addr
	port uint16 // 0: every port
}

// maxLeaseMemory bounds what the leaser remembers of the leases it wrote;
// forgetting only costs a rewrite.
const maxLeaseMemory = 65536

// leaseSlack is how much longer a lease must become before it is
// rewritten (a tenth of the lease when that is less): a name looked up
// again and again costs no syscall.
const leaseSlack = 5 * time.Second

// OpenSocket opens the NETLINK_NETFILTER socket a Leaser writes through,
// in the current network namespace.
func OpenSocket() (*os.File, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("nftables socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "nftables")
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		f.Close()
		return nil, fmt.Errorf("nftables socket bind: %w", err)
	}
	return f, nil
}

// NewLeaser writes the leases of the sets in table (family inet) through
// f, a socket from OpenSocket. It owns f.
func NewLeaser(f *os.File, table string) *Leaser {
	// A reply is due at once; a second covers a kernel under load.
	tv := unix.NsecToTimeval(time.Second.Nanoseconds())
	unix.SetsockoptTimeval(int(f.Fd()), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return &Leaser{table: table, f: f, buf: make([]byte, 8192), have: map[leaseKey]time.Time{}}
}

// Lease lets new connections to addr on ports (every port when all)
// through the filter for d (at least a second), and returns when the
// kernel has the elements: call it before a DNS answer with addr leaves.
// Connections opened meanwhile outlive the lease.
func (l *Leaser) Lease(addr netip.Addr, ports []policy.PortRange, all bool, d time.Duration) error {
	addr = addr.Unmap().WithZone("")
	n := 0
	for _, pr := range ports {
		n += int(pr.Hi-pr.Lo) + 1
	}
	if n > maxLeasePorts {
		all = true
	}
	var keys []leaseKey
	if all {
		keys = []leaseKey{{addr: addr}}
	} else {
		for _, pr := range ports {
			for p := int(pr.Lo); p <= int(pr.Hi); p++ {
				keys = append(keys, leaseKey{addr, uint16(p)})
			}
		}
	}
	// The kernel's lease outlasts the caller's by slack, since it is
	// rewritten only when it would end slack early: an address the caller
	// still remembers is never refused by the kernel. A timeout of 0
	// would make the element permanent: at least a second.
	slack := min(leaseSlack, d/10)
	d = max(d+slack, time.Second)
	now := time.Now()
	until := now.Add(d)

	l.mu.Lock()
	defer l.mu.Unlock()
	var fresh, renew []leaseKey
	for _, k := range keys {
		had, ok := l.have[k]
		switch {
		case ok && had.After(until.Add(-slack)):
		case ok:
			renew = append(renew, k)
		default:
			fresh = append(fresh, k)
		}
	}
	if len(fresh)+len(renew) == 0 {
		return nil
	}
	// Linux before 6.10 keeps an existing element's timeout when it is
	// added again: renew by deleting and adding in one batch (atomic, no
	// gap). The kernel may have expired it meanwhile: then the delete
	// fails the batch (ENOENT), and adding alone does.
	err := l.write(fresh, renew, d)
	if errors.Is(err, unix.ENOENT) && len(renew) > 0 {
		err = l.write(append(fresh, renew...), nil, d)
	}
	if err != nil {
		if errors.Is(err, unix.ENOSPC) {
			return fmt.Errorf("%w: the lease sets are full (%d elements)", err, maxLeases)
		}
		return err
	}
	if len(l.have) > maxLeaseMemory {
		clear(l.have)
	}
	for _, k := range append(fresh, renew...) {
		l.have[k] = until
	}
	return nil
}

// nf_tables netlink constants (linux/netfilter/nf_tables.h, nfnetlink.h).
const (
	nfnlSubsysNFTables = 10
	nfnlMsgBatchBegin  = 0x10
	nfnlMsgBatchEnd    = 0x11
	nftMsgNewSetElem   = 12
	nftMsgDelSetElem   = 14

	nftaSetElemListTable    = 1
	nftaSetElemListSet      = 2
	nftaSetElemListElements = 3
	nftaListElem            = 1
	nftaSetElemKey          = 1
	nftaSetElemTimeout      = 4
	nftaDataValue           = 1
)

// write sends one batch that deletes the elements of renew, then adds
// those of add and renew with timeout d, and waits for the kernel's
// answer: nil, or the first error (the whole batch is then undone).
func (l *Leaser) write(add, renew []leaseKey, d time.Duration) error {
	var ms [8]byte
	binary.BigEndian.PutUint64(ms[:], uint64(d.Milliseconds()))
	var msg []byte
	l.seq++
	first := l.seq
	msg = append(msg, nfnetlink.Msg(nfnlMsgBatchBegin, unix.NLM_F_REQUEST, l.seq, unix.AF_UNSPEC, nfnlSubsysNFTables, nil)...)
	var want []uint32
	emit := func(typ uint16, keys []leaseKey, timeout []byte) {
		bySet := map[string][]byte{}
		var order []string
		for _, k := range keys {
			set, key := k.set()
			attrs := nfnetlink.Attr(nftaSetElemKey|unix.NLA_F_NESTED, nfnetlink.Attr(nftaDataValue, key))
			if timeout != nil {
				attrs = append(attrs, nfnetlink.Attr(nftaSetElemTimeout, timeout)...)
			}
			if _, ok := bySet[set]; !ok {
				order = append(order, set)
			}
			bySet[set] = append(bySet[set], nfnetlink.Attr(nftaListElem|unix.NLA_F_NESTED, attrs)...)
		}
		for _, set := range order {
			l.seq++
			want = append(want, l.seq)
			msg = append(msg, nfnetlink.Msg(nfnlSubsysNFTables<<8|typ,
				unix.NLM_F_REQUEST|unix.NLM_F_CREATE|unix.NLM_F_ACK, l.seq, unix.NFPROTO_INET, 0, concatBytes(
					nfnetlink.Attr(nftaSetElemListTable, cstring(l.table)),
					nfnetlink.Attr(nftaSetElemListSet, cstring(set)),
					nfnetlink.Attr(nftaSetElemListElements|unix.NLA_F_NESTED, bySet[set]),
				))...)
		}
	}
	emit(nftMsgDelSetElem, renew, nil)
	emit(nftMsgNewSetElem, append(append([]leaseKey(nil), add...), renew...), ms[:])
	l.seq++
	msg = append(msg, nfnetlink.Msg(nfnlMsgBatchEnd, unix.NLM_F_REQUEST, l.seq, unix.AF_UNSPEC, nfnlSubsysNFTables, nil)...)
	fd := int(l.f.Fd())
	if err := retryEINTR(func() error { return unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}) }); err != nil {
		return fmt.Errorf("write lease: %w", err)
	}
	// Every message of a batch that fails is answered; the first error
	// undoes the batch, so read until every ack or an error.
	for len(want) > 0 {
		var n int
		err := retryEINTR(func() (err error) { n, _, err = unix.Recvfrom(fd, l.buf, 0); return err })
		if err != nil {
			return fmt.Errorf("write lease: no answer from the kernel: %w", err)
		}
		b := l.buf[:n]
		for len(b) >= unix.NLMSG_HDRLEN {
			ml := int(binary.NativeEndian.Uint32(b[0:]))
			if ml < unix.NLMSG_HDRLEN || ml > len(b) {
				break
			}
			typ := binary.NativeEndian.Uint16(b[4:])
			seq := binary.NativeEndian.Uint32(b[8:])
			if typ == unix.NLMSG_ERROR && ml >= unix.NLMSG_HDRLEN+4 && seq >= first {
				if code := int32(binary.NativeEndian.Uint32(b[unix.NLMSG_HDRLEN:])); code != 0 {
					l.drain(fd)
					return fmt.Errorf("write lease: %w", unix.Errno(-code))
				}
				want = slices.DeleteFunc(want, func(w uint32) bool { return w == seq })
			}
			b = b[min((ml+3)&^3, len(b)):]
		}
	}
	return nil
}

// drain reads what the kernel still has to say about a failed batch, so
// that the next write reads its own answers.
func (l *Leaser) drain(fd int) {
	for {
		if _, _, err := unix.Recvfrom(fd, l.buf, unix.MSG_DONTWAIT); err != nil && err != unix.EINTR {
			return
		}
	}
}

// set is the set k belongs in and its key: the address, and the port in
// a 32-bit register of its own.
func (k leaseKey) set() (string, []byte) {
	key := k.addr.AsSlice()
	switch {
	case k.port != 0 && k.addr.Is4():
		return setLease4, append(key, byte(k.port>>8), byte(k.port), 0, 0)
	case k.port != 0:
		return setLease6, append(key, byte(k.port>>8), byte(k.port), 0, 0)
	case k.addr.Is4():
		return setLeaseAll4, key
	}
	return setLeaseAll6, key
}

// retryEINTR calls f until it is not interrupted by a signal (a blocking
// socket call with SO_RCVTIMEO is never restarted, signal(7)).
func retryEINTR(f func() error) error {
	for {
		if err := f(); err != unix.EINTR {
			return err
		}
	}
}

// Close closes the socket.
func (l *Leaser) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}

func concatBytes(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func cstring(s string) []byte { return append([]byte(s), 0) }
