#!/usr/bin/env bash
# connect() latency under egress run to an allowed destination that
# accepts (issue 21: the SYN is held while egress dials, so connect()
# returns only once the destination has accepted), against baselines
# measured in the same run:
#   - the upstream's own connect time: the same connect from the host,
#     without egress;
#   - a connect from a sandbox with the same unix-socket guard that goes
#     no further than the sandbox (egress run --refuse-after-accept: the
#     transparent listener accepts at once, nothing is held or dialled).
# Goal: held <= 1.5 x sandbox + upstream.
# Loopback only. Usage: bench/connect/run.sh [N] [PYTHON]  (default 500, python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-500}
py=${2:-python3}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
go build -o "$tmp/egress" ./cmd/egress

# An accepting upstream on the host's loopback.
$py - "$tmp/port" <<'PY' &
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(1024)
open(sys.argv[1] + ".tmp", "w").write(str(s.getsockname()[1]))
import os
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    c, _ = s.accept()
    c.close()
PY
for _ in $(seq 50); do [ -s "$tmp/port" ] && break; sleep 0.1; done
port=$(cat "$tmp/port")
printf 'version: 1\ndefault: deny\nallow:\n  - {cidr: 127.0.0.1/32, ports: [%s]}\n' "$port" > "$tmp/policy.yaml"

# step TITLE FILE CMD...: runs CMD, prints and keeps its JSON in FILE.
step() {
  echo "$1"; local out=$2; shift 2
  "$@" > "$out" || { echo "step failed: $*" >&2; exit 1; }
  cat "$out"; echo
}
step "upstream's own connect (host, no egress):" "$tmp/upstream.json" \
  $py bench/refusal/probe.py "$n" 127.0.0.1 "$port"
step "sandbox + guard, accepted at once (egress run --refuse-after-accept):" "$tmp/sandbox.json" \
  "$tmp/egress" run --quiet --refuse-after-accept --config "$tmp/policy.yaml" -- $py bench/refusal/probe.py "$n" 127.0.0.1 "$port"
step "held until the upstream accepted (egress run):" "$tmp/held.json" \
  "$tmp/egress" run --quiet --config "$tmp/policy.yaml" -- $py bench/refusal/probe.py "$n" 127.0.0.1 "$port"
# The goal, on medians.
python3 - "$tmp" <<'PY' || { echo "step failed: compare with the goal" >&2; exit 1; }
import json, sys
m = {k: json.load(open("%s/%s.json" % (sys.argv[1], k)))["connect"]["median_ms"] for k in ("upstream", "sandbox", "held")}
goal = 1.5 * m["sandbox"] + m["upstream"]
print("median connect: held %.3f ms; goal <= 1.5 x sandbox %.3f + upstream %.3f = %.3f ms: %s (%.2fx the goal)" % (
    m["held"], m["sandbox"], m["upstream"], goal, "met" if m["held"] <= goal else "NOT met", m["held"] / goal))
PY
