// Command egressdns runs egress's DNS proxy alone, for bench/dns/run.sh:
// the same dnsproxy.Server that egress serve runs, with a one-rule policy
// (default deny, allow *.bench.test) built from its flags, so that the
// benchmark measures the DNS path without the HTTP proxy beside it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dnsproxy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/names"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:5390", "UDP and TCP `ADDR`ess to serve on")
	upstream := flag.String("upstream", "127.0.0.1:5391", "upstream `ADDR`ess")
	cacheSize := flag.Int("cache-size", 10000, "dns.cache_size (0 turns the cache off)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile to `FILE` until exit")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "egressdns:", err)
			os.Exit(2)
		}
		_ = pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}

	text := fmt.Sprintf(`version: 1
default: deny
allow:
  - host: "*.bench.test"
dns:
  upstreams: ["%s"]
  cache_size: %d
`, *upstream, *cacheSize)
	p, err := policy.Load("bench.yaml", []byte(text))
	if err != nil {
		fmt.Fprintln(os.Stderr, "egressdns:", err)
		os.Exit(2)
	}
	lg := zerolog.New(os.Stderr).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	s := &dnsproxy.Server{
		Policy: func() *policy.Policy { return p },
		Events: &eventlog.Sink{Logger: lg},
		Logger: lg,
		Names:  &names.Table{},
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.Shutdown(sctx)
	}()
	if err := s.ListenAndServe(*listen); err != nil && !errors.Is(err, dnsproxy.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, "egressdns:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}
