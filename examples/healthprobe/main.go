// Command healthprobe is the HEALTHCHECK of egress's container image: it
// GETs one URL (egress's admin /healthz) and exits 0 on a 2xx answer, 1
// otherwise, within a bounded time. The final image has no shell and no
// curl, so the check has to be a static binary of its own.
//
// It exists until egress has a probe subcommand of its own (`egress health`);
// the Dockerfile's HEALTHCHECK is then one line to change.
//
//	healthprobe [-timeout 2s] http://127.0.0.1:9090/healthz
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	os.Exit(probe(os.Args[1:], os.Stderr))
}

// probe runs the command line args and returns the exit code.
func probe(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthprobe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 || *timeout <= 0 {
		fmt.Fprintln(stderr, "usage: healthprobe [-timeout 2s] URL")
		return 2
	}
	url := fs.Arg(0)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(stderr, "healthprobe: %v\n", err)
		return 2
	}
	// Proxy nil: the probe asks egress itself, whatever HTTP_PROXY says.
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "healthprobe: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		fmt.Fprintf(stderr, "healthprobe: %s answered %s\n", url, resp.Status)
		return 1
	}
	return 0
}
