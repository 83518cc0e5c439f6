//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/firewall"
	"github.com/egress-proxy/egress/firewall/nftexpr"
)

// connectScript connects to each destination given as HOST:PORT
// arguments with socket.create_connection((host, port), 3), as a plugin's
// reachability check does, and prints one JSON object: per destination,
// what connect() said ("open" and the first line read, or the errno's
// name, or "timeout") and how long connect() took.
const connectScript = `
import errno, json, socket, sys, time
out = {}
for dst in sys.argv[1:]:
    host, port = dst.rsplit(":", 1)
    host = host.strip("[]")
    t = time.time()
    try:
        s = socket.create_connection((host, int(port)), 3)
    except socket.timeout:
        out[dst] = {"r": "timeout", "ms": (time.time() - t) * 1000}
        continue
    except socket.error as e:
        out[dst] = {"r": errno.errorcode.get(e.errno, str(e.errno)), "ms": (time.time() - t) * 1000}
        continue
    took = time.time() - t
    try:
        s.settimeout(3)
        r = "open " + s.recv(64).decode().strip()
    except (socket.timeout, socket.error) as e:
        r = "open, then %r" % e
    s.close()
    out[dst] = {"r": r, "ms": took * 1000, "first_byte_ms": (time.time() - t) * 1000}
print(json.dumps(out))
`

