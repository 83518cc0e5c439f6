package policy

import (
	"net/netip"
	"time"

	"gopkg.in/yaml.v3"
)

func (l *loader) clients(n *yaml.Node, p *Policy) {
	for _, item := range l.seq(n, "clients") {
		item = l.node(item)
		// Default and mode are inherited from the top level once every
		// file is read (see LoadWith).
		c := Client{}
		rs := &ruleset{}
		var defN, modeN *yaml.Node
		seen := l.mapping(item, "a clients entry", []field{
			{"name", func(k, v *yaml.Node) {
				if s, ok := l.str(v, "name"); ok {
					if s == "" || s == "default" {
						l.errf(l.node(v), "a client's name must not be empty or %q", "default")
					} else {
						l.clientName(v, s)
					}
					c.Name = s
				}
			}},
			{"sources", func(k, v *yaml.Node) { c.Sources = l.prefixes(v, "sources") }},
			{"users", func(k, v *yaml.Node) {
				for _, u := range l.seq(v, "users") {
					if s, ok := l.str(u, "a user"); ok {
						c.Users = append(c.Users, s)
					}
				}
			}},
			{"default", func(k, v *yaml.Node) { c.Default, defN = l.verdict(v, "default"), l.node(v) }},
			{"mode", func(k, v *yaml.Node) { c.Mode, modeN = l.mode(v, "mode"), l.node(v) }},
			{"allow", func(k, v *yaml.Node) { rs.rules = append(rs.rules, l.rules(v, Allow, "allow")...) }},
			{"deny", func(k, v *yaml.Node) { rs.rules = append(rs.rules, l.rules(v, Deny, "deny")...) }},
		})
		if item.Kind != yaml.MappingNode {
			continue
		}
		if seen["name"] == nil {
			l.required(item, "a clients entry needs a name", "name")
		}
		if seen["sources"] == nil && seen["users"] == nil {
			l.required(item, "a clients entry needs sources or users to select its clients", "sources", "users")
		}
		if u := seen["users"]; u != nil && seen["sources"] == nil {
			// egress does not check proxy passwords: the user name only
			// selects the entry, so any client can claim it.
			l.warnf(l.file, u.Line, u.Column, "users without sources: egress does not authenticate proxy users, so any client that can reach egress may send this user name and get this entry's rules; add sources")
		}
		rs.name, rs.def, rs.mode = c.Name, c.Default, c.Mode
		p.Clients = append(p.Clients, c)
		p.clientSets = append(p.clientSets, rs)
		l.fs.clientsSet = append(l.fs.clientsSet, clientAt{file: l.file, layer: l.layer, def: defN, mode: modeN})
	}
}

func (l *loader) addr(n *yaml.Node, what string) string {
	s, ok := l.str(n, what)
	if !ok || s == "" {
		return ""
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		l.errf(l.node(n), "%s %q: want IP:PORT such as 127.0.0.1:3128 or [::1]:3128 (or \"\" for off)", what, s)
		return ""
	}
	if !ap.Addr().Unmap().IsLoopback() {
		l.fs.listens = append(l.fs.listens, listenAt{file: l.file, node: l.node(n), field: what})
	}
	return s
}

func (l *loader) listen(n *yaml.Node, ls *Listen) {
	var ppKey, racKey *yaml.Node
	l.mapping(n, "listen", []field{
		{"http", func(k, v *yaml.Node) { ls.HTTP = l.addr(v, "listen.http") }},
		{"dns", func(k, v *yaml.Node) { ls.DNS = l.addr(v, "listen.dns") }},
		{"transparent", func(k, v *yaml.Node) { ls.Transparent = l.addr(v, "listen.transparent") }},
		{"admin", func(k, v *yaml.Node) { ls.Admin = l.addr(v, "listen.admin") }},
		{"proxy_protocol", func(k, v *yaml.Node) { ls.ProxyProtocol = l.boolean(v, "listen.proxy_protocol"); ppKey = k }},
		{"proxy_protocol_from", func(k, v *yaml.Node) { ls.ProxyProtocolFrom = l.prefixes(v, "listen.proxy_protocol_from") }},
		{"refuse_at_connect", func(k, v *yaml.Node) { ls.RefuseAtConnect = l.users(v, "listen.refuse_at_connect"); racKey = k }},
		{"via", func(k, v *yaml.Node) { ls.Via = l.boolean(v, "listen.via") }},
	})
	if len(ls.RefuseAtConnect) > 0 && ls.Transparent == "" {
		l.errf(racKey, "listen.refuse_at_connect needs listen.transparent: the filter passes what the transparent listener may allow")
	}
	if ls.ProxyProtocol && len(ls.ProxyProtocolFrom) == 0 {
		// Anyone who may send a header may claim any client address,
		// and with it another client's policy or a way past allow_from.
		l.errf(ppKey, "listen.proxy_protocol needs listen.proxy_protocol_from: the addresses of the load balancers allowed to send PROXY headers")
	}
}

