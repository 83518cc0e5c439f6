package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	neturl "net/url"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/reload"
	"gopkg.in/yaml.v3"
)

// defaultHealthURL is the admin listener's default address.
const defaultHealthURL = "http://" + defaultAdminListen + "/healthz"

// cmdHealth asks a running egress whether it is healthy: a GET of its admin
// /healthz (or /readyz), exit 0 on a 2xx answer, 1 otherwise (a usage
// error too: Docker reserves exit 2 of a HEALTHCHECK), within a bounded
// time. It is the container image's HEALTHCHECK: the image has no shell
// and no curl. With --config it asks the admin listener the policy names
// (listen.admin), so that the check follows the policy; a policy file
// broken since egress started (egress serves on its last good policy) is
// read leniently for listen.admin, or the default asked, and it says so.
func cmdHealth(args []string, stdout, stderr io.Writer) int {
	return probe(args, stdout, stderr)
}

// exitUnhealthy is health's one failing exit status, whatever failed:
// Docker reads a HEALTHCHECK's 1 as unhealthy and reserves 2.
const exitUnhealthy = 1

func probe(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("egress health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	config := fs.String("config", "", "ask the admin listener of the policy `FILE` (its listen.admin)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: egress health [--timeout 2s] [--config FILE | URL]")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Asks a running egress's admin listener whether it is healthy: exit 0 on a 2xx answer")
		fmt.Fprintln(stderr, "(one line on standard output), 1 otherwise, a usage error included (Docker reserves 2).")
		fmt.Fprintln(stderr, "URL is the admin listener's /healthz or /readyz; HOST:PORT alone means its /healthz.")
		fmt.Fprintln(stderr, "Default URL: "+defaultHealthURL+", or with --config the listen.admin of that policy;")
		fmt.Fprintln(stderr, "a policy that does not load (egress keeps serving its last good one) is read leniently")
		fmt.Fprintln(stderr, "for listen.admin, or the default asked, with a line on standard error saying so.")
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUnhealthy
	}
	if msg := healthArgsError(fs.NArg(), *config, *timeout); msg != "" {
		fmt.Fprintf(stderr, "egress health: %s\n\n", msg)
		fs.Usage()
		return exitUnhealthy
	}
	url := defaultHealthURL
	switch {
	case fs.NArg() == 1:
		if hint := configHint(fs.Arg(0), ""); hint != "" {
			fmt.Fprintf(stderr, "egress health: %q is not a URL%s\n", fs.Arg(0), hint)
			return exitUnhealthy
		}
		url = healthURL(fs.Arg(0))
	case *config != "":
		u, note, err := adminURL(*config)
		if note != "" {
			fmt.Fprintf(stderr, "egress health: %s\n", note)
		}
		if err != nil {
			fmt.Fprintf(stderr, "egress health: %v\n", err)
			return exitUnhealthy
		}
		url = u
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(stderr, "egress health: %v\n", err)
		return exitUnhealthy
	}
	// Proxy nil: the probe asks egress itself, whatever HTTP_PROXY says.
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "egress health: %s: %s\n", url, healthFailure(err, *timeout))
		return exitUnhealthy
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		fmt.Fprintf(stderr, "egress health: %s answered %s\n", url, resp.Status)
		return exitUnhealthy
	}
	fmt.Fprintf(stdout, "egress health: %s answered %s\n", url, resp.Status)
	return 0
}

