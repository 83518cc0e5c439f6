#!/usr/bin/env bash
# bench/run.sh: egress against direct connections and the proxies users
# would otherwise pick (squid, tinyproxy, Stripe's smokescreen; dnsmasq for
# DNS), on loopback, in one run; writes BENCHMARKS.md (issues 8 and 13).
#
#   bench/run.sh                 # from anywhere; needs root to install
#   RUNS=3 DURATION=2s bench/run.sh   # shorter
#
# 1-4  HTTP keep-alive req/s, CONNECT throughput, CONNECT setup latency
#      and tunnels/s, RSS per idle tunnel (CONNECT, WebSocket, transparent)
#      as tunnels open, egress with more policy rules: bench/compare (Go),
#      which starts loopback origins, egress, squid, tinyproxy (configs in
#      bench/peers/), smokescreen v0.1.0 (go install into a temporary
#      directory; the repository's go.mod is not touched) and
#      bench/compare/minproxy (the floor of a Go proxy), and runs every
#      measure in alternating rounds. bench/compare/notes.md, the analysis
#      of the figures and the profiles behind it, is appended.
# 5    DNS answers/s cached and uncached against dnsmasq: bench/dns/run.sh.
# 6    policy decisions/s with 100,000 rules: go test -bench in ./policy.
# 8    TLS interception (issue 20): intercepted HTTPS keep-alive
#      requests/s, new intercepted connections/s, memory per idle
#      intercepted connection, against Debian's squid-openssl (ssl_bump
#      bump all, bench/peers/squid-bump.conf) and mitmproxy: bench/compare
#      -only intercept (bench/compare/intercept.go), new connections made
#      by OpenSSL clients (bench/compare/tlsload, built here with cc) and
#      by bench/compare's Go client. squid-openssl replaces
#      the squid package, so the plain squid columns use its binary too
#      (the report names the package). mitmproxy is measured when Debian
#      can install it, skipped (and the report says so) otherwise.
#
# Environment: RUNS (5), DURATION (3s, wrk per round), BYTES (2 GiB per
# download), CONNS (8 wrk connections), TUNNELS (20000 idle tunnels, or
# as many as ulimit -n allows: two descriptors each), RULES (10,1000,100000
# policy rules), SKIP_DNS=1,
# SKIP_POLICY=1, ONLY (bench/compare's -only: measures 1-4 and 8 to run,
# comma-separated, e.g. ONLY=intercept; all by default), OUT (BENCHMARKS.md at the repository root).
# Not part of go test ./... or CI: figures depend on the machine.
set -euo pipefail

# Every step names itself in $step: a command that fails ends the script
# (set -e, pipefail) with a line saying which step it was, not silently.
step="start"
trap 'rc=$?; echo "bench: failed (exit $rc) in step: $step; its own output, if any, is above" >&2' ERR

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
RUNS=${RUNS:-5}
DURATION=${DURATION:-3s}
BYTES=${BYTES:-$((2 << 30))}
CONNS=${CONNS:-8}
TUNNELS=${TUNNELS:-20000}
RULES=${RULES:-10,1000,100000}
OUT=${OUT:-$root/BENCHMARKS.md}
ONLY=${ONLY:-memory,paths,rules,rps,throughput,setup,intercept}

