package policy

import (
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// schemePorts gives the port of a URL without one.
var schemePorts = map[string]uint16{
	"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21,
	"postgres": 5432, "postgresql": 5432, "mysql": 3306, "redis": 6379,
	"amqp": 5672, "amqps": 5671, "mongodb": 27017, "smtp": 25, "ssh": 22,
}

// SchemePort is the usual port of a URL scheme (https 443, postgres 5432,
// ...), case-insensitive; ok is false for a scheme egress does not know.
func SchemePort(scheme string) (port uint16, ok bool) {
	port, ok = schemePorts[strings.ToLower(scheme)]
	return port, ok
}

// urlTarget is what a URL written where a host, cidr or target belongs
// stands for: its host (a name in normal form, or an address) and port
// (explicit, else the scheme's; 0 when neither says). ok is false when s
// is not a URL (scheme://host...).
type urlTarget struct {
	host string
	ip   netip.Addr
	port uint16
	path bool // the URL has a path: rules cannot name one
}

func parseURL(s string) (urlTarget, bool) {
	scheme, rest, found := strings.Cut(s, "://")
	if !found || scheme == "" || rest == "" {
		return urlTarget{}, false
	}
	u, err := url.Parse(s)
	if err != nil || u.Hostname() == "" {
		return urlTarget{}, false
	}
	var t urlTarget
	t.port, _ = SchemePort(u.Scheme)
	if p := u.Port(); p != "" {
		n, err := parsePort(p)
		if err != nil || n == 0 {
			return urlTarget{}, false
		}
		t.port = n
	}
	t.path = strings.Trim(u.EscapedPath(), "/") != "" || u.RawQuery != ""
	name, ip, err := NormalizeHost(u.Hostname())
	if err != nil {
		return urlTarget{}, false
	}
	t.host, t.ip = name, ip
	return t, true
}

// rule is the allow rule the URL meant, as flow YAML.
func (t urlTarget) rule() string {
	if t.ip.IsValid() {
		return cidrHint(t.ip, t.port)
	}
	return hostHint(t.host, t.port)
}

// target is the URL as an --allow target: HOST:PORT, [IPv6]:PORT or HOST.
func (t urlTarget) target() string {
	h := t.host
	if t.ip.IsValid() {
		h = t.ip.String()
		if t.ip.Is6() && t.port != 0 {
			h = "[" + h + "]"
		}
	}
	if t.port == 0 {
		return h
	}
	return h + ":" + strconv.Itoa(int(t.port))
}

// urlMessage explains a URL written where a rule's host or cidr belongs.
func urlMessage(what, s string, t urlTarget) string {
	msg := what + " " + strconv.Quote(s) + " is a URL: a rule names a host and its ports"
	if t.path {
		msg += " (egress decides on hosts and ports, never on paths)"
	}
	return msg + "; write " + t.rule()
}
