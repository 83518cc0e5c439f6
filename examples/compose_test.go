package examples

import (
	"bufio"
	"encoding/json"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/egress-proxy/egress/policy"
)

// repoRoot is the repository, relative to this package.
const repoRoot = ".."

// composeFile is the part of docker-compose.yml the tests read. Fields a
// compose file may write in two forms (list or map) are kept as nodes.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Networks map[string]struct {
		Internal bool `yaml:"internal"`
		IPAM     struct {
			Config []struct {
				Subnet string `yaml:"subnet"`
			} `yaml:"config"`
		} `yaml:"ipam"`
	} `yaml:"networks"`
}

type composeService struct {
	Build       any       `yaml:"build"`
	Image       string    `yaml:"image"`
	Command     []string  `yaml:"command"`
	Volumes     []string  `yaml:"volumes"`
	Networks    yaml.Node `yaml:"networks"`
	Environment yaml.Node `yaml:"environment"`
	DNS         yaml.Node `yaml:"dns"`
	Ports       []any     `yaml:"ports"`
	NetworkMode string    `yaml:"network_mode"`
	ExtraHosts  []any     `yaml:"extra_hosts"`
	User        string    `yaml:"user"`
}

// networks maps each network the service joins to its static IPv4 address
// (empty when Docker picks one). Compose allows a list or a map.
func (s composeService) networks(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	switch s.Networks.Kind {
	case 0:
		out["default"] = ""
	case yaml.SequenceNode:
		var names []string
		if err := s.Networks.Decode(&names); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			out[n] = ""
		}
	case yaml.MappingNode:
		var m map[string]*struct {
			IPv4 string `yaml:"ipv4_address"`
		}
		if err := s.Networks.Decode(&m); err != nil {
			t.Fatal(err)
		}
		for n, v := range m {
			if v != nil {
				out[n] = v.IPv4
			} else {
				out[n] = ""
			}
		}
	}
	return out
}

