#!/usr/bin/env bash
# bench/dns/run.sh: egress's DNS proxy against dnsmasq, in one run, with
# dnsperf, both forwarding to the same local upstream on loopback.
#
#   upstream   dnsmasq on 127.0.0.1:5391 answering *.bench.test itself
#              (--address, TTL 300): a fast, static zone
#   subjects   egress cached    127.0.0.1:5392  (cache_size 10000)
#              egress uncached  127.0.0.1:5393  (cache_size 0)
#              dnsmasq cached   127.0.0.1:5394  (--cache-size=10000)
#              dnsmasq uncached 127.0.0.1:5395  (--cache-size=0)
#
# For each subject: queries per second with dnsperf at full load
# (DURATION seconds, 100 outstanding; ROUNDS rounds taking the subjects in
# turn, the median reported, so that a change in machine load hits every
# subject alike), then p50 latency with one query
# outstanding (LAT_SECONDS), reported as added to the p50 of the upstream
# asked directly (median of ROUNDS runs of LAT_SECONDS each). Targets (issue 13): egress cached QPS >= 1.1x dnsmasq cached, egress
# uncached QPS >= dnsmasq uncached, added p50 < 30 µs cached and < 100 µs uncached.
#
# Environment: DURATION (default 5), ROUNDS (3), LAT_SECONDS (2), NAMES (1000),
# GOMAXPROCS (passed to egress). BASELINE: an egressdns binary built from
# another commit (git archive COMMIT | tar -x -C DIR; cd DIR && go build
# ./bench/dns/egressdns), measured as the subjects before-cached and
# before-uncached in the same rounds, for a before/after comparison. Needs
# root for apt-get when dnsperf or dnsmasq is missing. Only loopback is used.
set -euo pipefail

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
LAT_SECONDS=${LAT_SECONDS:-2}
NAMES=${NAMES:-1000}
BASELINE=${BASELINE:-}
UP=5391 EC=5392 EU=5393 DC=5394 DU=5395 BC=5396 BU=5397