# Debian packages, installed only when missing.
need=()
# squid-openssl (squid built with OpenSSL, for ssl-bump) replaces squid.
[ "$(dpkg-query -W -f '${Status}' squid-openssl 2>/dev/null)" = "install ok installed" ] || need+=(squid-openssl)
command -v tinyproxy >/dev/null || [ -x /usr/bin/tinyproxy ] || need+=(tinyproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v dnsperf >/dev/null || need+=(dnsperf)
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq)
command -v dig >/dev/null || need+=(dnsutils)
# The OpenSSL clients of the interception measure (bench/compare/tlsload).
command -v cc >/dev/null || need+=(gcc)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
if [ ${#need[@]} -gt 0 ]; then
	step="install ${need[*]} from Debian (apt-get)"
	echo "installing ${need[*]} from Debian" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${need[@]}" >/dev/null
fi
# mitmproxy on its own: a peer of the interception measure only, which
# runs without it when Debian cannot install it.
if ! command -v mitmdump >/dev/null; then
	step="install mitmproxy from Debian (apt-get)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 mitmproxy >/dev/null ||
		echo "bench: mitmproxy is not installable here: the interception measure runs without it" >&2
fi
MITMPROXY=$(command -v mitmdump || true)
SQUID=$(command -v squid || echo /usr/sbin/squid)
TINYPROXY=$(command -v tinyproxy || echo /usr/bin/tinyproxy)

# An idle tunnel takes two descriptors in the proxy and two in the
# benchmark process (client and origin ends): 20,000 need 40,000 and more.
# Raise the soft limit to the hard one (root can raise the hard one too,
# unless, as in some containers, it lacks CAP_SYS_RESOURCE); bench/compare
# opens as many tunnels as fit and says so.
# The hard limit is only ever raised: lowering it to $want could not be
# undone, and would refuse what the floor below asks.
step="raise the open files limit (ulimit -n)"
want=$((2 * TUNNELS + 1000))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
	ulimit -Hn "$want" 2>/dev/null || true
	hard=$(ulimit -Hn)
fi
if [ "$hard" = unlimited ] || [ "$hard" -gt "$want" ]; then soft=$want; else soft=$hard; fi
ulimit -Sn "$soft" # -S: plain ulimit -n sets the hard limit too
# Fewer than 12000 (or than TUNNELS need, when that is less) leaves too
# few tunnels to measure.
floor=$((want < 12000 ? want : 12000))
echo "bench: open files: $(ulimit -n) (hard limit $(ulimit -Hn)) for $TUNNELS tunnels" >&2
if [ "$(ulimit -n)" -lt "$floor" ]; then
	echo "bench: need at least $floor open files (ulimit -n); have $(ulimit -n): raise the hard limit (root, or ulimit -Hn in the shell that starts bench/run.sh)" >&2
	exit 1
fi
if [ "$(ulimit -n)" -lt "$want" ]; then
	echo "bench: ulimit -n is $(ulimit -n), under the $want that $TUNNELS tunnels need: measuring $(( ($(ulimit -n) - 1000) / 2 ))" >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# smokescreen v0.1.0 from the Go module proxy, built into the temporary
# directory: go install pkg@version ignores the current module, so
# go.mod and go.sum stay as they are.
step="go install github.com/stripe/smokescreen@v0.1.0"
echo "== $step" >&2
(cd "$work" && GOBIN="$work" go install github.com/stripe/smokescreen@v0.1.0)
step="build egress, bench/compare and minproxy (go build)"
go build -o "$work/egress" ./cmd/egress
go build -o "$work/compare" ./bench/compare
go build -o "$work/minproxy" ./bench/compare/minproxy
step="build bench/compare/tlsload (cc, OpenSSL)"
cc -O2 -Wall -o "$work/tlsload" bench/compare/tlsload/tlsload.c -lssl -lcrypto

echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

args=()
if [ "${SKIP_POLICY:-}" != 1 ]; then
	step="policy decisions (go test -bench ./policy)"
	echo "== $step" >&2
	go test -run '^$' -bench 'Decide100k|BaselineMapLookup' -benchtime 1s -count 3 ./policy | tee "$work/policy.txt" >&2
	args+=(-policy "$work/policy.txt")
fi

if [ "${SKIP_DNS:-}" != 1 ]; then
	step="DNS (bench/dns/run.sh)"
	echo "== $step" >&2
	bash bench/dns/run.sh | tee "$work/dns.txt" >&2
	args+=(-dns "$work/dns.txt")
fi

step="HTTP and CONNECT (bench/compare)"
echo "== $step" >&2
"$work/compare" -egress "$work/egress" -squid "$SQUID" -tinyproxy "$TINYPROXY" -smokescreen "$work/smokescreen" -minproxy "$work/minproxy" -mitmproxy "$MITMPROXY" -tlsload "$work/tlsload" \
	-peers bench/peers -notes bench/compare/notes.md \
	-runs "$RUNS" -duration "$DURATION" -bytes "$BYTES" -conns "$CONNS" -tunnels "$TUNNELS" -rules "$RULES" -only "$ONLY" \
	-command "bench/run.sh (RUNS=$RUNS DURATION=$DURATION BYTES=$BYTES CONNS=$CONNS TUNNELS=$TUNNELS RULES=$RULES ONLY=$ONLY)" \
	-out "$OUT" "${args[@]}" >/dev/null
echo "== wrote $OUT" >&2
