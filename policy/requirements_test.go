package policy

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

const exampleManifest = `{
  "plugin": "example-dbms",
  "requirements": [
    {"host": "api.example.com", "port": 443, "protocol": "https", "purpose": "DBMS REST API", "required": true},
    {"host": "db.corp.example", "port": 5432, "protocol": "tcp", "purpose": "PostgreSQL", "required": true},
    {"host": "telemetry.example.com", "port": 443, "purpose": "usage metrics", "required": false}
  ]
}
`

func TestLoadRequirements(t *testing.T) {
	cases := []struct {
		name   string
		text   string
		plugin string
		want   []Requirement
	}{
		{"the documented example", exampleManifest, "example-dbms", []Requirement{
			{Host: "api.example.com", Port: 443, Protocol: "https", Purpose: "DBMS REST API", Required: true, Line: 4, Column: 5},
			{Host: "db.corp.example", Port: 5432, Protocol: "tcp", Purpose: "PostgreSQL", Required: true, Line: 5, Column: 5},
			{Host: "telemetry.example.com", Port: 443, Protocol: "https", Purpose: "usage metrics", Required: false, Line: 6, Column: 5},
		}},
		{"protocol defaults: https on 443, http on 80, tcp elsewhere; required defaults to true",
			`{"requirements": [{"host": "a.example", "port": 443}, {"host": "a.example", "port": 80}, {"host": "10.0.0.5", "port": 6379}]}`, "",
			[]Requirement{
				{Host: "a.example", Port: 443, Protocol: "https", Required: true, Line: 1, Column: 19},
				{Host: "a.example", Port: 80, Protocol: "http", Required: true, Line: 1, Column: 55},
				{Host: "10.0.0.5", Port: 6379, Protocol: "tcp", Required: true, Line: 1, Column: 90},
			}},
		{"an explicit protocol is kept", `{"requirements": [{"host": "a.example", "port": 443, "protocol": "tls"}]}`, "",
			[]Requirement{{Host: "a.example", Port: 443, Protocol: "tls", Required: true, Line: 1, Column: 19}}},
		{"no requirements at all", `{"plugin": "offline", "requirements": []}`, "offline", nil},
		{"YAML works too", "requirements:\n  - host: \"[::1]\"\n    port: 8080\n", "",
			[]Requirement{{Host: "[::1]", Port: 8080, Protocol: "tcp", Required: true, Line: 2, Column: 5}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rs, err := LoadRequirements("r.json", []byte(c.text))
			if err != nil {
				t.Fatal(err)
			}
			if rs.File != "r.json" || rs.Plugin != c.plugin || !reflect.DeepEqual(rs.List, c.want) {
				t.Errorf("got %q %q %+v\nwant %+v", rs.File, rs.Plugin, rs.List, c.want)
			}
		})
	}
}

