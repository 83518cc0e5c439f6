#!/usr/bin/env bash
# What plugin code sees of a refusal under egress run, against baselines
# measured in the same run:
#   - connect() to a destination the policy refuses: the sandbox's connect
#     filter (ECONNREFUSED at once) against the kernel refusing a closed
#     port on the host's loopback (the fastest refusal there is);
#   - getaddrinfo() of allowed names through egress's DNS, each answer's
#     address leased in the filter before the answer goes out, against the
#     same with --refuse-after-accept (no filter, no lease).
# Loopback only: the DNS upstream is a local miekg/dns server (bench/dns's
# egressdns is not needed; egress answers from a local test upstream).
# Usage: bench/refusal/run.sh [N] [PYTHON]   (default 500, python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-500}
py=${2:-python3}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
go build -o "$tmp/egress" ./cmd/egress
go build -o "$tmp/upstream" ./bench/refusal/upstream

"$tmp/upstream" -listen 127.0.0.1:0 -addr-file "$tmp/upstream.addr" &
for _ in $(seq 50); do [ -s "$tmp/upstream.addr" ] && break; sleep 0.1; done
cat > "$tmp/policy.yaml" <<YAML
version: 1
default: deny
allow:
  - {host: "*.bench.test", ports: [443]}
  - {cidr: 127.1.0.0/16, ports: [443]}   # lifts the loopback guard for the answers
dns:
  upstreams: ["$(cat "$tmp/upstream.addr")"]
YAML

# A closed port on the host's loopback: nothing listens on port 9 (discard).
echo "baseline (host loopback, closed port, kernel RST):"
$py bench/refusal/probe.py "$n" 127.0.0.1 9
echo "egress run, connect filter (refused at connect):"
"$tmp/egress" run --quiet --config "$tmp/policy.yaml" -- $py bench/refusal/probe.py "$n" 127.0.0.1 5432 bench.test
echo "egress run --refuse-after-accept (no filter, no leases):"
"$tmp/egress" run --quiet --refuse-after-accept --config "$tmp/policy.yaml" -- $py bench/refusal/probe.py "$n" 127.0.0.1 5432 bench.test
