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
	"strings"
	"syscall"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/reload"
)

// defaultHealthURL is the admin listener's default address.
const defaultHealthURL = "http://" + defaultAdminListen + "/healthz"

// cmdHealth asks a running egress whether it is healthy: a GET of its admin
// /healthz (or /readyz), exit 0 on a 2xx answer, 1 otherwise, within a
// bounded time. It is the container image's HEALTHCHECK: the image has no
// shell and no curl. With --config it asks the admin listener the policy
// names (listen.admin), so that the check follows the policy.
func cmdHealth(args []string, stdout, stderr io.Writer) int {
	return probe(args, stdout, stderr)
}

func probe(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("egress health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	config := fs.String("config", "", "ask the admin listener of the policy `FILE` (its listen.admin)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: egress health [--timeout 2s] [--config FILE | URL]")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Asks a running egress's admin listener whether it is healthy: exit 0 on a 2xx answer")
		fmt.Fprintln(stderr, "(one line on standard output), 1 otherwise. URL is the admin listener's /healthz or")
		fmt.Fprintln(stderr, "/readyz; HOST:PORT alone means its /healthz. Default URL: "+defaultHealthURL+",")
		fmt.Fprintln(stderr, "or with --config the listen.admin of that policy.")
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if msg := healthArgsError(fs.NArg(), *config, *timeout); msg != "" {
		fmt.Fprintf(stderr, "egress health: %s\n\n", msg)
		fs.Usage()
		return exitUsage
	}
	url := defaultHealthURL
	switch {
	case fs.NArg() == 1:
		if hint := configHint(fs.Arg(0), ""); hint != "" {
			fmt.Fprintf(stderr, "egress health: %q is not a URL%s\n", fs.Arg(0), hint)
			return exitUsage
		}
		url = healthURL(fs.Arg(0))
	case *config != "":
		u, err := adminURL(*config)
		if err != nil {
			fmt.Fprintf(stderr, "egress health: %v\n", err)
			return exitUsage
		}
		url = u
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(stderr, "egress health: %v\n", err)
		return exitUsage
	}
	// Proxy nil: the probe asks egress itself, whatever HTTP_PROXY says.
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "egress health: %s: %s\n", url, healthFailure(err, *timeout))
		return 1
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		fmt.Fprintf(stderr, "egress health: %s answered %s\n", url, resp.Status)
		return 1
	}
	fmt.Fprintf(stdout, "egress health: %s answered %s\n", url, resp.Status)
	return 0
}

// adminURL is the /healthz of the admin listener that the policy file
// names: listen.admin, with a wildcard address (0.0.0.0, [::]) asked on
// loopback.
func adminURL(file string) (string, error) {
	data, err := reload.ReadFile(file)
	if err != nil {
		return "", err
	}
	p, err := policy.LoadWith(file, data, reload.ReadFile)
	if err != nil {
		return "", err
	}
	addr := p.Listen.Admin
	if addr == "" {
		return "", fmt.Errorf("%s: listen.admin is off: no admin listener to ask", file)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%s: listen.admin %q: %w", file, addr, err)
	}
	switch ip, err := netip.ParseAddr(host); {
	case host == "":
		host = "127.0.0.1"
	case err == nil && ip.IsUnspecified() && ip.Is4():
		host = "127.0.0.1"
	case err == nil && ip.IsUnspecified():
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/healthz", nil
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
