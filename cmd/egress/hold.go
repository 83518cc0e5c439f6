package main

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/firewall"
	"github.com/egress-proxy/egress/firewall/nfqueue"
	"github.com/egress-proxy/egress/proxy/transparent"
)

// holdConnects answers the SYNs q holds (egress run's connect fidelity,
// issue 21): each connection is prepared by tp (decided on its address
// and, when allowed, dialled) while its SYN waits, then the SYN goes on to
// the transparent listener, or is answered as the destination answered
// egress (reset, ICMP unreachable), or dropped when the destination was
// silent, so that the client's connect() ends as it would without egress.
// It returns when q is closed.
func holdConnects(ctx context.Context, q *nfqueue.Queue, tp *transparent.Server, logger zerolog.Logger) {
	type key struct{ src, dst netip.AddrPort }
	var mu sync.Mutex
	waiting := map[key][]uint32{} // a dial in flight, and the SYNs held for it
	var inFlight atomic.Int64
	err := q.Read(func(p nfqueue.Packet) {
		if !p.Dst.IsValid() {
			q.Verdict(p.ID, nfqueue.Verdict{Accept: true})
			return
		}
		k := key{p.Src, p.Dst}
		mu.Lock()
		ids, busy := waiting[k]
		waiting[k] = append(ids, p.ID)
		mu.Unlock()
		if busy {
			return // a retransmitted SYN: answered with the first
		}
		if inFlight.Add(1) > maxHeld {
			// Past the bound, connections go on at once, as without the
			// hold: a burst of connects to a silent destination ties up
			// no more than maxHeld dials.
			inFlight.Add(-1)
			mu.Lock()
			delete(waiting, k)
			mu.Unlock()
			q.Verdict(p.ID, nfqueue.Verdict{Accept: true})
			return
		}
		go func() {
			defer inFlight.Add(-1)
			o := tp.Prepare(ctx, p.Src, p.Dst)
			mu.Lock()
			ids := waiting[k]
			delete(waiting, k)
			mu.Unlock()
			v := verdictFor(o)
			for i, id := range ids {
				vi := v
				if i > 0 && v.Accept && v.Mark == 0 {
					// One SYN goes on; its retransmissions would only
					// clash with it in conntrack.
					vi = nfqueue.Verdict{}
				}
				if err := q.Verdict(id, vi); err != nil {
					logger.Warn().Err(err).Msg("run: answer a held connection")
				}
			}
		}()
	})
	// Read returns only on an error (staticcheck SA4023: never nil).
	if ctx.Err() == nil && !errors.Is(err, os.ErrClosed) {
		logger.Debug().Err(err).Msg("run: connect hold stopped")
	}
}

// maxHeld bounds the connections being prepared at once.
const maxHeld = 1024

// verdictFor is the answer to a held SYN for each outcome.
func verdictFor(o transparent.Outcome) nfqueue.Verdict {
	switch o {
	case transparent.Refused:
		return nfqueue.Verdict{Accept: true, Mark: firewall.MarkRefused}
	case transparent.HostUnreachable:
		return nfqueue.Verdict{Accept: true, Mark: firewall.MarkHostUnreach}
	case transparent.NetUnreachable:
		return nfqueue.Verdict{Accept: true, Mark: firewall.MarkNetUnreach}
	case transparent.Silent:
		return nfqueue.Verdict{} // dropped: the client's own timeout
	}
	return nfqueue.Verdict{Accept: true}
}
