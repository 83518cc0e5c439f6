package httpproxy_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Real clients a plugin uses, each where installed: curl, python3 and
// Python 2.7 (http.client/httplib with set_tunnel, urllib with a proxy).

func run(t *testing.T, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	// No proxy settings but ours, whatever the test runner's environment.
	cmd.Env = append(cleanEnv(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToLower(k) {
		case "http_proxy", "https_proxy", "all_proxy", "no_proxy":
			continue
		}
		env = append(env, kv)
	}
	return env
}

func need(t *testing.T, name string, env ...string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed: %v", name, err)
	}
	if len(env) > 0 {
		if out, err := run(t, env, name, "-c", "import sys"); err != nil {
			t.Skipf("%s not usable: %v %s", name, err, out)
		}
	}
}

func TestCurl(t *testing.T) {
	need(t, "curl")
	f := newFixture(t, testPolicy)
	proxy := "http://" + f.addr
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"plain http with -x", []string{"-sS", "-x", proxy, f.plain.URL + "/curl"}, "path=/curl"},
		{"plain http tunnelled with -p", []string{"-sS", "-p", "-x", proxy, f.plain.URL + "/tunnel"}, "path=/tunnel"},
		{"https through CONNECT", []string{"-sS", "--cacert", f.caFile, "-x", proxy, "https://origin.test:" + f.tlsPort() + "/https"}, "path=/https"},
		{"https through CONNECT with HTTP/1.0", []string{"-sS", "--proxy1.0", f.addr, "--cacert", f.caFile, f.tls.URL + "/p10"}, "path=/p10"},
		{"plain http denied shows the 403", []string{"-sS", "-i", "-x", proxy, "http://denied.test/"}, "X-Egress-Reason: denied_by_rule"},
		{"CONNECT denied reports the 403", []string{"-sS", "-o", "/dev/null", "-w", "%{http_connect}", "-x", proxy, "https://denied.test/"}, "403"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _ := run(t, nil, "curl", tt.args...)
			if !strings.Contains(out, tt.want) {
				t.Fatalf("curl %s:\n%s\nwant %q", strings.Join(tt.args, " "), out, tt.want)
			}
		})
	}
}

// pythonHTTPClient works in Python 2.7 and 3: http.client/httplib with
// set_tunnel (how plugins reach databases and APIs through a proxy).
const pythonTunnel = `
import sys, ssl
try:
    import http.client as httplib
except ImportError:
    import httplib
proxy_host, proxy_port, host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
ctx = ssl.create_default_context(cafile=cafile)
c = httplib.HTTPSConnection(proxy_host, proxy_port, context=ctx, timeout=10)
c.set_tunnel(host, port)
try:
    c.request("GET", "/py-tunnel")
    r = c.getresponse()
    print("%d %s" % (r.status, r.read().decode()))
except Exception as e:
    print("error: %s" % e)
`

// pythonURLLib fetches through the proxy from https_proxy/http_proxy, as
// urllib (3) and urllib2 (2.7) do.
const pythonURLLib = `
import sys, ssl
try:
    import urllib.request as ur
    from urllib.error import HTTPError
except ImportError:
    import urllib2 as ur
    from urllib2 import HTTPError
url, cafile = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)
try:
    r = ur.urlopen(url, context=ctx, timeout=10)
    print("%d %s" % (r.getcode(), r.read().decode()))
except HTTPError as e:
    print("%d %s %s" % (e.code, e.headers.get("X-Egress-Reason"), e.read().decode()))
except Exception as e:
    print("error: %s" % e)
`

// pythonLegacyURLLib is Python 2's urllib.urlopen, which sends an https
// URL in plain text to the proxy ("GET https://host/ HTTP/1.0").
const pythonLegacyURLLib = `
import sys, urllib
r = urllib.urlopen(sys.argv[1], proxies={"https": sys.argv[2]})
print("%d %s" % (r.getcode(), r.read()))
`

func TestPython(t *testing.T) {
	f := newFixture(t, testPolicy)
	host, port := "origin.test", f.tlsPort()
	proxyHost, proxyPort := "127.0.0.1", f.addr[strings.LastIndex(f.addr, ":")+1:]
	for _, py := range []struct{ name, bin string }{
		{"python3", "python3"},
		{"python2.7", "python2.7"},
	} {
		t.Run(py.name, func(t *testing.T) {
			env := []string{}
			if py.bin == "python2.7" {
				env = append(env, "PYENV_VERSION=2.7.18")
			}
			need(t, py.bin, env...)
			t.Run("http.client with set_tunnel", func(t *testing.T) {
				out, err := run(t, env, py.bin, "-c", pythonTunnel, proxyHost, proxyPort, host, port, f.caFile)
				if err != nil || !strings.Contains(out, "200 origin host=origin.test:"+port+" path=/py-tunnel") {
					t.Fatalf("%v\n%s", err, out)
				}
			})
			t.Run("http.client with set_tunnel to a denied host", func(t *testing.T) {
				out, err := run(t, env, py.bin, "-c", pythonTunnel, proxyHost, proxyPort, "denied.test", "443", f.caFile)
				if err != nil || !strings.Contains(out, "403") {
					t.Fatalf("%v\n%s", err, out)
				}
			})
			proxyEnv := append(env, "https_proxy=http://"+f.addr, "http_proxy=http://"+f.addr)
			t.Run("urllib with https_proxy", func(t *testing.T) {
				out, err := run(t, proxyEnv, py.bin, "-c", pythonURLLib, "https://origin.test:"+port+"/urllib", f.caFile)
				if err != nil || !strings.Contains(out, "200 origin") || !strings.Contains(out, "path=/urllib") {
					t.Fatalf("%v\n%s", err, out)
				}
			})
			t.Run("urllib with http_proxy to a denied host", func(t *testing.T) {
				out, err := run(t, proxyEnv, py.bin, "-c", pythonURLLib, "http://denied.test/", f.caFile)
				if err != nil || !strings.Contains(out, "403 denied_by_rule") || !strings.Contains(out, "rule: test.yaml:7") {
					t.Fatalf("%v\n%s", err, out)
				}
			})
			if py.bin == "python2.7" {
				t.Run("legacy urllib sends https in plain text", func(t *testing.T) {
					out, err := run(t, env, py.bin, "-c", pythonLegacyURLLib, f.tls.URL+"/legacy", "http://"+f.addr)
					if err != nil || !strings.Contains(out, "200 origin") || !strings.Contains(out, "path=/legacy") {
						t.Fatalf("%v\n%s", err, out)
					}
				})
			}
		})
	}
}