// env is the service's environment; compose allows a list or a map.
func (s composeService) env(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	switch s.Environment.Kind {
	case yaml.SequenceNode:
		var kvs []string
		if err := s.Environment.Decode(&kvs); err != nil {
			t.Fatal(err)
		}
		for _, kv := range kvs {
			k, v, _ := strings.Cut(kv, "=")
			out[k] = v
		}
	case yaml.MappingNode:
		if err := s.Environment.Decode(&out); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// dns is the service's dns: setting; compose allows a string or a list.
func (s composeService) dns(t *testing.T) []string {
	t.Helper()
	switch s.DNS.Kind {
	case yaml.ScalarNode:
		return []string{s.DNS.Value}
	case yaml.SequenceNode:
		var l []string
		if err := s.DNS.Decode(&l); err != nil {
			t.Fatal(err)
		}
		return l
	}
	return nil
}

// flagValue is the value of --name (or -name) in args.
func flagValue(args []string, name string) string {
	for i, a := range args {
		for _, p := range []string{"--" + name, "-" + name} {
			if a == p && i+1 < len(args) {
				return args[i+1]
			}
			if v, ok := strings.CutPrefix(a, p+"="); ok {
				return v
			}
		}
	}
	return ""
}

// policyFile is the listen and allow_from settings of a policy file, read
// with yaml.v3 directly so that the structure tests do not depend on
// policy.Load; loadPolicy checks the file with policy.Load as well.
type policyFile struct {
	AllowFrom []string `yaml:"allow_from"`
	Listen    struct {
		HTTP  string `yaml:"http"`
		DNS   string `yaml:"dns"`
		Admin string `yaml:"admin"`
	} `yaml:"listen"`
	Timeouts struct {
		Drain string `yaml:"drain"`
	} `yaml:"timeouts"`
}

// withDefaults fills in egress serve's documented defaults.
func (p policyFile) withDefaults() policyFile {
	if p.Listen.HTTP == "" {
		p.Listen.HTTP = "127.0.0.1:3128"
	}
	if p.Listen.Admin == "" {
		p.Listen.Admin = "127.0.0.1:9090"
	}
	if p.Timeouts.Drain == "" {
		p.Timeouts.Drain = "30s"
	}
	return p
}

func parsePolicyFile(t *testing.T, name string, data []byte) policyFile {
	t.Helper()
	var p policyFile
	if err := yaml.Unmarshal(data, &p); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return p.withDefaults()
}

// loadCleanPolicy is loadPolicy for the example policies: a file people
// copy must not draw a warning from egress lint either.
func loadCleanPolicy(t *testing.T, name string, data []byte) *policy.Policy {
	t.Helper()
	p := loadPolicy(t, name, data)
	if p != nil {
		for _, w := range p.Warnings() {
			t.Errorf("warning: %s", w)
		}
	}
	return p
}

// loadPolicy checks that policy.Load accepts the file, as egress serve will.
func loadPolicy(t *testing.T, name string, data []byte) *policy.Policy {
	t.Helper()
	p, err := policy.Load(name, data)
	if err != nil {
		t.Errorf("policy.Load(%s):\n%v", name, err)
		return nil
	}
	return p
}

func addrPort(t *testing.T, what, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatalf("%s %q is not IP:port: %v", what, s, err)
	}
	return ap
}

func TestCompose(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	egressSvc, ok1 := c.Services["egress"]
	plugin, ok2 := c.Services["plugin"]
	origin, ok3 := c.Services["origin"]
	if !ok1 || !ok2 || !ok3 {
		t.Fatalf("services egress, plugin and origin are required; have %v", keys(c.Services))
	}
	internal := func(n string) bool { return c.Networks[n].Internal }
	egressNets, pluginNets, originNets := egressSvc.networks(t), plugin.networks(t), origin.networks(t)

	t.Run("the plugin is on internal networks only, with no other way out", func(t *testing.T) {
		if len(pluginNets) == 0 {
			t.Fatal("the plugin joins no network")
		}
		for n := range pluginNets {
			if _, declared := c.Networks[n]; !declared || !internal(n) {
				t.Errorf("the plugin joins %q, which is not a declared internal: true network", n)
			}
		}
		if plugin.NetworkMode != "" || len(plugin.Ports) > 0 || len(plugin.ExtraHosts) > 0 {
			t.Errorf("the plugin must have no network_mode, ports or extra_hosts")
		}
	})

	t.Run("egress joins the plugin's network and one with a route out", func(t *testing.T) {
		var shared, out bool
		for n := range egressNets {
			if _, ok := pluginNets[n]; ok {
				shared = true
			}
			if !internal(n) {
				out = true
			}
		}
		if !shared || !out {
			t.Errorf("egress joins %v: want one of the plugin's networks (%v) and a non-internal one", keys(egressNets), keys(pluginNets))
		}
	})

	t.Run("the origin is not on the plugin's networks", func(t *testing.T) {
		for n := range originNets {
			if _, ok := pluginNets[n]; ok {
				t.Errorf("origin joins %q with the plugin: the plugin could reach it without egress", n)
			}
		}
		shared := false
		for n := range originNets {
			if _, ok := egressNets[n]; ok {
				shared = true
			}
		}
		if !shared {
			t.Errorf("origin shares no network with egress: nothing can reach it")
		}
	})

	// The policy egress serves: the --config argument, under a read-only
	// volume whose host side is in this repository.
	configArg := flagValue(egressSvc.Command, "config")
	if configArg == "" {
		t.Fatalf("egress's command %q has no --config", egressSvc.Command)
	}
	var hostConfig string
	for _, v := range egressSvc.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 {
			continue
		}
		src, dst := parts[0], parts[1]
		rel, err := filepath.Rel(dst, configArg)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		if len(parts) < 3 || !slices.Contains(strings.Split(parts[2], ","), "ro") {
			t.Errorf("the policy volume %q is not read-only", v)
		}
		if rel == "." {
			t.Errorf("the policy volume %q mounts a single file: an edited file is not seen on reload; mount its directory", v)
		}
		hostConfig = filepath.Join(repoRoot, src, rel)
	}
	if hostConfig == "" {
		t.Fatalf("no volume of egress holds %s", configArg)
	}
	policyData, err := os.ReadFile(hostConfig)
	if err != nil {
		t.Fatalf("the mounted policy: %v", err)
	}
	pol := parsePolicyFile(t, hostConfig, policyData)

	t.Run("the mounted policy loads", func(t *testing.T) {
		p := loadCleanPolicy(t, hostConfig, policyData)
		if p == nil {
			return
		}
		env := plugin.env(t)
		port, _ := strconv.Atoi(env["PLUGIN_DB_PORT"])
		if d := p.Decide(policy.Request{Host: env["PLUGIN_DB_HOST"], Port: uint16(port)}); !d.Allowed() {
			t.Errorf("the policy denies the plugin's DB %s:%d: %s", env["PLUGIN_DB_HOST"], port, d.Reason)
		}
		api, _ := url.Parse(env["PLUGIN_API_URL"])
		if d := p.Decide(policy.Request{Host: api.Hostname(), Port: 443}); !d.Allowed() {
			t.Errorf("the policy denies the plugin's API %s:443: %s", api.Hostname(), d.Reason)
		}
		if p.Listen.HTTP != pol.Listen.HTTP || p.Listen.DNS != pol.Listen.DNS || p.Listen.Admin != pol.Listen.Admin {
			t.Errorf("policy.Load reads listen %+v, the file says %+v", p.Listen, pol.Listen)
		}
	})

	sandbox := ""
	for n := range pluginNets {
		if _, ok := egressNets[n]; ok {
			sandbox = n
		}
	}
	egressIP := egressNets[sandbox]

	t.Run("the plugin's proxy settings point at egress's HTTP listener", func(t *testing.T) {
		listen := addrPort(t, "listen.http", pol.Listen.HTTP)
		if !listen.Addr().IsUnspecified() {
			t.Errorf("listen.http %s: other containers cannot reach it; use 0.0.0.0", listen)
		}
		env := plugin.env(t)
		for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "PLUGIN_DB_PROXY"} {
			u, err := url.Parse(env[k])
			if err != nil || env[k] == "" {
				t.Errorf("plugin %s = %q, want egress's proxy URL", k, env[k])
				continue
			}
			if h := u.Hostname(); h != "egress" && h != egressIP {
				t.Errorf("plugin %s = %q: host is not egress", k, env[k])
			}
			if u.Port() != strconv.Itoa(int(listen.Port())) {
				t.Errorf("plugin %s = %q: port is not listen.http's %d", k, env[k], listen.Port())
			}
		}
		if env["PLUGIN_DB_HOST"] != "origin" {
			t.Errorf("plugin PLUGIN_DB_HOST = %q, want the origin service", env["PLUGIN_DB_HOST"])
		}
	})

	t.Run("the plugin's DNS is egress's DNS listener", func(t *testing.T) {
		if pol.Listen.DNS == "" {
			t.Fatal("listen.dns is off in the mounted policy")
		}
		listen := addrPort(t, "listen.dns", pol.Listen.DNS)
		if !listen.Addr().IsUnspecified() || listen.Port() != 53 {
			t.Errorf("listen.dns %s: Docker forwards to port 53 of an address the plugin reaches; use 0.0.0.0:53", listen)
		}
		if egressIP == "" {
			t.Fatalf("egress has no fixed address on %q for the plugin's dns:", sandbox)
		}
		if got := plugin.dns(t); !slices.Equal(got, []string{egressIP}) {
			t.Errorf("plugin dns: %v, want [%s] (egress on %s)", got, egressIP, sandbox)
		}
	})

	t.Run("allow_from is the sandbox network", func(t *testing.T) {
		subnets := c.Networks[sandbox].IPAM.Config
		if len(subnets) != 1 {
			t.Fatalf("network %q needs exactly one fixed subnet, has %d", sandbox, len(subnets))
		}
		subnet, err := netip.ParsePrefix(subnets[0].Subnet)
		if err != nil {
			t.Fatal(err)
		}
		if ip, err := netip.ParseAddr(egressIP); err != nil || !subnet.Contains(ip) {
			t.Errorf("egress's address %q is not in %s", egressIP, subnet)
		}
		if len(pol.AllowFrom) == 0 {
			t.Fatal("allow_from is empty: egress would serve any client")
		}
		for _, s := range pol.AllowFrom {
			p, err := netip.ParsePrefix(s)
			if a, aerr := netip.ParseAddr(s); err != nil && aerr == nil {
				p, err = netip.PrefixFrom(a, a.BitLen()), nil // a bare IP
			}
			if err != nil || !subnet.Overlaps(p) || p.Bits() < subnet.Bits() {
				t.Errorf("allow_from entry %q is not within the sandbox subnet %s", s, subnet)
			}
		}
	})

	t.Run("the admin listener serves the healthcheck and not the plugin", func(t *testing.T) {
		admin := addrPort(t, "listen.admin", pol.Listen.Admin)
		if !admin.Addr().IsLoopback() {
			t.Errorf("listen.admin %s: the plugin could reach /policy and /denials; keep it on loopback", admin)
		}
		// The image's HEALTHCHECK asks the listen.admin of its --config:
		// the policy compose mounts, where compose's command reads it.
		if hc := flagValue(dockerHealthcheck(t), "config"); hc != configArg || flagValue(egressSvc.Command, "admin") != "" {
			t.Errorf("HEALTHCHECK reads --config %q, compose serves --config %q (--admin %q): the healthcheck would ask another listener",
				hc, configArg, flagValue(egressSvc.Command, "admin"))
		}
	})

	t.Run("egress is built from the Dockerfile", func(t *testing.T) {
		if egressSvc.Build != "." {
			t.Errorf("egress build = %v, want the repository root", egressSvc.Build)
		}
	})

	t.Run("the plugin runs the example plugin read-only", func(t *testing.T) {
		var mounted bool
		for _, v := range plugin.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) == 3 && filepath.Clean(parts[0]) == filepath.Join("examples", pluginDir) && parts[2] == "ro" {
				mounted = true
				if !slices.Contains(plugin.Command, parts[1]+"/plugin.py") {
					t.Errorf("plugin command %q does not run %s/plugin.py", plugin.Command, parts[1])
				}
			}
		}
		if !mounted {
			t.Errorf("the plugin does not mount ./examples/%s read-only", pluginDir)
		}
		if plugin.User == "" || strings.HasPrefix(plugin.User, "0") || plugin.User == "root" {
			t.Errorf("the plugin runs as %q, want a non-root user", plugin.User)
		}
	})
}

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, USER, ...
	args string
	line int
}