func TestLoadRequirementsErrors(t *testing.T) {
	cases := []struct {
		name string
		text string
		want []string // every error, in order, as LINE:COL: message
	}{
		{"an empty file", "", []string{`1:1: the file is empty: want {"requirements": [{"host": ..., "port": ...}]}`}},
		{"requirements missing", `{"plugin": "x"}`, []string{`1:1: requirements is required: add "requirements": [] (a list of {"host": ..., "port": ...})`}},
		{"a misspelt field gets a suggestion, and no error that the field it meant is absent", `{"requirements": [{"hots": "a.example", "port": 443, "Required": true}]}`, []string{
			`1:20: unknown field "hots" in a requirement (did you mean "host"?)`,
			`1:54: unknown field "Required" in a requirement (did you mean "required"?)`,
		}},
		{"a prefix gets a suggestion", `{"requirements": [{"host": "a.example", "port": 1, "proto": "tcp"}]}`, []string{
			`1:52: unknown field "proto" in a requirement (did you mean "protocol"?)`,
		}},
		{"a field like no other lists the known ones", `{"requirements": [{"host": "a.example", "port": 1, "zzz": "x"}]}`, []string{
			`1:52: unknown field "zzz" in a requirement (known: host, port, url, method, protocol, purpose, required, via)`,
		}},
		{"a url says where: host, port and protocol beside it are refused", `{"requirements": [{"url": "https://a.example/v1", "host": "a.example", "port": 443, "protocol": "https"}]}`, []string{
			`1:51: a requirement with url takes its host from the URL: remove host`,
			`1:72: a requirement with url takes its port from the URL: remove port`,
			`1:85: a requirement with url takes its protocol from the URL: remove protocol`,
		}},
		{"a url is http or https, without credentials or a path egress refuses", `{"requirements": [{"url": "ftp://a.example/x"}, {"url": "https://u:p@a.example/"}, {"url": "https://a.example/a%2Fb"}, {"url": "https://a.example/x#y"}]}`, []string{
			`1:27: url "ftp://a.example/x": a requirement's url is http:// or https://; for another protocol write {"host": ..., "port": ...}`,
			`1:57: url "https://u:p@a.example/" holds credentials: a manifest names where, never a secret`,
			`1:92: url "https://a.example/a%2Fb": egress refuses this path: the path holds an encoded slash, backslash or NUL (%2F, %5C, %00), which servers read differently`,
			`1:128: url "https://a.example/x#y" has a #fragment, which is never sent: remove it`,
		}},
		{"a method is a token, upper case, and needs a url", `{"requirements": [{"url": "https://a.example/", "method": "get"}, {"url": "https://a.example/", "method": "GE T"}, {"host": "a.example", "port": 443, "method": "GET"}]}`, []string{
			`1:59: method "get": methods match exactly and are upper case: write GET`,
			`1:107: method "GE T" is not an HTTP method such as GET or POST`,
			`1:151: method needs a url: {"url": "https://host/path", "method": "GET"}`,
		}},
		{"an unknown top-level field", `{"plugins": "x", "requirements": []}`, []string{
			`1:2: unknown field "plugins" in the requirements file (did you mean "plugin"?)`,
		}},
		{"every error at once", `{
  "plugin": 7,
  "requirements": [
    {"host": "a b", "port": 0},
    {"host": "a.example", "port": "443", "protocol": "udp", "required": "yes"},
    {"port": 70000, "purpose": ["x"]},
    "db.corp.example:5432"
  ]
}`, []string{
			`2:13: plugin must be a string, not a number`,
			`4:14: host "a b" is not a host name or IP address`,
			`4:29: port must be 1 to 65535, not 0`,
			`5:35: port must be an integer, not the string "443"`,
			`5:54: protocol must be tcp or tls or http or https, not "udp"`,
			`5:73: required must be true or false, not the string "yes"`,
			`6:14: port must be 1 to 65535, not 70000`,
			`6:32: purpose must be a string, not a list`,
			`6:5: a requirement needs a host (or a url)`, // after the errors of its fields
			`7:5: a requirement must be a mapping such as {"host": "api.example.com", "port": 443}, not the string "db.corp.example:5432"`,
		}},
		{"a field twice", `{"requirements": [{"host": "a.example", "port": 1, "port": 2}]}`, []string{
			`1:52: field "port" appears twice in a requirement (first at line 1)`,
		}},
		{"a second document", "requirements: []\n---\nrequirements: []\n", []string{
			`2:1: a requirements file holds one document; remove the second one`,
		}},
		{"not JSON at all", `{"requirements": [`, []string{`1:1: yaml: did not find expected node content`}},
		{"requirements is not a list", `{"requirements": {"host": "a"}}`, []string{`1:18: requirements must be a list, not a mapping`}},
		{"a purpose cannot forge a rule line for the operator to paste", `{"requirements": [{"host": "a.example", "port": 443, "purpose": "REST API\n  - {cidr: 0.0.0.0/0}  # metrics"}]}`, []string{
			`1:65: purpose must be one line of printable text: it has '\n'`,
		}},
		{"nor a terminal escape", `{"plugin": "x\u001b[2K", "requirements": []}`, []string{
			`1:12: plugin must be one line of printable text: it has '\x1b'`,
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := LoadRequirements("r.json", []byte(c.text))
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error %v is not Errors", err)
			}
			var got []string
			for _, d := range errs {
				if d.File != "r.json" {
					t.Errorf("file %q", d.File)
				}
				got = append(got, strings.TrimPrefix(d.String(), "r.json:"))
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
}

// FuzzLoadRequirements: no input panics the loader; every error has a
// position; every loaded requirement is a valid host and port that Decide
// answers.
func FuzzLoadRequirements(f *testing.F) {
	for _, s := range []string{
		exampleManifest,
		"",
		`{"requirements": []}`,
		`{"requirements": [{"host": "[fe80::1%eth0]", "port": 22, "required": false}]}`,
		`{"requirements": [{"host": "a", "port": 65536, "protocol": "x", "extra": null}]}`,
		"requirements: &a [{host: a, port: 1}]\nplugin: *a\n",
		`{"requirements": [[[[[[[[]]]]]]]]}`,
		"requirements: []\n---\n",
	} {
		f.Add(s)
	}
	p := Builtin()
	f.Fuzz(func(t *testing.T, text string) {
		rs, err := LoadRequirements("f.json", []byte(text))
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error is not Errors: %v", err)
			}
			for _, d := range errs {
				if d.Line < 1 || d.Column < 1 || d.File != "f.json" || d.Message == "" {
					t.Fatalf("bad diagnostic %+v", d)
				}
			}
			return
		}
		for _, r := range rs.List {
			if r.Host == "" || r.Port == 0 || r.Protocol == "" {
				t.Fatalf("incomplete requirement %+v", r)
			}
			if d := p.Decide(r.Request()); d.Reason == "" || d.Reason == ReasonInvalidHost {
				t.Fatalf("requirement %+v decided %+v", r, d)
			}
		}
	})
}
