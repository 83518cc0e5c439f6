package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"strings"
	"time"
)

// defaultHealthURL is the admin listener's default address.
const defaultHealthURL = "http://127.0.0.1:9090/healthz"

// cmdHealth asks a running egress whether it is healthy: a GET of its admin
// /healthz (or /readyz), exit 0 on a 2xx answer, 1 otherwise, within a
// bounded time. It is the container image's HEALTHCHECK: the image has no
// shell and no curl.
func cmdHealth(args []string, stdout, stderr io.Writer) int {
	return probe(args, stderr)
}

func probe(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("egress health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	url := defaultHealthURL
	if fs.NArg() == 1 {
		url = healthURL(fs.Arg(0))
	}
	if fs.NArg() > 1 || *timeout <= 0 {
		fmt.Fprintln(stderr, "usage: egress health [--timeout 2s] [URL]  (default URL: "+defaultHealthURL+")")
		return exitUsage
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
		fmt.Fprintf(stderr, "egress health: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		fmt.Fprintf(stderr, "egress health: %s answered %s\n", url, resp.Status)
		return 1
	}
	return 0
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
