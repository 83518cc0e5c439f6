#!/usr/bin/env bash
# Transparent-path benchmarks (needs root): tunnel throughput through
# egress's transparent listener against a direct loopback connection, and
# the wall time of "egress run -- true". Prints each figure and its ratio
# to the baseline measured in the same run.
#   bench/transparent/run.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}

out=$(go test -run '^$' -bench 'BenchmarkTunnel' -benchtime 1000x -count "$rounds" ./bench/transparent/)
echo "$out" | grep -E '^Benchmark'
for link in loopback 1gbit; do
  echo "$out" | awk -v link="$link" '
    $1 ~ "BenchmarkTunnel/" link "/direct"      { d += $(NF-5); nd++ }
    $1 ~ "BenchmarkTunnel/" link "/relay"       { r += $(NF-5); nr++ }
    $1 ~ "BenchmarkTunnel/" link "/transparent" { t += $(NF-5); nt++ }
    END { if (nd && nt && nr) printf "tunnel throughput (%s): direct %.0f MB/s, bare relay %.0f MB/s (%.2fx), transparent %.0f MB/s: %.2fx direct (target >= 0.9x), %.2fx bare relay\n", link, d/nd, r/nr, (r/nr)/(d/nd), t/nt, (t/nt)/(d/nd), (t/nt)/(r/nr) }'
done

bin=$(mktemp -d)/egress
go build -o "$bin" ./cmd/egress
# Wall time of a command, per run: the median and the fastest of n runs
# (the fastest is the least disturbed by other load on the machine).
n=50
walltime() {
  local times=() start end
  for _ in $(seq $n); do
    start=$(date +%s%N)
    "$@" >/dev/null
    end=$(date +%s%N)
    times+=($(( (end - start) / 1000 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk -v what="$*" '{ t[NR] = $1 } END { printf "%s: median %.1f ms, fastest %.1f ms (%d runs)\n", what, t[int((NR+1)/2)]/1000, t[1]/1000, NR }'
}
walltime /bin/true
walltime "$bin" run --quiet -- /bin/true
echo "target: egress run -- true under 150 ms"
rm -rf "$(dirname "$bin")"