// stage is one FROM and what follows it.
type stage struct {
	image, name string
	ins         []instruction
}

func parseDockerfile(t *testing.T) []stage {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stages []stage
	var cur strings.Builder
	start, n := 0, 0
	flush := func() {
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			return
		}
		cmd, args, _ := strings.Cut(text, " ")
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			s := stage{image: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			stages = append(stages, s)
			return
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Errorf("Dockerfile:%d: %s before FROM", in.line, in.cmd)
			}
			return
		}
		stages[len(stages)-1].ins = append(stages[len(stages)-1].ins, in)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if body, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(body + " ")
			continue
		}
		cur.WriteString(trimmed)
		flush()
	}
	flush()
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return stages
}

// execForm decodes a JSON array argument (exec form); nil for shell form.
func execForm(s string) []string {
	var argv []string
	if json.Unmarshal([]byte(s), &argv) != nil {
		return nil
	}
	return argv
}

// dockerHealthcheck is the command of the image's HEALTHCHECK.
func dockerHealthcheck(t *testing.T) []string {
	t.Helper()
	stages := parseDockerfile(t)
	for _, in := range stages[len(stages)-1].ins {
		if in.cmd != "HEALTHCHECK" {
			continue
		}
		_, cmd, ok := strings.Cut(in.args, "CMD ")
		argv := execForm(strings.TrimSpace(cmd))
		if !ok || argv == nil {
			t.Fatalf("Dockerfile:%d: HEALTHCHECK must be CMD in exec form: the image has no shell", in.line)
		}
		return argv
	}
	t.Fatal("the final stage has no HEALTHCHECK")
	return nil
}