need=()
command -v dnsperf >/dev/null || need+=(dnsperf)
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq)
if [ ${#need[@]} -gt 0 ]; then
	echo "installing ${need[*]} from Debian" >&2
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)

root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

(cd "$root" && go build -o "$work/egressdns" ./bench/dns/egressdns)

dnsmasq_run() { # port, extra args...
	local port=$1
	shift
	"$DNSMASQ" -k --conf-file=/dev/null --no-resolv --no-hosts --no-negcache \
		--listen-address=127.0.0.1 --bind-interfaces --port="$port" \
		--user=root --pid-file= --dns-forward-max=1000 "$@" 2>"$work/dnsmasq-$port.log" &
	pids+=($!)
}

declare -A pid # by port
egress_run() { # binary, port, cache size
	"$1" -listen 127.0.0.1:"$2" -upstream 127.0.0.1:$UP -cache-size "$3" 2>"$work/egress-$2.log" &
	pids+=($!)
	pid[$2]=$!
}
dnsmasq_run $UP --address=/bench.test/93.184.216.34 --local-ttl=300 --cache-size=0
egress_run "$work/egressdns" $EC 10000
egress_run "$work/egressdns" $EU 0
if [ -n "$BASELINE" ]; then
	egress_run "$BASELINE" $BC 10000
	egress_run "$BASELINE" $BU 0
fi
dnsmasq_run $DC --server=127.0.0.1#$UP --cache-size=10000
pid[$DC]=${pids[-1]}
dnsmasq_run $DU --server=127.0.0.1#$UP --cache-size=0
pid[$DU]=${pids[-1]}

for i in $(seq 0 $((NAMES - 1))); do echo "n$i.bench.test A"; done >"$work/queries"

# Wait for every server to answer.
ports=($UP $EC $EU $DC $DU)
[ -z "$BASELINE" ] || ports+=($BC $BU)
for port in "${ports[@]}"; do
	for _ in $(seq 50); do
		dig +short +tries=1 +time=1 @127.0.0.1 -p $port n0.bench.test A 2>/dev/null | grep -q 93.184.216.34 && break
		sleep 0.1
	done
done

perf() { # port, extra dnsperf args...
	local port=$1
	shift
	dnsperf -s 127.0.0.1 -p "$port" -d "$work/queries" "$@" 2>&1
}

# Warm the caches: every name once.
perf $EC -n 1 >/dev/null
perf $DC -n 1 >/dev/null
[ -z "$BASELINE" ] || perf $BC -n 1 >/dev/null

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime
# qps prints the queries per second and adds the subject's CPU time and
# completed queries to cpu[] and done[]: CPU per query is the figure that
# other load on the machine disturbs least.
qps() {
	local before out n
	before=$(ticks "${pid[$1]}")
	out=$(perf "$1" -l "$DURATION" -q 100)
	cpu[$1]=$(( ${cpu[$1]:-0} + $(ticks "${pid[$1]}") - before ))
	n=$(awk '/Queries completed/ {print $3}' <<<"$out")
	done_[$1]=$(( ${done_[$1]:-0} + n ))
	awk '/Queries per second/ {print $4}' <<<"$out"
}
declare -A cpu done_
HZ=$(getconf CLK_TCK)
p50() { # microseconds, one query outstanding
	perf "$1" -l "$LAT_SECONDS" -q 1 -v | awk '/^> NOERROR/ {print $NF}' | sort -g |
		awk '{a[NR]=$1} END {if (NR == 0) {print "nan"; exit} printf "%.0f\n", a[int((NR+1)/2)] * 1e6}'
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

if [ -n "$BASELINE" ]; then
	subjects=("egress-cached:$EC" "before-cached:$BC" "dnsmasq-cached:$DC" "egress-uncached:$EU" "before-uncached:$BU" "dnsmasq-uncached:$DU")
else
	subjects=("egress-cached:$EC" "dnsmasq-cached:$DC" "egress-uncached:$EU" "dnsmasq-uncached:$DU")
fi
# rotated prints the list rotated left by its first argument: each round
# starts with another subject, so that none is always measured right
# after the same neighbour (load left behind, a warm or cold CPU).
rotated() {
	local k=$1
	shift
	local list=("$@")
	for i in $(seq 0 $((${#list[@]} - 1))); do echo "${list[$(((i + k) % ${#list[@]}))]}"; done
}
declare -A Q L runs
for r in $(seq "$ROUNDS"); do
	for s in $(rotated "$r" "${subjects[@]}"); do
		name=${s%%:*} port=${s##*:}
		qps "$port" >"$work/qps"
		runs[$name]+="$(cat "$work/qps") "
	done
done
declare -A lats
for r in $(seq "$ROUNDS"); do
	for s in $(rotated "$r" "upstream:$UP" "${subjects[@]}"); do
		name=${s%%:*} port=${s##*:}
		lats[$name]+="$(p50 "$port") "
	done
done
for s in "upstream:$UP" "${subjects[@]}"; do
	name=${s%%:*}
	if [ "$name" != upstream ]; then
		Q[$name]=$(echo "${runs[$name]}" | median)
	fi
	L[$name]=$(echo "${lats[$name]}" | median)
done

echo
echo "dnsperf $(dnsperf -h 2>&1 | awk '/^Version/ {print $2}'), $($DNSMASQ --version | head -1 | awk '{print $1, $3}'), $(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg), ${DURATION}s x $ROUNDS rounds, $NAMES names, 100 outstanding"
printf '%-18s %11s %-24s %11s %7s %13s\n' subject median_QPS runs_QPS cpu_us/query p50_us added_p50_us
declare -A C
for s in "${subjects[@]}"; do
	name=${s%%:*} port=${s##*:}
	C[$name]=$(awk -v t="${cpu[$port]}" -v hz="$HZ" -v n="${done_[$port]}" 'BEGIN {printf "%.2f", t / hz / n * 1e6}')
	printf '%-18s %11.0f %-24s %11s %7s %13s\n' "$name" "${Q[$name]}" "$(for q in ${runs[$name]}; do printf '%.0f ' "$q"; done)" "${C[$name]}" "${L[$name]}" "$((L[$name] - L[upstream]))"
done
printf '%-18s %12s %-30s %8s\n' upstream-direct - - "${L[upstream]}"
echo
awk -v ec="${Q[egress-cached]}" -v dc="${Q[dnsmasq-cached]}" -v eu="${Q[egress-uncached]}" -v du="${Q[dnsmasq-uncached]}" \
	-v cec="${C[egress-cached]}" -v cdc="${C[dnsmasq-cached]}" -v ceu="${C[egress-uncached]}" -v cdu="${C[dnsmasq-uncached]}" 'BEGIN {
	printf "cached:   egress/dnsmasq QPS = %.2f (target >= 1.10), CPU per query %.2f\n", ec / dc, cec / cdc
	printf "uncached: egress/dnsmasq QPS = %.2f (target >= 1.00), CPU per query %.2f\n", eu / du, ceu / cdu
}'
if [ -n "$BASELINE" ]; then
	awk -v ec="${Q[egress-cached]}" -v bc="${Q[before-cached]}" -v eu="${Q[egress-uncached]}" -v bu="${Q[before-uncached]}" \
		-v cec="${C[egress-cached]}" -v cbc="${C[before-cached]}" -v ceu="${C[egress-uncached]}" -v cbu="${C[before-uncached]}" 'BEGIN {
	printf "cached:   egress/before QPS = %.2f, CPU per query %.2f\n", ec / bc, cec / cbc
	printf "uncached: egress/before QPS = %.2f, CPU per query %.2f\n", eu / bu, ceu / cbu
}'
fi
for port in $EC $EU; do
	if [ -s "$work/egress-$port.log" ]; then
		echo "egress on $port logged:" >&2
		head -5 "$work/egress-$port.log" >&2
	fi
done
