"""Discovery for an example DBMS plugin, in the shape of a real engine plugin.

repository(config) is the entry point an engine calls. Before it discovers
anything it checks the plugin's network requirements with
egress_requirements.py (vendored next to this file; the defaults are listed
in requirements.json, which `egress check --requirements` reads too):

  1. the DBMS port, tcp, and the DBMS REST API, https: each gets one outcome,
     ok, refused (by the egress policy, with the rule to add), dns_failure,
     unreachable or tls_failure, all within one time bound;
  2. when the DBMS port is reachable, a PostgreSQL SSLRequest on the path
     the database driver takes (direct, or the CONNECT proxy of --db-proxy)
     gets 'S' or 'N': egress_requirements only knows a connection or tunnel
     opened, and a wrong port, a server that is not PostgreSQL, or a plain
     HTTP proxy the driver cannot use would pass that.

When a requirement is not met, repository() raises NetworkRequirementsError,
whose message, action and output say what is unreachable and what to do:
the rule to add only when egress's policy refused it.

Standard library only; runs on Python 3 and Python 2.7.
"""

from __future__ import absolute_import, division, print_function

import json
import os
import socket
import ssl
import struct
import sys

try:  # Python 3
    from urllib.error import HTTPError, URLError
    from urllib.parse import urlsplit
    from urllib.request import (HTTPSHandler, ProxyHandler, Request,
                                build_opener)
except ImportError:  # Python 2.7
    from urllib2 import (HTTPError, HTTPSHandler, ProxyHandler, Request,
                         URLError, build_opener)
    from urlparse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import egress_requirements  # noqa: E402
from egress_requirements import NetworkRequirementsError  # noqa: E402,F401

PLUGIN = "example-dbms"

DEFAULTS = {
    "db_host": "db.corp.example",
    "db_port": 5432,
    "api_url": "https://api.example.com/v1/status",
    "timeout": 3.0,
    "ca_file": "",
    "db_proxy": "",
}

# PostgreSQL SSLRequest: length 8, code 80877103. A server answers one byte,
# 'S' or 'N', before anything else (PostgreSQL protocol, "SSL Session
# Encryption").
_SSL_REQUEST = struct.pack("!II", 8, 80877103)


class _Unmet(Exception):
    """The database answered wrongly or not at all; the detail says how."""


class _APIAnswered(Exception):
    """The REST API answered with an HTTP error status."""


class _EgressRefused(Exception):
    """egress refused the request itself (its 403): a request rule (http:)
    of the customer's policy, not the API. refusal is what egress said
    (egress_requirements.Refusal)."""

    def __init__(self, refusal):
        Exception.__init__(self, refusal.detail)
        self.refusal = refusal


def _hostport(host, port):
    if ":" in host:
        return "[%s]:%d" % (host, port)
    return "%s:%d" % (host, port)


def _recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _connect_via_proxy(proxy, host, port, timeout):
    """Open a CONNECT tunnel to host:port through an HTTP proxy URL."""
    u = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    sock = socket.create_connection((u.hostname, u.port or 3128), timeout)
    target = _hostport(host, port)
    sock.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                  % (target, target)).encode("ascii"))
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    status = head.split(b"\r\n", 1)[0].decode("latin-1").strip()
    if status.split(" ")[1:2] != ["200"]:
        sock.close()
        raise _Unmet("the proxy %s answered %r to CONNECT" % (proxy, status))
    # Bytes after the header belong to the tunnel; a PostgreSQL server says
    # nothing until asked, so there are none to keep.
    return sock


def check_database(host, port, timeout, db_proxy=""):
    """Check that host:port answers like a PostgreSQL server, on the path
    the driver takes (db_proxy's CONNECT tunnel, or a direct connection)."""
    path = "through %s" % db_proxy if db_proxy else "directly"
    try:
        if db_proxy:
            sock = _connect_via_proxy(db_proxy, host, port, timeout)
        else:
            sock = socket.create_connection((host, port), timeout)
        try:
            sock.settimeout(timeout)
            sock.sendall(_SSL_REQUEST)
            answer = _recv_exact(sock, 1)
        finally:
            sock.close()
    except _Unmet as e:
        raise _Unmet("connecting %s as the driver does: %s" % (path, e))
    except Exception as e:
        raise _Unmet("connecting %s as the driver does, the database did "
                     "not answer a PostgreSQL SSLRequest (%s)"
                     % (path, egress_requirements.errtext(e)))
    if not answer:
        raise _Unmet("connecting %s as the driver does, the connection was "
                     "closed before the database answered" % path)
    if answer not in (b"S", b"N"):
        raise _Unmet("connecting %s as the driver does, it answered %r, not "
                     "like a PostgreSQL server" % (path, answer))


