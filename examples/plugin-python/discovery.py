"""Discovery for an example DBMS plugin, in the shape of a real engine plugin.

repository(config) is the entry point an engine calls. Before it discovers
anything it checks the plugin's network requirements:

  1. the DBMS host resolves (skipped when the connection goes through a proxy,
     which resolves the name itself);
  2. a TCP connection to the DBMS port opens and the server answers like a
     PostgreSQL server (an SSLRequest gets 'S' or 'N'), so that a firewall or
     proxy that accepts and then drops the connection is caught too;
  3. the DBMS REST API answers over HTTPS (urllib, which honours HTTPS_PROXY
     and NO_PROXY).

Every step has a timeout: the plugin never hangs on a restricted network. When
a requirement is not met, repository() raises NetworkRequirementsError listing
each unmet requirement and the policy rule a customer must add to let it
through, e.g.

  cannot reach db.corp.example:5432 (connection refused within 3s): ask your
  administrator to allow `- {host: db.corp.example, ports: [5432]}` in the
  egress policy

Standard library only; runs on Python 3 and Python 2.7.
"""

from __future__ import absolute_import, division, print_function

import errno
import json
import socket
import ssl
import struct
import threading

try:  # Python 3
    from urllib.error import HTTPError, URLError
    from urllib.parse import urlsplit
    from urllib.request import (HTTPSHandler, ProxyHandler, Request,
                                build_opener, getproxies, proxy_bypass)
except ImportError:  # Python 2.7
    from urllib import getproxies, proxy_bypass
    from urllib2 import (HTTPError, HTTPSHandler, ProxyHandler, Request,
                         URLError, build_opener)
    from urlparse import urlsplit

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


class NetworkRequirementsError(Exception):
    """Raised when the network does not let the plugin reach what it needs.

    problems is a list of (requirement, message) pairs, one per unmet
    requirement.
    """

    def __init__(self, problems):
        self.problems = list(problems)
        lines = ["%d network requirement%s not met:" % (
            len(self.problems), "" if len(self.problems) == 1 else "s")]
        for what, msg in self.problems:
            lines.append("  - %s: %s" % (what, msg))
        Exception.__init__(self, "\n".join(lines))


def allow_rule(host, port):
    """The policy rule (one line of YAML) that lets host:port through."""
    if _is_ip(host):
        bits = 128 if ":" in host else 32
        return "- {cidr: %s/%d, ports: [%d]}" % (host, bits, port)
    return "- {host: %s, ports: [%d]}" % (host.lower().rstrip("."), port)


def _ask(host, port):
    return ("ask your administrator to allow `%s` in the egress policy"
            % allow_rule(host, port))


def _is_ip(host):
    for family in (socket.AF_INET, getattr(socket, "AF_INET6", None)):
        if family is None:
            continue
        try:
            socket.inet_pton(family, host)
            return True
        except (socket.error, ValueError):
            pass
    return False


def _secs(t):
    return ("%g" % t) + "s"


def _hostport(host, port):
    if ":" in host:
        return "[%s]:%d" % (host, port)
    return "%s:%d" % (host, port)


def resolve(host, port, timeout):
    """getaddrinfo with a timeout (getaddrinfo itself has none)."""
    result = {}

    def lookup():
        try:
            result["addrs"] = socket.getaddrinfo(host, port, 0,
                                                 socket.SOCK_STREAM)
        except Exception as e:  # reported to the caller below
            result["error"] = e

    t = threading.Thread(target=lookup)
    t.daemon = True  # a stuck lookup must not keep the process alive
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise _Unmet("cannot resolve %s (no answer within %s): %s"
                     % (host, _secs(timeout), _ask(host, port)))
    if "error" in result:
        raise _Unmet("cannot resolve %s (%s): %s"
                     % (host, _describe(result["error"], timeout),
                        _ask(host, port)))
    return result["addrs"]


class _Unmet(Exception):
    """One unmet requirement; the message is what the customer reads."""


def _describe(e, timeout):
    """A short, stable description of a socket-level failure."""
    if isinstance(e, socket.timeout) or "timed out" in str(e):
        # Python 2.7 reports a TLS read timeout as ssl.SSLError("The read
        # operation timed out"), not socket.timeout.
        return "no answer within %s" % _secs(timeout)
    if isinstance(e, socket.gaierror):
        return "name lookup failed: %s" % (e.args[-1] if e.args else e)
    code = getattr(e, "errno", None)
    if code == errno.ECONNREFUSED:
        return "connection refused within %s" % _secs(timeout)
    if code in (errno.ECONNRESET, errno.EPIPE):
        return "connection reset"
    if code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "no route to host"
    if code == errno.ETIMEDOUT:
        return "no answer within %s" % _secs(timeout)
    return str(e) or e.__class__.__name__