func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t)
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stage(s), want a build stage and a small final one", len(stages))
	}
	final := stages[len(stages)-1]
	stageNames := map[string]stage{}
	for _, s := range stages[:len(stages)-1] {
		stageNames[s.name] = s
	}

	t.Run("the final image is small and static", func(t *testing.T) {
		if final.image != "scratch" && !strings.HasPrefix(final.image, "gcr.io/distroless/static") {
			t.Errorf("final stage FROM %s, want scratch or gcr.io/distroless/static", final.image)
		}
		for _, in := range final.ins {
			if in.cmd == "RUN" {
				t.Errorf("Dockerfile:%d: RUN in the final stage: it has no shell", in.line)
			}
		}
	})

	t.Run("the binaries are built without cgo in an earlier stage", func(t *testing.T) {
		var copied bool
		for _, in := range final.ins {
			if in.cmd != "COPY" || !strings.HasPrefix(in.args, "--from=") {
				continue
			}
			from := strings.TrimPrefix(strings.Fields(in.args)[0], "--from=")
			build, ok := stageNames[from]
			if !ok {
				t.Errorf("Dockerfile:%d: COPY --from=%s names no stage", in.line, from)
				continue
			}
			copied = true
			var cgoOff, builds bool
			for _, bi := range build.ins {
				cgoOff = cgoOff || strings.Contains(bi.args, "CGO_ENABLED=0")
				builds = builds || (bi.cmd == "RUN" && strings.Contains(bi.args, "go build") && strings.Contains(bi.args, "./cmd/egress"))
			}
			if !cgoOff || !builds {
				t.Errorf("stage %s must go build ./cmd/egress with CGO_ENABLED=0 (cgo off: %v, builds: %v)", from, cgoOff, builds)
			}
		}
		if !copied {
			t.Error("the final stage copies nothing from a build stage")
		}
	})

	t.Run("the build stage's Go is the one go.mod asks for", func(t *testing.T) {
		mod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(mod)
		if m == nil {
			t.Fatal("go.mod has no go directive")
		}
		var found bool
		for _, s := range stages[:len(stages)-1] {
			if v, ok := strings.CutPrefix(s.image, "golang:"); ok {
				found = true
				if !strings.HasPrefix(v, string(m[1])) {
					t.Errorf("FROM %s, but go.mod says go %s", s.image, m[1])
				}
			}
		}
		if !found {
			t.Error("no golang build stage")
		}
	})

	t.Run("it runs as a numeric non-root user", func(t *testing.T) {
		var user string
		for _, in := range final.ins {
			if in.cmd == "USER" {
				user = in.args
			}
		}
		uid, _, _ := strings.Cut(user, ":")
		n, err := strconv.Atoi(uid)
		if err != nil || n == 0 {
			t.Errorf("final USER %q, want a numeric non-zero uid (Kubernetes' runAsNonRoot checks numbers)", user)
		}
	})

	t.Run("the healthcheck runs a binary the image has", func(t *testing.T) {
		var hc, entry []string
		var copied []string
		for _, in := range final.ins {
			switch in.cmd {
			case "HEALTHCHECK":
				_, cmd, _ := strings.Cut(in.args, "CMD ")
				hc = execForm(strings.TrimSpace(cmd))
			case "ENTRYPOINT":
				entry = execForm(in.args)
			case "COPY":
				f := strings.Fields(in.args)
				dst := f[len(f)-1]
				for _, src := range f[1 : len(f)-1] {
					p := dst
					if strings.HasSuffix(dst, "/") {
						p = dst + filepath.Base(src)
					}
					copied = append(copied, p)
				}
			}
		}
		if len(hc) == 0 || !slices.Contains(copied, hc[0]) {
			t.Errorf("HEALTHCHECK runs %v, which no COPY put in the image (%v)", hc, copied)
		}
		if len(entry) == 0 || !slices.Contains(copied, entry[0]) {
			t.Errorf("ENTRYPOINT %v is not an exec-form path the image has (%v)", entry, copied)
		}
		if len(hc) < 2 || hc[1] != "health" {
			t.Errorf("HEALTHCHECK runs %v, want egress health", hc)
		}
	})

	t.Run("the healthcheck reads the policy the image serves", func(t *testing.T) {
		var cmd []string
		for _, in := range final.ins {
			if in.cmd == "CMD" {
				cmd = execForm(in.args)
			}
		}
		if served, asked := flagValue(cmd, "config"), flagValue(dockerHealthcheck(t), "config"); served == "" || served != asked {
			t.Errorf("CMD serves --config %q, HEALTHCHECK asks the admin listener of --config %q", served, asked)
		}
	})

	t.Run("the build context leaves out .git", func(t *testing.T) {
		data, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(strings.Fields(string(data)), ".git") {
			t.Error(".dockerignore does not leave out .git")
		}
	})
}
