#!/usr/bin/env python3
"""Run the example plugin the way an engine would: call discovery.repository().

Every setting comes from a flag or, when the flag is absent, an environment
variable, so that the same file runs on a laptop, under `egress run`, in
docker compose and in tests:

  --db-host   PLUGIN_DB_HOST   DBMS host              (db.corp.example)
  --db-port   PLUGIN_DB_PORT   DBMS port              (5432)
  --api-url   PLUGIN_API_URL   DBMS REST API          (https://api.example.com/v1/status)
  --timeout   PLUGIN_TIMEOUT   seconds in all         (3)
  --ca-file   PLUGIN_CA_FILE   CA bundle for the API  (system CAs; SSL_CERT_FILE works too)
  --db-proxy  PLUGIN_DB_PROXY  reach the DBMS through this HTTP proxy (CONNECT)
                               instead of a direct TCP connection

HTTPS_PROXY/HTTP_PROXY/NO_PROXY apply to the REST API as urllib applies them.

Exit codes: 0 the repository was discovered (JSON on stdout); 3 a network
requirement is not met (each one on stderr, with the rule to allow it);
2 bad arguments.
"""

from __future__ import absolute_import, division, print_function

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import discovery  # noqa: E402

EXIT_UNMET = 3
PREFIX = "plugin: "


def _env(name, default):
    v = os.environ.get(name, "")
    return v if v != "" else default


def parse_args(argv):
    d = discovery.DEFAULTS
    p = argparse.ArgumentParser(
        description="Example DBMS plugin: check network requirements, "
                    "then discover the repository.")
    p.add_argument("--db-host", default=_env("PLUGIN_DB_HOST", d["db_host"]))
    p.add_argument("--db-port", type=int,
                   default=int(_env("PLUGIN_DB_PORT", d["db_port"])))
    p.add_argument("--api-url", default=_env("PLUGIN_API_URL", d["api_url"]))
    p.add_argument("--timeout", type=float,
                   default=float(_env("PLUGIN_TIMEOUT", d["timeout"])))
    p.add_argument("--ca-file", default=_env("PLUGIN_CA_FILE", d["ca_file"]))
    p.add_argument("--db-proxy", default=_env("PLUGIN_DB_PROXY",
                                              d["db_proxy"]))
    a = p.parse_args(argv)
    if a.timeout <= 0:
        p.error("--timeout must be positive")
    if not 0 < a.db_port < 65536:
        p.error("--db-port must be 1-65535")
    return a


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    config = {
        "db_host": a.db_host,
        "db_port": a.db_port,
        "api_url": a.api_url,
        "timeout": a.timeout,
        "ca_file": a.ca_file,
        "db_proxy": a.db_proxy,
    }
    try:
        repo = discovery.repository(config)
    except discovery.NetworkRequirementsError as e:
        for line in str(e).splitlines():
            print(PREFIX + line, file=sys.stderr)
        sys.stderr.flush()
        return EXIT_UNMET
    print(PREFIX + "network requirements met", file=sys.stderr)
    print(json.dumps(repo, sort_keys=True))
    return 0


if __name__ == "__main__":
    # os._exit would skip flushing; sys.exit waits for non-daemon threads
    # only, and discovery's lookup thread is a daemon.
    sys.exit(main())
