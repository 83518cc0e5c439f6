package policy

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The ready policies in configs/ must load without errors or warnings.
func TestConfigsLintClean(t *testing.T) {
	files, err := filepath.Glob("../configs/*.yaml")
	if err != nil || len(files) < 4 {
		t.Fatalf("configs: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			p, err := LoadWith(f, data, os.ReadFile)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range p.Warnings() {
				t.Errorf("warning: %v", w)
			}
		})
	}
}

// Builtin is what runs without --config; configs/full-internet.yaml
// documents it. They must be the same policy.
func TestBuiltinIsFullInternet(t *testing.T) {
	data, err := os.ReadFile("../configs/full-internet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Load("full-internet.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	b := Builtin()
	p.Source, p.hash, p.files, p.sources = b.Source, b.hash, b.files, b.sources // where each setting is written differs
	if !reflect.DeepEqual(p, b) {
		t.Errorf("configs/full-internet.yaml differs from Builtin():\n%+v\n%+v", *p, *b)
	}
}

// The ready policies decide as their comments say.
func TestConfigsDecide(t *testing.T) {
	load := func(name string) *Policy {
		data, err := os.ReadFile("../configs/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return mustLoad(t, name, string(data))
	}
	pub := ip("203.0.114.9")
	cases := []struct {
		file  string
		req   Request
		allow bool
		audit bool
	}{
		{"full-internet.yaml", Request{Host: "api.example.com", IP: pub, Port: 443}, true, false},
		{"full-internet.yaml", Request{Host: "metadata.google.internal", Port: 80}, false, false},
		{"full-internet.yaml", Request{IP: ip("10.0.0.1"), Port: 5432}, false, false},
		{"handful-of-hosts.yaml", Request{Host: "api.example.com", IP: pub, Port: 443}, true, false},
		{"handful-of-hosts.yaml", Request{Host: "api.example.com", IP: pub, Port: 80}, false, false},
		{"handful-of-hosts.yaml", Request{Host: "img.cdn.example.net", IP: pub, Port: 443}, true, false},
		{"handful-of-hosts.yaml", Request{Host: "cdn.example.net", IP: pub, Port: 443}, true, false},
		{"handful-of-hosts.yaml", Request{Host: "tracking.cdn.example.net", Port: 443}, false, false},
		{"handful-of-hosts.yaml", Request{IP: ip("10.20.0.5"), Port: 5432}, true, false},
		{"handful-of-hosts.yaml", Request{Host: "db.corp.example", IP: ip("10.20.0.9"), Port: 5432}, true, false},
		{"handful-of-hosts.yaml", Request{Host: "other.example.com", IP: pub, Port: 443}, false, false},
		{"no-network.yaml", Request{Host: "api.example.com", Port: 443}, false, false},
		{"no-network.yaml", Request{Host: "api.example.com"}, false, false},
		{"no-network.yaml", Request{IP: pub, Port: 443}, false, false},
		{"audit.yaml", Request{Host: "api.example.com", IP: pub, Port: 443}, true, false},
		{"audit.yaml", Request{Host: "other.example.com", IP: pub, Port: 443}, true, true},
		{"audit.yaml", Request{Host: "metadata.google.internal", Port: 80}, false, false},
		{"audit.yaml", Request{Host: "x.example.com", IP: ip("169.254.169.254"), Port: 80}, false, false},
		{"audit.yaml", Request{IP: ip("127.0.0.1"), Port: 6379}, false, false},
	}
	for _, c := range cases {
		d := load(c.file).Decide(c.req)
		if d.Allowed() != c.allow || d.Audit != c.audit {
			t.Errorf("%s %+v: %s audit=%v %s", c.file, c.req, d.Verdict, d.Audit, d.Reason)
		}
	}
}

// The policy package is pure: it must not pull in the network stack, the
// proxy libraries or the logger, and must not use the file system itself.
// (fmt and yaml.v3 depend on os, so os is checked among direct imports.)
func TestDeps(t *testing.T) {
	if testing.Short() {
		t.Skip("go list in -short mode")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, dep := range strings.Fields(string(out)) {
		switch {
		case dep == "net", dep == "net/http", dep == "os/exec",
			strings.Contains(dep, "goproxy"), strings.Contains(dep, "miekg"), strings.Contains(dep, "zerolog"):
			t.Errorf("policy depends on %s", dep)
		}
	}
	out, err = exec.Command(goBin, "list", "-f", `{{join .Imports "\n"}}`, ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range strings.Fields(string(out)) {
		if imp == "os" || imp == "io/fs" || imp == "net" || imp == "log" {
			t.Errorf("policy imports %s", imp)
		}
	}
}
