"""Time connect() refusals and DNS lookups from inside egress run.

Usage: probe.py N DENIED_HOST DENIED_PORT [NAME]
Prints one JSON object: connect() latency to a destination the policy
refuses (ms: median, p90, p99, max, and the errno seen), and, with NAME,
the latency of getaddrinfo(NAME) for N distinct names n0.NAME, n1.NAME ... (each a
DNS query through egress, each answer leased before it is sent).
Python 2.7 and 3.
"""
from __future__ import print_function

import errno
import json
import socket
import sys
import time


def stats(xs):
    xs = sorted(xs)
    pick = lambda q: round(xs[min(len(xs) - 1, int(q * len(xs)))], 3)
    return {"n": len(xs), "median_ms": pick(0.5), "p90_ms": pick(0.9), "p99_ms": pick(0.99), "max_ms": round(xs[-1], 3)}


def main():
    n, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    lat, errs = [], {}
    for _ in range(n):
        t = time.time()
        try:
            socket.create_connection((host, port), timeout=5).close()
            e = "open"
        except socket.error as ex:
            e = errno.errorcode.get(ex.errno, str(ex.errno))
        lat.append((time.time() - t) * 1000)
        errs[e] = errs.get(e, 0) + 1
    out = {"connect": stats(lat), "outcomes": errs}
    if len(sys.argv) > 4:
        dl = []
        for i in range(n):
            t = time.time()
            socket.getaddrinfo("n%d.%s" % (i, sys.argv[4]), 443, socket.AF_INET, socket.SOCK_STREAM)
            dl.append((time.time() - t) * 1000)
        out["lookup"] = stats(dl)
    print(json.dumps(out))


main()
