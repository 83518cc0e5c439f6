package firewall

// Marks a held SYN is accepted with (see nfqueue.Verdict) for the answer
// chain AddHold makes: the connection then ends as it would have ended
// without egress in between (issue 21).
const (
	// MarkRefused: the destination refused; the SYN is answered with a
	// TCP reset (ECONNREFUSED).
	MarkRefused uint32 = 0x6563_0001
	// MarkHostUnreach: egress got EHOSTUNREACH; ICMP host unreachable.
	MarkHostUnreach uint32 = 0x6563_0002
	// MarkNetUnreach: egress got ENETUNREACH, or cannot reach the
	// destination's family (IPv6 without a route): ICMP no route, so a
	// client falls back to another address at once.
	MarkNetUnreach uint32 = 0x6563_0003
)