// TestRunConnectFidelity: under egress run, a connect() to an allowed
// destination ends as it would without egress (issue 21): connected only
// once the destination accepted, ECONNREFUSED when it refuses, the
// client's own timeout when it is silent, EHOSTUNREACH when egress's dial
// is answered with ICMP host unreachable, ENETUNREACH when egress has no
// route to it. The destinations live in a network namespace the test
// creates (the silent one drops SYNs there); python3 and python2.7.
func TestRunConnectFidelity(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace with its own nftables rules)")
	}
	// egress and its destinations live in a namespace of their own.
	loopbackNamespace(t)
	greeter := greeterOrigin(t)
	free := func() int { return freePort(t, "127.0.0.1") }
	refusing, silent, noHost := free(), free(), free()
	// The silent destination: its SYNs are dropped in this namespace. The
	// unreachable host: its SYNs are answered with ICMP host unreachable.
	silentAndUnreachable(t, "silent", silent, noHost)
	const unreachable = "[2001:db8::1]:5432" // no IPv6 route in this namespace
	dir := t.TempDir()
	config := filepath.Join(dir, "policy.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`version: 1
default: deny
allow:
  - {cidr: 127.0.0.1/32, ports: [%d, %d, %d, %d]}
  - {cidr: 2001:db8::1/128, ports: [5432]}
`, greeter, refusing, silent, noHost)), 0o600)
	script := filepath.Join(dir, "connect.py")
	os.WriteFile(script, []byte(connectScript), 0o600)
	accepting := "127.0.0.1:" + strconv.Itoa(greeter)
	dsts := []string{accepting, "127.0.0.1:" + strconv.Itoa(refusing), "127.0.0.1:" + strconv.Itoa(silent), unreachable, "127.0.0.1:" + strconv.Itoa(noHost)}

	for _, py := range []struct {
		name string
		env  []string
		exe  string
	}{
		{"python3", nil, "python3"},
		{"python2.7", []string{"PYENV_VERSION=2.7.18"}, "python2.7"},
	} {
		// No subtest: egress must start from this goroutine's thread, in
		// the test's namespace.
		func() {
			check := exec.Command(py.exe, "-c", "import json")
			check.Env = append(os.Environ(), py.env...)
			if err := check.Run(); err != nil {
				t.Logf("%s is not available: %v", py.name, err)
				return
			}
			// A long peek, so that a greeting held back by it (2 s) and one
			// that comes at once stay far apart on a busy machine.
			r := runEgress(t, py.env, append([]string{"run", "--config", config, "--peek-timeout", "2s", "--", py.exe, script}, dsts...)...)
			if strings.Contains(r.stderr, "no NFQUEUE") {
				t.Skipf("the kernel cannot hold SYNs here: %s", r.stderr) // ends the test, from its own goroutine
			}
			if r.code != 0 {
				t.Fatalf("%s: exit %d", py.name, r.code)
			}
			var res map[string]struct {
				R         string  `json:"r"`
				MS        float64 `json:"ms"`
				FirstByte float64 `json:"first_byte_ms"`
			}
			if err := json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &res); err != nil {
				t.Fatalf("script output: %v", err)
			}
			// The upstream was connected before the client's connect()
			// returned: its greeting comes without the wait for the
			// client's first bytes (--peek-timeout, 2 s here). Counted
			// from connect()'s return, not from its call: a slow connect
			// on a busy machine is not a late greeting.
			if got := res[accepting]; got.FirstByte-got.MS > 1000 {
				t.Errorf("%s: the greeting of a server that speaks first came %.0f ms after connect() returned", py.name, got.FirstByte-got.MS)
			}
			for _, tt := range []struct {
				dst, want        string
				minMS, maxMS     float64
				withoutEgressWas string
			}{
				{accepting, "open db ready", 0, 1000, "connected"},
				{dsts[1], "ECONNREFUSED", 0, 1000, "ECONNREFUSED at once"},
				{dsts[2], "timeout", 2900, 4000, "the client's 3 s timeout"},
				{unreachable, "ENETUNREACH", 0, 1000, "ENETUNREACH at once"},
				{dsts[4], "EHOSTUNREACH", 0, 1000, "EHOSTUNREACH at once"},
			} {
				got := res[tt.dst]
				if got.R != tt.want || got.MS < tt.minMS || got.MS > tt.maxMS {
					t.Errorf("%s: connect %s: %s after %.0f ms, want %s (as without egress: %s)", py.name, tt.dst, got.R, got.MS, tt.want, tt.withoutEgressWas)
				}
			}
		}()
	}
}

// TestServeConnectFidelity: on a host whose user's connections
// docs/transparent.md's rules send to egress serve, with
// listen.refuse_at_connect (the SYN held while egress decides and dials,
// issue 21), a connect() to an allowed destination ends as it would
// without egress: connected once the destination accepted, ECONNREFUSED
// when it refuses, EHOSTUNREACH when egress's dial is answered with ICMP
// host unreachable, the client's own timeout when it is silent; a denied
// one is refused at once. The client is another user's python3 and
// python2.7 in a network namespace the test creates.
func TestServeConnectFidelity(t *testing.T) {
	const uid = 65534
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespace, nftables, another user)")
	}
	for _, tool := range []string{"nft", "setpriv", "unshare", "/usr/bin/python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	dir := t.TempDir()
	pythons := clientPythons(t)
	hostNamespace(t, uid)

	// The destinations, on the host's address: one that greets, one that
	// refuses (nothing listens), one silent and one unreachable (egress's
	// SYNs dropped, or answered with ICMP host unreachable, as a router
	// answers for a host that does not answer ARP).
	free := func() int { return freePort(t, "10.0.0.2") }
	greet, refusing, silent, noHost, deniedPort := greeterOriginOn(t, "10.0.0.2"), free(), free(), free(), free()
	c := silentAndUnreachable(t, "destinations", silent, noHost)
	// Where the kernel has no NFQUEUE target, egress serves unheld (and
	// says so in its log): nothing here to test.
	probe := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "probe"})
	firewall.AddHold(c, probe, 7, nil, []uint32{uid})
	if err := c.Flush(); err != nil {
		t.Skipf("the NFQUEUE target is not available here: %v", err)
	}
	c.DelTable(probe)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}

	// The destinations are db.test's ports, as a plugin names them: the
	// hold decides on the names the DNS proxy answered the client with.
	upstream := dnsUpstream(t, map[string]string{"db.test": "10.0.0.2"})
	os.Chmod(dir, 0o755)
	resolv := filepath.Join(dir, "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver 10.0.0.53\n"), 0o644)
	config := filepath.Join(dir, "policy.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`version: 1
default: deny
allow:
  - {host: db.test, ports: [%d, %d, %d, %d]}
listen:
  http: 127.0.0.1:3128
  transparent: 127.0.0.1:3129
  dns: 127.0.0.1:5353
  refuse_at_connect: ["%d"]
dns:
  upstreams: [%q]
`, greet, refusing, silent, noHost, uid, upstream)), 0o644)
	_, _, logs := startEgress(t, nil, "serve", "--config", config)
	lines := make(chan string, 1000)
	go func() {
		for logs.Scan() {
			select {
			case lines <- logs.Text():
			default:
			}
		}
	}()
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	held := false
	for _, ch := range chains {
		held = held || ch.Table.Name == firewall.HostTable && ch.Name == "hold"
	}
	if !held {
		t.Fatalf("egress serve installed no chain hold in table inet %s", firewall.HostTable)
	}

	dst := func(port int) string { return "db.test:" + strconv.Itoa(port) }
	// After the lookups, by address: decided on the names the DNS proxy
	// answered; and a port no rule allows, refused at connect().
	byAddr, denied := "10.0.0.2:"+strconv.Itoa(refusing), "10.0.0.2:"+strconv.Itoa(deniedPort)
	for _, py := range pythons {
		shell := "mount --bind " + resolv + " /etc/resolv.conf && " + py.mount + "exec setpriv --reuid=" + strconv.Itoa(uid) + " --regid=" + strconv.Itoa(uid) +
			" --clear-groups " + py.exe + " -c \"$0\" \"$@\""
		cmd := exec.Command("unshare", append([]string{"--mount", "sh", "-c", shell, connectScript},
			dst(greet), dst(refusing), dst(silent), dst(noHost), byAddr, denied)...)
		cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, py.env...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		t.Logf("%s as user %d:\n%s%s", py.name, uid, out, stderr.String())
		if err != nil {
			t.Fatalf("%s: %v", py.name, err)
		}
		var res map[string]struct {
			R         string  `json:"r"`
			MS        float64 `json:"ms"`
			FirstByte float64 `json:"first_byte_ms"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("%s: script output: %v", py.name, err)
		}
		for _, tt := range []struct {
			dst, want        string
			minMS, maxMS     float64
			withoutEgressWas string
		}{
			{dst(greet), "open db ready", 0, 1000, "connected"},
			{dst(refusing), "ECONNREFUSED", 0, 1000, "ECONNREFUSED at once"},
			{dst(silent), "timeout", 2900, 4000, "the client's 3 s timeout"},
			{dst(noHost), "EHOSTUNREACH", 0, 1000, "EHOSTUNREACH at once"},
			{byAddr, "ECONNREFUSED", 0, 1000, "ECONNREFUSED at once"},
			{denied, "ECONNREFUSED", 0, 1000, "(denied: refused at connect())"},
		} {
			got := res[tt.dst]
			if got.R != tt.want || got.MS < tt.minMS || got.MS > tt.maxMS {
				t.Errorf("%s: connect %s: %s after %.0f ms, want %s (as without egress: %s)", py.name, tt.dst, got.R, got.MS, tt.want, tt.withoutEgressWas)
			}
		}
		if got := res[dst(greet)]; got.FirstByte-got.MS > 200 {
			t.Errorf("%s: the greeting of a server that speaks first came %.0f ms after connect() returned", py.name, got.FirstByte-got.MS)
		}
	}
	// Each answer the client had from the destination is egress's dial's,
	// and its canonical line says so: allowed, with the dial's error.
	type dialErr struct {
		port    string // "port":N, as the line has it
		errText string
	}
	want := map[dialErr]int{
		{fmt.Sprintf(`"port":%d,`, refusing), "connection refused"}: 2 * len(pythons),
		{fmt.Sprintf(`"port":%d,`, noHost), "no route to host"}:     len(pythons),
	}
	deadline := time.After(10 * time.Second)
	for left := len(want); left > 0; {
		select {
		case l := <-lines:
			if !strings.Contains(l, `"event":"allow","proto":"tcp"`) || !strings.Contains(l, `"error":"dial `) {
				continue
			}
			for k, n := range want {
				if n > 0 && strings.Contains(l, k.port) && strings.Contains(l, k.errText) {
					if want[k]--; want[k] == 0 {
						left--
					}
				}
			}
		case <-deadline:
			t.Fatalf("log lines of the dials' errors still missing (how many of each): %v", want)
		}
	}
}