def _recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _connect(addrs, timeout):
    """Connect to the first of the resolved addrs that answers.

    Unlike socket.create_connection it does not resolve the name again:
    getaddrinfo has no timeout, resolve() bounds it once.
    """
    err = None
    for family, socktype, proto, _, sockaddr in addrs:
        sock = socket.socket(family, socktype, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except Exception as e:
            err = e
            sock.close()
    raise err or socket.error("no address to connect to")


def _connect_via_proxy(proxy, host, port, timeout):
    """Open a CONNECT tunnel to host:port through an HTTP proxy URL."""
    u = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    phost, pport = u.hostname, u.port or 3128
    try:
        sock = socket.create_connection((phost, pport), timeout)
    except Exception as e:
        raise _Unmet("cannot reach the proxy %s (%s)"
                     % (_hostport(phost, pport), _describe(e, timeout)))
    target = _hostport(host, port)
    try:
        sock.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                      % (target, target)).encode("ascii"))
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    except Exception as e:
        sock.close()
        raise _Unmet("cannot reach %s through the proxy %s (%s): %s"
                     % (target, _hostport(phost, pport),
                        _describe(e, timeout), _ask(host, port)))
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = lines[0].strip()
    parts = status.split(" ", 2)
    if len(parts) < 2 or parts[1] != "200":
        sock.close()
        # egress says why in headers; the id finds the line in its log.
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        why = ""
        if headers.get("x-egress-reason"):
            why = " (egress: %s, id %s)" % (headers["x-egress-reason"],
                                           headers.get("x-egress-id", "?"))
        raise _Unmet("cannot reach %s: the proxy %s answered \"%s\"%s: %s"
                     % (target, _hostport(phost, pport),
                        status or "nothing", why, _ask(host, port)))
    # Bytes after the header belong to the tunnel; a PostgreSQL server says
    # nothing until asked, so there are none to keep.
    return sock


def check_database(host, port, timeout, db_proxy=""):
    """Check that host:port answers like a PostgreSQL server."""
    target = _hostport(host, port)
    if db_proxy:
        sock = _connect_via_proxy(db_proxy, host, port, timeout)
    else:
        addrs = resolve(host, port, timeout)
        try:
            sock = _connect(addrs, timeout)
        except Exception as e:
            raise _Unmet("cannot reach %s (%s): %s"
                         % (target, _describe(e, timeout), _ask(host, port)))
    try:
        sock.settimeout(timeout)
        sock.sendall(_SSL_REQUEST)
        answer = _recv_exact(sock, 1)
    except Exception as e:
        raise _Unmet("cannot reach %s (connected, but then %s before the "
                     "database said a word): %s"
                     % (target, _describe(e, timeout), _ask(host, port)))
    finally:
        sock.close()
    if not answer:
        raise _Unmet("cannot reach %s (connected, then the connection was "
                     "closed before the database answered; a proxy or "
                     "firewall on the way dropped it): %s"
                     % (target, _ask(host, port)))
    if answer not in (b"S", b"N"):
        raise _Unmet("%s answered %r, not like a PostgreSQL server: check "
                     "the host and port" % (target, answer))


def _proxy_for(url):
    """The proxy urllib will use for url, or "" (for messages only)."""
    u = urlsplit(url)
    proxies = getproxies()
    proxy = proxies.get(u.scheme, "")
    if proxy and u.hostname and proxy_bypass(u.hostname):
        return ""
    return proxy


def check_api(url, timeout, ca_file=""):
    """GET url over HTTPS; return the decoded JSON body (or None)."""
    u = urlsplit(url)
    host = u.hostname or ""
    port = u.port or (443 if u.scheme == "https" else 80)
    if ca_file:
        ctx = ssl.create_default_context(cafile=ca_file)
    else:
        ctx = ssl.create_default_context()  # honours SSL_CERT_FILE
    # ProxyHandler() reads HTTP(S)_PROXY and NO_PROXY like urlopen does.
    opener = build_opener(ProxyHandler(), HTTPSHandler(context=ctx))
    proxy = _proxy_for(url)
    via = " through the proxy %s" % proxy if proxy else ""
    req = Request(url, headers={"Accept": "application/json",
                                "User-Agent": "example-plugin/1.0"})
    try:
        resp = opener.open(req, timeout=timeout)
        try:
            body = resp.read(1 << 20)
        finally:
            resp.close()
    except HTTPError as e:
        raise _Unmet("%s answered HTTP %d %s%s: the network is fine, the "
                     "API is not" % (url, e.code, e.reason, via))
    except (URLError, socket.error, ssl.SSLError, ValueError) as e:
        reason = getattr(e, "reason", e)
        text = str(reason)
        if "Tunnel connection failed" in text:
            # urllib's only report of a proxy refusing CONNECT.
            raise _Unmet("cannot reach %s%s (the proxy refused: %s): %s"
                         % (_hostport(host, port), via,
                            text.split(":", 1)[-1].strip(), _ask(host, port)))
        if "timed out" not in text and (isinstance(reason, ssl.SSLError) or
                                        "CERTIFICATE" in text.upper()):
            raise _Unmet("TLS with %s failed%s (%s): if a proxy intercepts "
                         "TLS, pass its CA with --ca-file"
                         % (_hostport(host, port), via, text))
        raise _Unmet("cannot reach %s%s (%s): %s"
                     % (_hostport(host, port), via,
                        _describe(reason, timeout), _ask(host, port)))
    try:
        return json.loads(body.decode("utf-8"))
    except ValueError:
        return None


def check_requirements(config):
    """Check every network requirement; raise NetworkRequirementsError."""
    c = dict(DEFAULTS)
    c.update(config or {})
    timeout = float(c["timeout"])
    problems = []
    api = None
    db = "database %s" % _hostport(c["db_host"], int(c["db_port"]))
    try:
        check_database(c["db_host"], int(c["db_port"]), timeout,
                       c.get("db_proxy") or "")
    except _Unmet as e:
        problems.append((db, str(e)))
    try:
        api = check_api(c["api_url"], timeout, c.get("ca_file") or "")
    except _Unmet as e:
        problems.append(("REST API %s" % c["api_url"], str(e)))
    if problems:
        raise NetworkRequirementsError(problems)
    return api


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
        repo["version"] = api.get("version")
    return repo
