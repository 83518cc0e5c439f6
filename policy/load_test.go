package policy

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLoadErrors(t *testing.T) {
	cases := []struct {
		name string
		text string
		want []string // "LINE:COL: message substring", in order
	}{
		{"an empty file", "", []string{"1:1: the file is empty"}},
		{"refuse_at_connect needs the transparent listener", "version: 1\ndefault: deny\nlisten:\n  refuse_at_connect: [plugin]\n", []string{"4:3: listen.refuse_at_connect needs listen.transparent"}},
		{"refuse_at_connect takes users", "version: 1\ndefault: deny\nlisten:\n  transparent: 127.0.0.1:3129\n  refuse_at_connect: [\"a b\", [1]]\n", []string{
			`5:23: listen.refuse_at_connect: "a b" is not a user name or uid`, "5:30: a user must be a string, not a list"}},
		{"a comment only", "# nothing\n", []string{"1:1: the file is empty"}},
		{"version is required", "default: allow\n", []string{"1:1: version is required"}},
		{"default is required", "version: 1\n", []string{"1:1: default is required"}},
		{"an unsupported version", "version: 2\ndefault: allow\n", []string{"1:10: unsupported version 2"}},
		{"version as a string", "version: \"1\"\ndefault: allow\n", []string{"1:10: version must be an integer"}},
		{"a bad default", "version: 1\ndefault: maybe\n", []string{`2:10: default must be allow or deny, not "maybe"`}},
		{"a bad mode", "version: 1\ndefault: deny\nmode: dry-run\n", []string{"3:7: mode must be enforce or audit"}},
		{"an unknown field", "version: 1\ndefault: deny\nallows: []\n", []string{`3:1: unknown field "allows" in the policy`}},
		{"a misspelt field gets a suggestion", "version: 1\ndefault: deny\nallow-from: []\n", []string{`did you mean "allow_from"?`}},
		{"a repeated field", "version: 1\ndefault: deny\ndefault: allow\n", []string{`3:1: field "default" appears twice`}},
		{"a second document", "version: 1\ndefault: deny\n---\nversion: 1\n", []string{"3:1: a policy file holds one YAML document"}},
		{"a syntax error", "version: 1\ndefault: [\n", []string{"yaml: "}},
		{"the top level is a list", "- version: 1\n", []string{"1:1: the policy must be a mapping"}},
		{"rules must be a list", "version: 1\ndefault: deny\nallow: {host: a.com}\n", []string{"3:8: allow must be a list, not a mapping"}},
		{"an unknown field in a rule", "version: 1\ndefault: deny\nallow:\n  - host: a.com\n    port: [443]\n", []string{`5:5: unknown field "port" in an allow rule (did you mean "ports"?)`}},
		{"host and cidr together", "version: 1\ndefault: deny\nallow:\n  - host: a.com\n    cidr: 10.0.0.0/8\n", []string{"5:5: a rule has either host or cidr"}},
		{"neither host nor cidr", "version: 1\ndefault: deny\nallow:\n  - ports: [443]\n", []string{"4:5: a rule needs host or cidr; ports alone"}},
		{"a bad cidr", "version: 1\ndefault: deny\nallow:\n  - cidr: 10.0.0.0/33\n", []string{`4:11: cidr "10.0.0.0/33" is not a cidr`}},
		{"a bad address", "version: 1\ndefault: deny\nallow:\n  - cidr: 10.0.0\n", []string{`4:11: cidr "10.0.0" is not an address or cidr`}},
		{"host bits set", "version: 1\ndefault: deny\nallow:\n  - cidr: 10.0.0.1/8\n", []string{"4:11: cidr \"10.0.0.1/8\" has bits set after the /8: write 10.0.0.0/8"}},
		{"a zone in a cidr", "version: 1\ndefault: deny\nallow:\n  - cidr: fe80::1%eth0\n", []string{"4:11: cidr"}},
		{"a port out of range", "version: 1\ndefault: deny\nallow:\n  - host: a.com\n    ports: [65536]\n", []string{`5:13: port "65536"`}},
		{"a negative port", "version: 1\ndefault: deny\nallow:\n  - host: a.com\n    ports: [-1]\n", []string{`5:13: port "-1"`}},
		{"a backwards range", "version: 1\ndefault: deny\nallow:\n  - host: a.com\n    ports: [\"9000-8000\"]\n", []string{`port range "9000-8000" is backwards: write "8000-9000"`}},
		{"a range with junk", "version: 1\ndefault: deny\nallow:\n  - host: a.com\n    ports: [\"80-x\"]\n", []string{`port "80-x"`}},
		{"ports as a number", "version: 1\ndefault: deny\nallow:\n  - host: a.com\n    ports: 443\n", []string{"5:12: ports must be a list"}},
		{"empty ports", "version: 1\ndefault: deny\nallow:\n  - host: a.com\n    ports: []\n", []string{"5:12: ports is empty"}},
		{"a misplaced wildcard", "version: 1\ndefault: deny\nallow:\n  - host: \"*example.com\"\n", []string{"4:11: host \"*example.com\": misplaced wildcard"}},
		{"a wildcard last", "version: 1\ndefault: deny\nallow:\n  - host: \"example.*\"\n", []string{"the last label cannot be '*'"}},
		{"a host not in normal form", "version: 1\ndefault: deny\nallow:\n  - host: API.Example.com.\n", []string{`4:11: host "API.Example.com." is not in normal form: write "api.example.com"`}},
		{"an IDN host", "version: 1\ndefault: deny\nallow:\n  - host: bücher.example\n", []string{`write "xn--bcher-kva.example"`}},
		{"a host that is an address", "version: 1\ndefault: deny\nallow:\n  - host: 10.0.0.1\n", []string{"4:11: host \"10.0.0.1\" is an address: write cidr: 10.0.0.1"}},
		{"a host in octal", "version: 1\ndefault: deny\nallow:\n  - host: \"0177.1\"\n", []string{"write cidr: 127.0.0.1"}},
		{"a host with a port", "version: 1\ndefault: deny\nallow:\n  - host: a.com:443\n", []string{"put ports under ports:"}},
		{"a host with a bad character", "version: 1\ndefault: deny\nallow:\n  - host: a/b.com\n", []string{"4:11: host \"a/b.com\": character '/'"}},
		{"a host as a number", "version: 1\ndefault: deny\nallow:\n  - host: 42\n", []string{"4:11: host must be a string, not a number"}},
		{"a bad listen address", "version: 1\ndefault: deny\nlisten:\n  http: localhost:3128\n", []string{"4:9: listen.http \"localhost:3128\": want IP:PORT"}},
		{"a bad duration", "version: 1\ndefault: deny\ntimeouts:\n  dial: 10\n", []string{"4:9: timeouts.dial must be a duration"}},
		{"a zero dial timeout", "version: 1\ndefault: deny\ntimeouts:\n  dial: 0s\n", []string{"4:9: timeouts.dial must be more than 0"}},
		{"a bad boolean", "version: 1\ndefault: deny\nlog:\n  allowed: yes please\n", []string{"4:12: log.allowed must be true or false"}},
		{"resolve_unlisted is a boolean", "version: 1\ndefault: deny\ndns:\n  resolve_unlisted: \"no\"\n", []string{`4:21: dns.resolve_unlisted must be true or false, not the string "no"`}},
		{"a bad log level", "version: 1\ndefault: deny\nlog:\n  level: verbose\n", []string{"log.level must be debug or info or warn or error"}},
		{"a bad dns upstream", "version: 1\ndefault: deny\ndns:\n  upstreams: [dns.example:53]\n", []string{"4:15: dns upstream \"dns.example:53\""}},
		{"min_ttl above max_ttl", "version: 1\ndefault: deny\ndns:\n  min_ttl: 2h\n  max_ttl: 1h\n", []string{"4:3: dns.min_ttl 2h0m0s is more than dns.max_ttl 1h0m0s"}},
		{"a zero limit", "version: 1\ndefault: deny\nlimits:\n  max_tunnels: 0\n", []string{"4:16: limits.max_tunnels must be more than 0"}},
		{"reload.revoke_open is a boolean", "version: 1\ndefault: deny\nreload:\n  revoke_open: never\n", []string{"4:16: reload.revoke_open must be true or false"}},
		{"reload takes no other field", "version: 1\ndefault: deny\nreload:\n  revoke: false\n", []string{"4:3: unknown field \"revoke\" in reload"}},
		{"reload is a mapping", "version: 1\ndefault: deny\nreload: false\n", []string{"3:9: reload must be"}},
		{"tls.ech is refuse or pass", "version: 1\ndefault: deny\ntls:\n  ech: allow\n", []string{"4:8: tls.ech must be refuse or pass"}},
		{"tls takes no other field", "version: 1\ndefault: deny\ntls:\n  esni: pass\n", []string{`4:3: unknown field "esni" in tls`}},
		{"tls is a mapping", "version: 1\ndefault: deny\ntls: pass\n", []string{"3:6: tls must be"}},
		{"an unknown listen field", "version: 1\ndefault: deny\nlisten:\n  https: 127.0.0.1:1\n", []string{`4:3: unknown field "https" in listen`}},
		{"a client without name or selector", "version: 1\ndefault: deny\nclients:\n  - default: deny\n", []string{"4:5: a clients entry needs a name", "4:5: a clients entry needs sources or users"}},
		{"a client name used twice", "version: 1\ndefault: deny\nclients:\n  - {name: a, users: [x]}\n  - {name: a, users: [y]}\n", []string{`5:12: client name "a" is used twice`}},
		{"a bad allow_from", "version: 1\ndefault: deny\nallow_from: [10.0.0.0/8, nope]\n", []string{`3:26: allow_from entry "nope"`}},
		{"every error at once, in file order", "version: 3\ndefault: nope\nallow:\n  - host: A.com\n  - cidr: 1.2.3.4/40\nfoo: 1\n", []string{
			"1:10: unsupported version 3", "2:10: default must be", "4:11: host \"A.com\"", "5:11: cidr", `6:1: unknown field "foo"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := Load("bad.yaml", []byte(c.text))
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Load = %v, %v; want Errors", p, err)
			}
			if p != nil {
				t.Errorf("Load returned a policy with errors")
			}
			if len(errs) != len(c.want) {
				t.Errorf("got %d errors, want %d:\n%v", len(errs), len(c.want), err)
			}
			for i, w := range c.want {
				if i >= len(errs) {
					break
				}
				got := strings.TrimPrefix(errs[i].String(), "bad.yaml:")
				if !strings.Contains(got, w) {
					t.Errorf("error %d = %q; want it to contain %q", i, got, w)
				}
				if errs[i].Warning {
					t.Errorf("error %d is marked as a warning", i)
				}
			}
		})
	}
}

func TestLoadFullFile(t *testing.T) {
	p := mustLoad(t, "full.yaml", `version: 1
default: deny
mode: audit
allow:
  - {host: api.example.com, ports: [443, "8000-8100"]}
  - cidr: "::ffff:10.0.0.0/104"
deny:
  - host: "*.ads.example"
allow_from: [127.0.0.0/8, "::1", 10.1.0.0/16]
clients:
  - name: vendor-a
    sources: [10.1.0.0/16]
    users: [vendor-a]
    allow:
      - host: vendor-a.example
listen:
  http: 127.0.0.1:3128
  dns: 127.0.0.1:5353
  transparent: 127.0.0.1:3129
  admin: ""
  proxy_protocol: true
  proxy_protocol_from: [10.0.0.0/8]
  via: false
log:
  format: console
  level: debug
  allowed: true
  file: /var/log/egress.log
dns:
  upstreams: ["192.0.2.53", "[2001:db8::53]:5353"]
  timeout: 3s
  blocked: refused
  min_ttl: 5s
  max_ttl: 10m
  cache_size: 0
  resolve_unlisted: false
timeouts:
  dial: 5s
  header: 7s
  tunnel_idle: 5m
  half_close: 45s
  drain: 1m
limits:
  max_tunnels: 20
  max_header_bytes: 8192
reload:
  revoke_open: false
tls:
  ech: pass
`)
	if p.Default != Deny || p.Mode != Audit || p.Version != 1 || p.Source != "full.yaml" {
		t.Errorf("header: %+v", p)
	}
	wantListen := Listen{HTTP: "127.0.0.1:3128", DNS: "127.0.0.1:5353", Transparent: "127.0.0.1:3129", Admin: "", ProxyProtocol: true, ProxyProtocolFrom: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	if !reflect.DeepEqual(p.Listen, wantListen) {
		t.Errorf("listen %+v", p.Listen)
	}
	if (p.Log != Log{Format: "console", Level: "debug", Allowed: true, File: "/var/log/egress.log"}) {
		t.Errorf("log %+v", p.Log)
	}
	wantDNS := DNS{Upstreams: []string{"192.0.2.53:53", "[2001:db8::53]:5353"}, Timeout: 3 * time.Second, Blocked: "refused", MinTTL: 5 * time.Second, MaxTTL: 10 * time.Minute, CacheSize: 0, ResolveUnlisted: false}
	if !reflect.DeepEqual(p.DNS, wantDNS) {
		t.Errorf("dns %+v", p.DNS)
	}
	if (p.Timeouts != Timeouts{Dial: 5 * time.Second, Header: 7 * time.Second, Response: 60 * time.Second, TunnelIdle: 5 * time.Minute, HalfClose: 45 * time.Second, Drain: time.Minute}) {
		t.Errorf("timeouts %+v", p.Timeouts)
	}
	if (p.Limits != Limits{MaxTunnels: 20, MaxHeaderBytes: 8192}) {
		t.Errorf("limits %+v", p.Limits)
	}
	if p.Reload.RevokeOpen {
		t.Errorf("reload %+v", p.Reload)
	}
	if !p.TLS.ECHPass {
		t.Errorf("tls %+v", p.TLS)
	}
	if !reflect.DeepEqual(p.AllowFrom, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("10.1.0.0/16")}) {
		t.Errorf("allow_from %v", p.AllowFrom)
	}
	if len(p.Clients) != 1 || p.Clients[0].Name != "vendor-a" || p.Clients[0].Default != Deny || p.Clients[0].Mode != Audit {
		t.Errorf("clients %+v", p.Clients)
	}
	rules := p.Rules()
	if len(rules) != 4 {
		t.Fatalf("rules %v", rules)
	}
	if r := rules[1]; r.Prefix != netip.MustParsePrefix("10.0.0.0/8") || r.Text != "{cidr: 10.0.0.0/8}" {
		t.Errorf("a mapped cidr is not IPv4: %+v", r)
	}
	if r := rules[0]; !reflect.DeepEqual(r.Ports, []PortRange{{443, 443}, {8000, 8100}}) || r.Line != 5 || r.Column != 5 {
		t.Errorf("rule 0 %+v", r)
	}
	if p.Hash() == "" || p.Hash() == Builtin().Hash() {
		t.Errorf("hash %q", p.Hash())
	}
	if d := p.Decide(Request{Host: "vendor-a.example", Port: 1, Client: netip.MustParseAddr("10.1.0.1"), User: "vendor-a"}); d.Policy != "vendor-a" || d.Verdict != Allow || d.Audit {
		t.Errorf("client decision %+v", d)
	}
}

func TestRefuseAtConnectUsers(t *testing.T) {
	p, err := Load("p.yaml", []byte("version: 1\ndefault: deny\nlisten:\n  transparent: 127.0.0.1:3129\n  refuse_at_connect: [plugin, 1001, \"65534\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.Listen.RefuseAtConnect, ","); got != "plugin,1001,65534" {
		t.Errorf("users %q: want names and uids, numeric or quoted", got)
	}
}

func TestLoadDefaults(t *testing.T) {
	p := mustLoad(t, "min.yaml", "version: 1\ndefault: deny\n")
	b := Builtin()
	if !reflect.DeepEqual(p.Listen, b.Listen) || p.Log != b.Log || p.Timeouts != b.Timeouts || p.Limits != b.Limits || p.Reload != b.Reload || !reflect.DeepEqual(p.DNS, b.DNS) {
		t.Errorf("defaults differ from the built-in policy")
	}
	if p.Listen.HTTP != "127.0.0.1:3128" || p.Listen.Admin != "127.0.0.1:9090" || p.Listen.DNS != "" || p.DNS.Timeout != 2*time.Second || p.Timeouts.Dial != 10*time.Second || p.Limits.MaxTunnels != 10000 || !p.Reload.RevokeOpen {
		t.Errorf("defaults %+v", p)
	}
	if b.Default != Allow || b.Mode != Enforce || b.Source != BuiltinSource {
		t.Errorf("builtin %+v", b)
	}
}

// Aliases are followed, but a file cannot make the loader do unbounded
// work ("billion laughs").
func TestLoadAliases(t *testing.T) {
	p := mustLoad(t, "alias.yaml", "version: 1\ndefault: deny\nallow:\n  - &api {host: api.example.com, ports: [443]}\nclients:\n  - name: a\n    users: [a]\n    allow: [*api]\n")
	if len(p.Rules()) != 2 {
		t.Errorf("rules %v", p.Rules())
	}
	var b strings.Builder
	b.WriteString("version: 1\ndefault: deny\nx0: &x0 [{host: a.com}, {host: a.com}, {host: a.com}, {host: a.com}, {host: a.com}, {host: a.com}, {host: a.com}, {host: a.com}, {host: a.com}, {host: a.com}]\n")
	for i := 1; i < 9; i++ {
		b.WriteString("x" + string(rune('0'+i)) + ": &x" + string(rune('0'+i)) + " [")
		for j := 0; j < 10; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString("*x" + string(rune('0'+i-1)))
		}
		b.WriteString("]\n")
	}
	b.WriteString("allow: *x8\n")
	start := time.Now()
	if _, err := Load("laughs.yaml", []byte(b.String())); err == nil {
		t.Fatal("a billion laughs loaded")
	}
	_ = start
}

func TestWarnings(t *testing.T) {
	p := mustLoad(t, "warn.yaml", `version: 1
default: deny
allow:
  - host: "*.example.com"
  - host: "*.example.org"
  - host: example.org
  - host: dup.example.net
  - host: dup.example.net
  - host: tie.example.net
  - cidr: 10.0.0.0/8
    ports: [0, 5432]
  - host: api.example.net
    ports: [443]
deny:
  - host: "*"
  - host: tie.example.net
  - host: api.example.net
    ports: ["1-65535"]
listen:
  http: 0.0.0.0:3128
`)
	var got []string
	for _, w := range p.Warnings() {
		if !w.Warning {
			t.Errorf("not marked as a warning: %v", w)
		}
		got = append(got, strings.TrimPrefix(w.String(), "warn.yaml:"))
	}
	want := []string{
		"4:5: *.example.com does not match example.com itself",
		"8:5: this rule never decides: {host: dup.example.net} at warn.yaml:7",
		"9:5: this rule never decides: {host: tie.example.net} at warn.yaml:16 matches everything it does and wins (deny wins a tie",
		"11:13: port 0 is never dialled",
		"12:5: this rule never decides: {host: api.example.net, ports: [\"1-65535\"]} at warn.yaml:17",
		`15:5: deny of "*" matches every name`,
		"20:9: 0.0.0.0:3128 is not a loopback address and allow_from is empty",
	}
	if len(got) != len(want) {
		t.Errorf("warnings:\n%s", strings.Join(got, "\n"))
	}
	for i := range want {
		if i < len(got) && !strings.Contains(got[i], want[i]) {
			t.Errorf("warning %d = %q; want %q", i, got[i], want[i])
		}
	}
}

func TestProxyProtocolNeedsTrustedPeers(t *testing.T) {
	_, err := Load("pp.yaml", []byte("version: 1\ndefault: deny\nlisten:\n  proxy_protocol: true\n"))
	if err == nil || !strings.Contains(err.Error(), "pp.yaml:4:3: listen.proxy_protocol needs listen.proxy_protocol_from") {
		t.Fatalf("want an error at pp.yaml:4:3 naming proxy_protocol_from, got %v", err)
	}
}