def requirements(config):
    """The plugin's network requirements for config (requirements.json
    lists them for the defaults)."""
    u = urlsplit(config["api_url"])
    # The database is checked on the path its driver takes: through
    # --db-proxy's CONNECT when given, else a direct connect (which egress
    # run's transparent path, or a host's redirect, sees), never through
    # HTTPS_PROXY, which the driver ignores.
    db_proxy = config.get("db_proxy") or None
    return [
        egress_requirements.Requirement(
            config["db_host"], int(config["db_port"]), "tcp", "PostgreSQL",
            via=None if db_proxy else egress_requirements.DIRECT,
            proxy=db_proxy),
        # The API client is urllib's: the environment's proxy, if any,
        # for an IP-literal URL too.
        egress_requirements.Requirement(
            u.hostname or "", u.port or (443 if u.scheme == "https" else 80),
            u.scheme if u.scheme in ("http", "https") else "https",
            "DBMS REST API", via=egress_requirements.ENV),
    ]


def check_api(url, timeout, ca_file=""):
    """GET url; return the decoded JSON body (or None)."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    # ProxyHandler() reads HTTP(S)_PROXY and NO_PROXY like urlopen does.
    opener = build_opener(ProxyHandler(), HTTPSHandler(context=ctx))
    req = Request(url, headers={"Accept": "application/json",
                                "User-Agent": "example-plugin/1.0"})
    try:
        resp = opener.open(req, timeout=timeout)
        try:
            body = resp.read(1 << 20)
        finally:
            resp.close()
    except HTTPError as e:
        try:
            text = e.read(1 << 16).decode("utf-8", "replace")
        except Exception:
            text = ""  # the status line and headers say enough
        refusal = egress_requirements.egress_refusal(
            e.code, str(e.reason), getattr(e, "headers", None) or {}, text)
        if refusal is not None:
            raise _EgressRefused(refusal)
        raise _APIAnswered("%s answered HTTP %d %s" % (url, e.code, e.reason))
    except (URLError, socket.error, ssl.SSLError, ValueError) as e:
        why = getattr(e, "reason", e)
        err = _Unmet("GET %s failed: %s" % (
            url, egress_requirements.errtext(why)))
        # ssl.CertificateError is not an SSLError on Python 2.7 (a
        # hostname mismatch); both mean the TLS check failed, not the
        # network.
        err.tls = isinstance(why, (ssl.SSLError, getattr(ssl, "CertificateError", ssl.SSLError)))
        raise err
    try:
        return json.loads(body.decode("utf-8"))
    except ValueError:
        return None


def check_requirements(config):
    """Check every network requirement; raise NetworkRequirementsError.

    Returns the REST API's status document.
    """
    c = dict(DEFAULTS)
    c.update(config or {})
    timeout = float(c["timeout"])
    reqs = requirements(c)
    results = egress_requirements.check(reqs, timeout, c["ca_file"] or None)
    db = results[0]
    if db.ok:
        try:
            check_database(c["db_host"], int(c["db_port"]), timeout,
                           c.get("db_proxy") or "")
        except _Unmet as e:
            results[0] = egress_requirements.Result(
                db.requirement, egress_requirements.UNREACHABLE, str(e))
    egress_requirements.raise_unmet(results, PLUGIN)
    try:
        return check_api(c["api_url"], timeout, c["ca_file"])
    except _EgressRefused as e:
        # A request rule refused this call: the customer's policy
        # decides, and the rule to add comes with it, where egress says
        # it goes (under http: of the host's rule).
        f = e.refusal
        detail = f.detail
        if f.egress_id:
            detail += ", egress id " + f.egress_id
        results[1] = egress_requirements.Result(
            results[1].requirement, egress_requirements.REFUSED, detail,
            rule=f.rule, egress_id=f.egress_id, where=f.where)
        egress_requirements.raise_unmet(results, PLUGIN)
    except _APIAnswered as e:
        # The network let us through and the API answered: no rule, and
        # no "is it up?", will help; its URL or state is wrong.
        raise egress_requirements.NetworkRequirementsError(
            "%s: the DBMS REST API refused the request" % PLUGIN,
            "check the API URL (--api-url) and the API's state; this is "
            "not an egress policy matter", str(e), results)
    except _Unmet as e:
        # The network let us through (the requirement is ok): the API
        # itself failed, no rule will help.
        outcome = egress_requirements.UNREACHABLE
        if getattr(e, "tls", False):
            outcome = egress_requirements.TLS_FAILURE
        results[1] = egress_requirements.Result(
            results[1].requirement, outcome, str(e))
        egress_requirements.raise_unmet(results, PLUGIN)


def repository(config=None):
    """The plugin's entry point: describe the DBMS repository.

    Raises NetworkRequirementsError before doing anything else when the
    network does not let the plugin reach the DBMS.
    """
    c = dict(DEFAULTS)
    c.update(config or {})
    api = check_requirements(c)
    repo = {
        "type": "postgresql",
        "host": c["db_host"],
        "port": int(c["db_port"]),
        "api": c["api_url"],
    }
    if isinstance(api, dict):
        repo["version"] = api_version(api)
    return repo


def api_version(doc):
    """The version in the API's status document: {"version": V}, or
    nested as PyPI's JSON API has it ({"info": {"version": V}}, the
    public API docker-compose.yml stands in for the vendor's); None if
    neither."""
    if doc.get("version") is not None:
        return doc.get("version")
    info = doc.get("info")
    if isinstance(info, dict):
        return info.get("version")
    return None