// adminURL is the /healthz of the admin listener that the policy file
// names: listen.admin, with a wildcard address (0.0.0.0, [::]) asked on
// loopback. A file that does not load is what an operator's edit leaves
// while egress goes on serving its last good policy: health must still
// answer for that egress, so listen.admin is then read leniently (see
// lenientAdmin), or the default taken, and note says which.
func adminURL(file string) (url, note string, err error) {
	addr := defaultAdminListen
	data, err := reload.ReadFile(file)
	if err == nil {
		var p *policy.Policy
		if p, err = policy.LoadWith(file, data, reload.ReadFile); err == nil {
			addr = p.Listen.Admin
		}
	}
	if err != nil {
		first, _, _ := strings.Cut(err.Error(), "\n")
		if a, ok := lenientAdmin(file, 0, map[string]bool{}); ok {
			addr = a
			note = fmt.Sprintf("%s does not load (%s; a running egress keeps its last good policy): asking the listen.admin the file writes, %q", file, first, a)
		} else {
			note = fmt.Sprintf("%s does not load (%s; a running egress keeps its last good policy): the file names no listen.admin that can be read, asking the default %s", file, first, defaultAdminListen)
		}
	}
	if addr == "" {
		return "", note, fmt.Errorf("%s: listen.admin is off: no admin listener to ask", file)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", note, fmt.Errorf("%s: listen.admin %q: %w", file, addr, err)
	}
	switch ip, err := netip.ParseAddr(host); {
	case host == "":
		host = "127.0.0.1"
	case err == nil && ip.IsUnspecified() && ip.Is4():
		host = "127.0.0.1"
	case err == nil && ip.IsUnspecified():
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/healthz", note, nil
}

// lenientAdmin reads listen.admin from a policy file that does not load,
// as the loader would combine it (docs/policy.md, "Layering"): the file's
// own value, else the last of its includes' (depth first) that sets one.
// It asks only that the file is YAML with a string at listen.admin; ok is
// false when no file read says one.
func lenientAdmin(file string, depth int, seen map[string]bool) (addr string, ok bool) {
	if depth > 16 || seen[file] {
		return "", false
	}
	seen[file] = true
	data, err := reload.ReadFile(file)
	if err != nil {
		return "", false
	}
	var doc struct {
		Include any `yaml:"include"`
		Listen  struct {
			Admin *string `yaml:"admin"`
		} `yaml:"listen"`
	}
	// A *yaml.TypeError (a field of another shape) still decodes the
	// rest; a file that is not YAML at all says nothing.
	var te *yaml.TypeError
	if err := yaml.Unmarshal(data, &doc); err != nil && !errors.As(err, &te) {
		return "", false
	}
	var incs []string
	switch v := doc.Include.(type) {
	case string:
		incs = []string{v}
	case []any:
		for _, i := range v {
			if s, ok := i.(string); ok {
				incs = append(incs, s)
			}
		}
	}
	for _, inc := range incs {
		if !filepath.IsAbs(inc) {
			inc = filepath.Join(filepath.Dir(file), inc)
		}
		if a, found := lenientAdmin(filepath.Clean(inc), depth+1, seen); found {
			addr, ok = a, true
		}
	}
	if doc.Listen.Admin != nil {
		return *doc.Listen.Admin, true
	}
	return addr, ok
}

// healthURL completes what a person types: 127.0.0.1:9090 or
// http://127.0.0.1:9090 mean that admin listener's /healthz.
func healthURL(s string) string {
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	if u, err := neturl.Parse(s); err == nil && (u.Path == "" || u.Path == "/") {
		u.Path = "/healthz"
		return u.String()
	}
	return s
}

// healthArgsError says what is wrong with health's arguments, "" when
// nothing is.
func healthArgsError(nargs int, config string, timeout time.Duration) string {
	switch {
	case nargs > 1:
		return "one URL at most"
	case nargs == 1 && config != "":
		return "--config FILE or a URL, not both"
	case timeout <= 0:
		return "--timeout must be more than 0"
	}
	return ""
}

// healthFailure says why the admin listener gave no answer, in words an
// operator acts on rather than Go's request error.
func healthFailure(err error, timeout time.Duration) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused: nothing listens there (is egress running, with its admin listener at that address?)"
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("no answer within %s (deadline exceeded; --timeout gives it longer)", timeout)
	}
	var ue *neturl.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}