// clientPython is a Python another user can run: exe, after the shell
// command mount (run as root in a new mount namespace) has made it
// reachable.
type clientPython struct {
	name, exe, mount string
	env              []string
}

// clientPythons are the system's python3 and, where pyenv or the system
// has it, python2.7 (PYENV_VERSION=2.7.18), for a user other than root: a
// Python installed under root's home (pyenv's) is bind-mounted onto a
// directory that user can reach.
func clientPythons(t *testing.T) []clientPython {
	t.Helper()
	out := []clientPython{{name: "python3", exe: "/usr/bin/python3"}}
	q := exec.Command("python2.7", "-c", "import sys; print(sys.prefix); print(sys.executable)")
	q.Env = append(os.Environ(), "PYENV_VERSION=2.7.18")
	b, err := q.Output()
	lines := strings.Fields(string(b))
	if err != nil || len(lines) != 2 || !strings.HasPrefix(lines[1], lines[0]+"/") {
		t.Logf("python2.7 is not available: %v", err)
		return out
	}
	prefix, exe := lines[0], lines[1]
	if prefix == "/usr" || prefix == "/usr/local" {
		return append(out, clientPython{name: "python2.7", exe: exe})
	}
	// Not under t.TempDir(): its parent is root's alone.
	mnt, err := os.MkdirTemp("", "egress-python2.7-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(mnt) })
	os.Chmod(mnt, 0o755)
	return append(out, clientPython{name: "python2.7", exe: mnt + strings.TrimPrefix(exe, prefix),
		mount: "mount --bind " + prefix + " " + mnt + " && ", env: []string{"LD_LIBRARY_PATH=" + mnt + "/lib"}})
}

// silentAndUnreachable adds the nftables table name to this namespace:
// egress's SYNs to port silent are dropped, those to port noHost are
// answered with ICMP host unreachable, as a router answers for a host
// that does not answer ARP. It returns the connection, for more tables,
// and skips the test where nftables cannot load the table.
func silentAndUnreachable(t *testing.T, name string, silent, noHost int) *nftables.Conn {
	t.Helper()
	c, err := firewall.NewConn()
	if err != nil {
		t.Fatal(err)
	}
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: name})
	ch := c.AddChain(&nftables.Chain{Name: "out", Table: tbl, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: nftexpr.Concat(
		nftexpr.L4(unix.IPPROTO_TCP), nftexpr.DPort(uint16(silent)), nftexpr.Verdict(expr.VerdictDrop))})
	c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: nftexpr.Concat(
		nftexpr.L4(unix.IPPROTO_TCP), nftexpr.DPort(uint16(noHost)),
		[]expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_HOST_UNREACH}})})
	if err := c.Flush(); err != nil {
		t.Skipf("nftables: %v", err)
	}
	return c
}
