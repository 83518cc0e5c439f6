//go:build linux

package firewall

import (
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/firewall/nfqueue"
	"github.com/egress-proxy/egress/firewall/nftexpr"
)

// Chain priorities of AddHold: after the connect filter's (-150 in the
// sandbox, -160 on a host), before NAT (-100).
const (
	holdPriority   = -140
	answerPriority = -130
)

// AddHold adds to table t two output chains: one sends the SYN of every
// new TCP connection of the users owners (everyone's when nil) to queue
// num (with bypass: accepted as before when egress does not listen),
// except those to loopback ports in exempt and to port 53; the other
// answers a SYN accepted with one of the marks above. Whatever the connect
// filter refused never reaches them.
func AddHold(c *nftables.Conn, t *nftables.Table, num uint16, exempt []uint16, owners []uint32) {
	hold := c.AddChain(&nftables.Chain{
		Name: "hold", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityRef(holdPriority),
	})
	accept := nftexpr.Verdict(expr.VerdictAccept)
	newTCP := nftexpr.Concat(nftexpr.L4(unix.IPPROTO_TCP), nftexpr.CtNew())
	for _, p := range exempt {
		for _, fam := range []byte{unix.NFPROTO_IPV4, unix.NFPROTO_IPV6} {
			c.AddRule(&nftables.Rule{Table: t, Chain: hold, Exprs: nftexpr.Concat(newTCP, nftexpr.LoopbackDst(fam), nftexpr.DPort(p), accept)})
		}
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: hold, Exprs: nftexpr.Concat(newTCP, nftexpr.DPort(53), accept)})
	queue := nftexpr.Concat(newTCP, synOnly(), []expr.Any{nfqueue.Target(num, true)})
	if owners == nil {
		c.AddRule(&nftables.Rule{Table: t, Chain: hold, Exprs: queue})
	}
	for _, uid := range owners {
		c.AddRule(&nftables.Rule{Table: t, Chain: hold, Exprs: nftexpr.Concat([]expr.Any{
			&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(uid)},
		}, queue)})
	}

	answer := c.AddChain(&nftables.Chain{
		Name: "answer", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityRef(answerPriority),
	})
	for _, a := range []struct {
		mark uint32
		r    *expr.Reject
	}{
		{MarkRefused, &expr.Reject{Type: unix.NFT_REJECT_TCP_RST}},
		{MarkHostUnreach, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_HOST_UNREACH}},
		{MarkNetUnreach, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_NO_ROUTE}},
	} {
		c.AddRule(&nftables.Rule{Table: t, Chain: answer, Exprs: nftexpr.Concat(newTCP, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(a.mark)},
			a.r,
		})})
	}
}

// synOnly matches a TCP segment with SYN set and ACK clear.
func synOnly() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x12}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
	}
}