// users reads a list of user names or numeric uids.
func (l *loader) users(n *yaml.Node, what string) []string {
	var out []string
	for _, u := range l.seq(n, what) {
		if un := l.node(u); un.Kind == yaml.ScalarNode && un.Tag == "!!int" {
			u = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: un.Value, Line: un.Line, Column: un.Column}
		}
		s, ok := l.str(u, "a user")
		if !ok {
			continue
		}
		if !validUser(s) {
			l.errf(l.node(u), "%s: %q is not a user name or uid (such as plugin or 1001)", what, s)
			continue
		}
		out = append(out, s)
	}
	return out
}

// validUser reports whether s can be a user name (POSIX portable
// characters, not starting with '-') or a uid.
func validUser(s string) bool {
	if s == "" || len(s) > 32 || s[0] == '-' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func (l *loader) log(n *yaml.Node, lg *Log) {
	l.mapping(n, "log", []field{
		{"format", func(k, v *yaml.Node) {
			if s, ok := l.enum(v, "log.format", "json", "console"); ok {
				lg.Format = s
			}
		}},
		{"level", func(k, v *yaml.Node) {
			if s, ok := l.enum(v, "log.level", "debug", "info", "warn", "error"); ok {
				lg.Level = s
			}
		}},
		{"allowed", func(k, v *yaml.Node) { lg.Allowed = l.boolean(v, "log.allowed") }},
		{"file", func(k, v *yaml.Node) { lg.File, _ = l.str(v, "log.file") }},
	})
}

func (l *loader) dns(n *yaml.Node, d *DNS) {
	var minKey *yaml.Node
	l.mapping(n, "dns", []field{
		{"upstreams", func(k, v *yaml.Node) {
			d.Upstreams = nil
			for _, u := range l.seq(v, "dns.upstreams") {
				s, ok := l.str(u, "a dns upstream")
				if !ok {
					continue
				}
				if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
					s = netip.AddrPortFrom(a, 53).String()
				} else if _, err := netip.ParseAddrPort(s); err != nil {
					l.errf(l.node(u), "dns upstream %q: want IP or IP:PORT such as 192.0.2.53:53", s)
					continue
				}
				d.Upstreams = append(d.Upstreams, s)
			}
		}},
		{"timeout", func(k, v *yaml.Node) {
			if t, ok := l.duration(v, "dns.timeout"); ok {
				if t == 0 {
					l.errf(l.node(v), "dns.timeout must be more than 0")
				}
				d.Timeout = t
			}
		}},
		{"blocked", func(k, v *yaml.Node) {
			if s, ok := l.enum(v, "dns.blocked", "nxdomain", "refused", "empty"); ok {
				d.Blocked = s
			}
		}},
		{"min_ttl", func(k, v *yaml.Node) { minKey = k; d.MinTTL, _ = l.duration(v, "dns.min_ttl") }},
		{"max_ttl", func(k, v *yaml.Node) { d.MaxTTL, _ = l.duration(v, "dns.max_ttl") }},
		{"resolve_unlisted", func(k, v *yaml.Node) { d.ResolveUnlisted = l.boolean(v, "dns.resolve_unlisted") }},
		{"cache_size", func(k, v *yaml.Node) {
			if c, ok := l.integer(v, "dns.cache_size"); ok {
				if c < 0 {
					l.errf(l.node(v), "dns.cache_size must not be negative")
				}
				d.CacheSize = c
			}
		}},
	})
	if d.MinTTL > d.MaxTTL {
		l.errf(minKey, "dns.min_ttl %s is more than dns.max_ttl %s", d.MinTTL, d.MaxTTL)
	}
}

func (l *loader) timeouts(n *yaml.Node, t *Timeouts) {
	positive := func(dst *time.Duration, what string) func(k, v *yaml.Node) {
		return func(k, v *yaml.Node) {
			if d, ok := l.duration(v, what); ok {
				if d == 0 {
					l.errf(l.node(v), "%s must be more than 0", what)
				}
				*dst = d
			}
		}
	}
	l.mapping(n, "timeouts", []field{
		{"dial", positive(&t.Dial, "timeouts.dial")},
		{"header", positive(&t.Header, "timeouts.header")},
		{"response", positive(&t.Response, "timeouts.response")},
		{"tunnel_idle", func(k, v *yaml.Node) { t.TunnelIdle, _ = l.duration(v, "timeouts.tunnel_idle") }},
		{"half_close", positive(&t.HalfClose, "timeouts.half_close")},
		{"drain", func(k, v *yaml.Node) { t.Drain, _ = l.duration(v, "timeouts.drain") }},
	})
}

func (l *loader) limits(n *yaml.Node, lm *Limits) {
	positive := func(dst *int, what string) func(k, v *yaml.Node) {
		return func(k, v *yaml.Node) {
			if c, ok := l.integer(v, what); ok {
				if c <= 0 {
					l.errf(l.node(v), "%s must be more than 0", what)
				}
				*dst = c
			}
		}
	}
	l.mapping(n, "limits", []field{
		{"max_tunnels", positive(&lm.MaxTunnels, "limits.max_tunnels")},
		{"max_header_bytes", positive(&lm.MaxHeaderBytes, "limits.max_header_bytes")},
	})
}

func (l *loader) reload(n *yaml.Node, r *Reload) {
	l.mapping(n, "reload", []field{
		{"revoke_open", func(k, v *yaml.Node) { r.RevokeOpen = l.boolean(v, "reload.revoke_open") }},
	})
}
