package policy

import (
	"net/netip"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Setting is one setting of the policy in force, after include:, for
// egress show: its value and where it was set.
type Setting struct {
	Key   string // as the file writes it: default, listen.http, dns.upstreams
	Value string // as flow YAML: deny, 127.0.0.1:3128, [192.0.2.53:53], 10s
	// Source is the FILE:LINE of the file read last that sets it; "" when
	// no file does and egress's default holds.
	Source string
	// Secret marks a value egress must never print (such as a credential
	// an inject: value is): a caller shows it redacted. No setting is
	// secret today (inject: values belong to rules: see Inject); a new one
	// that is says so in its settingKeys entry.
	Secret bool
}

// settingKeys lists every setting egress show prints, in the order the
// docs describe them, with how to read its value from a policy. A test
// checks it against sectionFields, so a new setting cannot be left out.
var settingKeys = []struct {
	key    string
	value  func(p *Policy) string
	secret bool
}{
	{key: "default", value: func(p *Policy) string { return p.Default.String() }},
	{key: "mode", value: func(p *Policy) string { return p.Mode.String() }},
	{key: "allow_from", value: func(p *Policy) string { return prefixesYAML(p.AllowFrom) }},
	{key: "nat64_prefixes", value: func(p *Policy) string { return prefixesYAML(p.NAT64Prefixes) }},
	{key: "listen.http", value: func(p *Policy) string { return yamlScalar(p.Listen.HTTP) }},
	{key: "listen.dns", value: func(p *Policy) string { return yamlScalar(p.Listen.DNS) }},
	{key: "listen.transparent", value: func(p *Policy) string { return yamlScalar(p.Listen.Transparent) }},
	{key: "listen.admin", value: func(p *Policy) string { return yamlScalar(p.Listen.Admin) }},
	{key: "listen.proxy_protocol", value: func(p *Policy) string { return strconv.FormatBool(p.Listen.ProxyProtocol) }},
	{key: "listen.proxy_protocol_from", value: func(p *Policy) string { return prefixesYAML(p.Listen.ProxyProtocolFrom) }},
	{key: "listen.refuse_at_connect", value: func(p *Policy) string { return stringsYAML(p.Listen.RefuseAtConnect) }},
	{key: "listen.via", value: func(p *Policy) string { return strconv.FormatBool(p.Listen.Via) }},
	{key: "log.format", value: func(p *Policy) string { return yamlScalar(p.Log.Format) }},
	{key: "log.level", value: func(p *Policy) string { return yamlScalar(p.Log.Level) }},
	{key: "log.allowed", value: func(p *Policy) string { return strconv.FormatBool(p.Log.Allowed) }},
	{key: "log.file", value: func(p *Policy) string { return yamlScalar(p.Log.File) }},
	{key: "dns.upstreams", value: func(p *Policy) string { return stringsYAML(p.DNS.Upstreams) }},
	{key: "dns.timeout", value: func(p *Policy) string { return durationYAML(p.DNS.Timeout) }},
	{key: "dns.blocked", value: func(p *Policy) string { return yamlScalar(p.DNS.Blocked) }},
	{key: "dns.min_ttl", value: func(p *Policy) string { return durationYAML(p.DNS.MinTTL) }},
	{key: "dns.max_ttl", value: func(p *Policy) string { return durationYAML(p.DNS.MaxTTL) }},
	{key: "dns.cache_size", value: func(p *Policy) string { return strconv.Itoa(p.DNS.CacheSize) }},
	{key: "dns.resolve_unlisted", value: func(p *Policy) string { return strconv.FormatBool(p.DNS.ResolveUnlisted) }},
	{key: "timeouts.dial", value: func(p *Policy) string { return durationYAML(p.Timeouts.Dial) }},
	{key: "timeouts.header", value: func(p *Policy) string { return durationYAML(p.Timeouts.Header) }},
	{key: "timeouts.response", value: func(p *Policy) string { return durationYAML(p.Timeouts.Response) }},
	{key: "timeouts.tunnel_idle", value: func(p *Policy) string { return durationYAML(p.Timeouts.TunnelIdle) }},
	{key: "timeouts.half_close", value: func(p *Policy) string { return durationYAML(p.Timeouts.HalfClose) }},
	{key: "timeouts.drain", value: func(p *Policy) string { return durationYAML(p.Timeouts.Drain) }},
	{key: "limits.max_tunnels", value: func(p *Policy) string { return strconv.Itoa(p.Limits.MaxTunnels) }},
	{key: "limits.max_header_bytes", value: func(p *Policy) string { return strconv.Itoa(p.Limits.MaxHeaderBytes) }},
	{key: "reload.revoke_open", value: func(p *Policy) string { return strconv.FormatBool(p.Reload.RevokeOpen) }},
	// The paths of the CA's files, not their contents: a path is no
	// secret (the key file's mode is checked where it is read).
	{key: "tls.ca_cert", value: func(p *Policy) string { return yamlScalar(p.TLS.CACert) }},
	{key: "tls.ca_key", value: func(p *Policy) string { return yamlScalar(p.TLS.CAKey) }},
	{key: "tls.upstream_ca", value: func(p *Policy) string { return yamlScalar(p.TLS.UpstreamCA) }},
	{key: "tls.ech", value: func(p *Policy) string {
		if p.TLS.ECHPass {
			return "pass"
		}
		return "refuse"
	}},
}

// Settings returns every setting of the policy in force, with where it
// was set (the file read last that sets it: see docs/policy.md,
// "Layering").
func (p *Policy) Settings() []Setting {
	out := make([]Setting, 0, len(settingKeys))
	for _, k := range settingKeys {
		out = append(out, Setting{Key: k.key, Value: k.value(p), Source: p.sources[k.key], Secret: k.secret})
	}
	return out
}

// ClientRules returns the rules of the clients: entry i (as in Clients):
// its own, in file order, and the deny rules of the other files that it
// gets too (see Layering). They must not be modified.
func (p *Policy) ClientRules(i int) (own, inherited []*Rule) {
	if i < 0 || i >= len(p.clientSets) {
		return nil, nil
	}
	rs := p.clientSets[i]
	return append([]*Rule(nil), rs.rules...), append([]*Rule(nil), rs.inherited...)
}

// TopRules returns the top-level rules, the included files' first, each
// file's as it lists them. They must not be modified.
func (p *Policy) TopRules() []*Rule { return append([]*Rule(nil), p.top.rules...) }

// recordSource notes where a setting (a top-level one, or one of a
// section's: what is "the policy" or the section's name) is set; a file
// read later overwrites what an earlier one noted, as its value does.
func (l *loader) recordSource(what string, k *yaml.Node) {
	if l.fs == nil {
		return
	}
	key := k.Value
	switch {
	case what == "the policy" && (key == "default" || key == "mode" || key == "allow_from" || key == "nat64_prefixes"):
	case sectionFields[what] != nil:
		key = what + "." + key
	default:
		return // a clients entry, a rule: not a setting
	}
	if l.fs.sources == nil {
		l.fs.sources = map[string]string{}
	}
	l.fs.sources[key] = location(l.file, k.Line)
}

func prefixesYAML(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = cidrScalar(p)
	}
	return "[" + strings.Join(s, ", ") + "]"
}

func stringsYAML(ss []string) string {
	s := make([]string, len(ss))
	for i, v := range ss {
		s[i] = yamlScalar(v)
	}
	return "[" + strings.Join(s, ", ") + "]"
}

// durationYAML writes d as the policy does: 10s, 1h, 1m30s, 0s.
func durationYAML(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
