"""Check a plugin's network requirements and say, for each, why it fails.

Copy this one file next to your plugin's code and call it from its discovery
entry point. Standard library only; runs unchanged on Python 2.7 and 3.

    import egress_requirements
    egress_requirements.require("requirements.json")   # or a list of dicts

The manifest is the file egress reads with `egress check --requirements`:

    {"plugin": "example-dbms",
     "requirements": [
       {"host": "api.example.com", "port": 443, "protocol": "https",
        "purpose": "DBMS REST API", "required": true},
       {"host": "10.1.2.3", "port": 5432, "via": "direct"}]}

An entry may name a request instead of a destination, as egress decides
requests to a host with http: request rules:

       {"url": "https://api.vendor.example/v1/license", "method": "GET"}

(host, port and protocol come from the URL; method defaults to GET). It is
checked by making that request, with an empty body, through the same path
(so a POST check does reach the origin): ok when the origin answered,
whatever its status; refused when egress answered 403, with its
explanation and the request rule to add.

protocol is tcp, tls, http or https (default: https for 443, http for 80,
tcp otherwise); purpose is optional; required defaults to true. via says
which path the plugin's own client takes, and so which one is checked:
direct (a raw connect, as database drivers and httplib.HTTPConnection(ip,
5432) do; under `egress run` or a host's redirect that is the transparent
path) or proxy (HTTPS_PROXY, or HTTP_PROXY for http). An IP-literal host
defaults to direct; a name to the proxy when the environment names one.

Each requirement gets exactly one outcome:

  ok           reached (tcp: connected; tls/https: TLS handshake verified;
               http: the origin answered)
  refused      egress's policy refused it: a 403 from the proxy, a refused
               connect() under `egress run` (EGRESS_RUN=1) that egress's
               proxy (EGRESS_PROXY) also refuses, or NXDOMAIN with
               egress's RFC 8914 Extended DNS Error; comes with the rule an
               administrator must add, where egress says it goes: under
               allow:, or for a request rule under http: of the host's
               rule (egress_refusal reads egress's 403)
  dns_failure  the name does not resolve for a reason that is not the policy
               (it does not exist, SERVFAIL, no answer)
  unreachable  allowed, but the destination refused, reset or did not answer
               (a 502/504 from the proxy, a refused connect elsewhere)
  tls_failure  the TLS handshake or certificate verification failed
  proxy_failure
               the proxy itself failed: it is down, wants credentials or
               refused them (407), or refused by its own rules (a 403
               without egress's X-Egress-* headers): not egress's policy

A policy rule is given only for `refused`: telling a customer to add a rule
that already exists, when the database is down, wastes everybody's day.

Proxies are taken from the environment as urllib does: HTTPS_PROXY for tcp,
tls and https requirements (a CONNECT tunnel, then TLS through it), HTTP_PROXY
for http (an absolute-form request), NO_PROXY to go direct; credentials in
the proxy's URL (http://USER:PASSWORD@HOST:PORT) are sent to it, and never
printed. The whole check is bounded by one timeout: every socket operation
gets what is left of it. When it runs out while a proxy is still connecting
(egress tries for timeouts.dial, 10s by default), the destination is the
one that is silent, and the outcome says so.

CLI: python egress_requirements.py [--timeout S] [--ca-file F] FILE
prints one line per requirement; exit 0 when every required one is ok, 3
when one is not, 2 on a bad manifest.
"""

from __future__ import absolute_import, division, print_function

import errno
import json
import os
import random
import re
import socket
import ssl
import struct
import sys
import threading
import time

try:  # Python 3
    from urllib.parse import urlsplit
    from urllib.request import getproxies_environment, proxy_bypass_environment
except ImportError:  # Python 2.7
    from urllib import getproxies_environment, proxy_bypass_environment
    from urlparse import urlsplit

try:
    string_types = (str, unicode)  # noqa: F821 (Python 2.7)
except NameError:
    string_types = (str,)

__all__ = ["OK", "REFUSED", "DNS_FAILURE", "UNREACHABLE", "TLS_FAILURE",
           "PROXY_FAILURE", "DIRECT", "PROXY", "ENV",
           "Requirement", "Result", "NetworkRequirementsError", "Refusal",
           "egress_refusal", "load",
           "check", "require", "raise_unmet", "main"]

OK = "ok"
REFUSED = "refused"
DNS_FAILURE = "dns_failure"
UNREACHABLE = "unreachable"
TLS_FAILURE = "tls_failure"
PROXY_FAILURE = "proxy_failure"

# Where a rule to add goes when egress says no more: under allow:.
ALLOW = "under allow:"

# The paths a requirement may say the plugin takes (its "via"). ENV, for
# the Python API only, is urllib's choice for any host, IP literals too:
# the environment's proxy unless NO_PROXY exempts the host, else direct.
DIRECT = "direct"
PROXY = "proxy"
ENV = "env"

PROTOCOLS = ("tcp", "tls", "http", "https")
DEFAULT_TIMEOUT = 10.0

# Under `egress run` a settled TCP connection may still be cut by egress
# when the destination it was allowed to reach refuses: egress's transparent
# path peeks 300 ms for a name, then dials. A raw tcp check waits this long
# for that close before calling the connection ok.
_SETTLE = 1.0

_now = getattr(time, "monotonic", time.time)


class Requirement(object):
    """One destination the plugin needs."""

    def __init__(self, host, port, protocol=None, purpose="", required=True,
                 via=None, proxy=None, url="", method=""):
        """via: DIRECT, PROXY, ENV (as urllib: the environment's proxy, if
        any) or None (an IP literal: DIRECT; a name: ENV). proxy: the proxy
        URL to check through (a driver's own proxy setting) instead of the
        environment's; it implies via PROXY. url and method: a request
        (Requirement.request builds one from a URL)."""
        self.url = url
        self.method = method or ("GET" if url else "")
        self.host = host
        self.port = port
        self.protocol = protocol or default_protocol(port)
        self.purpose = purpose or ""
        self.required = required
        if via not in (None, DIRECT, PROXY, ENV):
            raise ValueError("via must be %r, %r or %r" % (DIRECT, PROXY, ENV))
        if proxy and via == DIRECT:
            raise ValueError("a proxy with via %r" % DIRECT)
        self.via = PROXY if proxy else via
        self.proxy = proxy or ""

    @classmethod
    def request(cls, url, method="GET", purpose="", required=True, via=None,
                proxy=None, where="requirement"):
        """A requirement that is a request: method url (http or https)."""
        if not isinstance(url, string_types):
            raise ValueError("%s: url must be a string" % where)
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError("%s: url must be http:// or https://HOST/..."
                             % where)
        if "@" in u.netloc or u.fragment or "#" in url:
            raise ValueError("%s: url must hold no credentials and no "
                             "#fragment" % where)
        if not isinstance(method, string_types) or \
                not re.match(r"^[A-Z][A-Z-]*$", method):
            raise ValueError("%s: method must be an upper-case HTTP method "
                             "such as GET" % where)
        try:
            port = u.port or default_port(u.scheme)
        except ValueError:
            raise ValueError("%s: url has a bad port" % where)
        return cls(u.hostname, port, u.scheme, purpose, required, via, proxy,
                   url=url, method=method)

    def request_target(self, absolute=False):
        """The request line's target: the path and query, or the URL."""
        if absolute:
            return self.url
        u = urlsplit(self.url)
        return (u.path or "/") + ("?" + u.query if u.query else "")

    def host_header(self):
        return urlsplit(self.url).netloc

    def what(self):
        """What the requirement is, as printed: host:port or METHOD URL."""
        if self.url:
            return "%s %s" % (self.method, self.url)
        return self.target()

    def path(self):
        """DIRECT, PROXY, or ENV: the proxy if the environment names one."""
        if self.via is None:
            return DIRECT if _is_ip(self.host) else ENV
        return self.via

    @classmethod
    def from_dict(cls, d, where="requirement"):
        if not isinstance(d, dict):
            raise ValueError("%s: not an object" % where)
        unknown = sorted(set(d) - set(("host", "port", "protocol", "purpose",
                                       "required", "via", "url", "method")))
        if unknown:
            raise ValueError("%s: unknown field %s" % (where, unknown[0]))
        # Fields every requirement may carry, checked once.
        purpose = d.get("purpose", "")
        if not isinstance(purpose, string_types):
            raise ValueError("%s: purpose must be a string" % where)
        required = d.get("required", True)
        if not isinstance(required, bool):
            raise ValueError("%s: required must be true or false" % where)
        via = d.get("via")
        if via is not None and via not in (DIRECT, PROXY):
            raise ValueError("%s: via must be %s or %s" % (where, DIRECT,
                                                           PROXY))
        if "url" in d:
            both = sorted(set(d) & set(("host", "port", "protocol")))
            if both:
                raise ValueError("%s: a requirement with url takes its %s "
                                 "from the URL" % (where, both[0]))
            return cls.request(d["url"], d.get("method", "GET"), purpose,
                               required, via, where=where)
        if "method" in d:
            raise ValueError("%s: method needs a url" % where)
        host, port = d.get("host"), d.get("port")
        if not isinstance(host, string_types) or not host.strip():
            raise ValueError("%s: host must be a non-empty string" % where)
        if (isinstance(port, bool) or not isinstance(port, int) or
                not 0 < port < 65536):
            raise ValueError("%s: port must be a number from 1 to 65535"
                             % where)
        protocol = d.get("protocol")
        if protocol is not None and protocol not in PROTOCOLS:
            raise ValueError("%s: protocol must be one of %s"
                             % (where, ", ".join(PROTOCOLS)))
        return cls(host.strip(), port, protocol, purpose, required, via)

    def target(self):
        return _hostport(self.host, self.port)

    def __repr__(self):
        return "Requirement(%r, %d, %r, via=%r)" % (self.host, self.port,
                                                    self.protocol, self.via)


def default_protocol(port):
    return {443: "https", 80: "http"}.get(port, "tcp")


def default_port(scheme):
    return {"https": 443, "http": 80}[scheme]


class Result(object):
    """The outcome of one requirement.

    outcome is one of OK, REFUSED, DNS_FAILURE, UNREACHABLE, TLS_FAILURE;
    detail says what happened; rule, for REFUSED only, is the line to add
    where where says (ALLOW, "under allow:", or for a request rule "under
    http: of the rule at FILE:LINE"); egress_id is the id of egress's log
    line when it gave one.
    """

    def __init__(self, requirement, outcome, detail, rule=None,
                 egress_id=None, proxy_used="", where=ALLOW):
        self.requirement = requirement
        self.outcome = outcome
        self.detail = detail
        self.rule = rule
        # Where rule goes: ALLOW, or what egress said for a request rule
        # ("under http: of the rule at FILE:LINE").
        self.where = where or ALLOW
        self.egress_id = egress_id
        # The proxy checked through (credentials hidden), "" for direct.
        self.proxy_used = proxy_used

    @property
    def ok(self):
        return self.outcome == OK

    def line(self):
        r = self.requirement
        what = "%s %s" % (r.what(), r.protocol)
        if r.purpose:
            what += " (%s)" % r.purpose
        if not r.required:
            what += " [optional]"
        text = "%-11s %s: %s" % (self.outcome, what, self.detail)
        if self.rule and self.where != ALLOW:
            text += "; to allow: add %s: %s" % (self.where, self.rule)
        elif self.rule:
            text += "; to allow: " + self.rule
        return text

    def __repr__(self):
        return "Result(%r, %r)" % (self.requirement, self.outcome)


class NetworkRequirementsError(Exception):
    """Required destinations cannot be reached.

    message: what is unreachable, one line; action: what to do about it;
    output: one line per requirement; results: every Result.
    """

    def __init__(self, message, action, output, results):
        Exception.__init__(self, message)
        self.message = message
        self.action = action
        self.output = output
        self.results = results

    def __str__(self):
        return "%s\n%s\n%s" % (self.message, self.output, self.action)


# --- input ------------------------------------------------------------------

def load(path):
    """Read a manifest; return (plugin name, [Requirement])."""
    with open(path) as f:
        try:
            doc = json.load(f)
        except ValueError as e:
            raise ValueError("%s: not JSON: %s" % (path, e))
    if not isinstance(doc, dict) or not isinstance(doc.get("requirements"),
                                                   list):
        raise ValueError("%s: want an object with a requirements list" % path)
    unknown = sorted(set(doc) - set(("plugin", "requirements")))
    if unknown:
        raise ValueError("%s: unknown field %s" % (path, unknown[0]))
    plugin = doc.get("plugin", "")
    if not isinstance(plugin, string_types):
        raise ValueError("%s: plugin must be a string" % path)
    reqs = [Requirement.from_dict(d, "%s: requirements[%d]" % (path, i))
            for i, d in enumerate(doc["requirements"])]
    return plugin, reqs


def _requirements(reqs):
    out = []
    for i, r in enumerate(reqs):
        if not isinstance(r, Requirement):
            r = Requirement.from_dict(r, "requirements[%d]" % i)
        out.append(r)
    return out


# --- the check --------------------------------------------------------------

def check(requirements, timeout=DEFAULT_TIMEOUT, ca_file=None):
    """Check every requirement at once; return a Result for each, in order.

    Never raises for a network problem and never takes much longer than
    timeout seconds in all.
    """
    reqs = _requirements(requirements)
    deadline = _now() + float(timeout)
    env = _Env(ca_file, timeout)
    slots = [{"stage": "starting"} for _ in reqs]
    threads = []
    for req, slot in zip(reqs, slots):
        t = threading.Thread(target=_run_one, args=(req, deadline, env, slot))
        t.daemon = True  # a stuck getaddrinfo must not keep the process up
        t.start()
        threads.append(t)
    results = []
    for req, slot, t in zip(reqs, slots, threads):
        # Socket operations time out by themselves at the deadline; the
        # grace lets them report what they were doing.
        t.join(max(0.0, deadline - _now()) + 0.5)
        res = slot.get("result")
        if res is None:
            stage = slot["stage"]
            outcome = DNS_FAILURE if stage.startswith("resolving") else \
                UNREACHABLE
            res = Result(req, outcome, "no answer within %s while %s"
                         % (_secs(timeout), stage))
        results.append(res)
    return results


def require(requirements, timeout=DEFAULT_TIMEOUT, ca_file=None, plugin=""):
    """Check requirements (a manifest path or a list); return the Results.

    Raises NetworkRequirementsError when a required one is not ok; optional
    ones are only reported in the Results.
    """
    if isinstance(requirements, string_types):
        plugin, requirements = load(requirements)
    results = check(requirements, timeout, ca_file)
    raise_unmet(results, plugin)
    return results


def raise_unmet(results, plugin=""):
    """Raise NetworkRequirementsError if a required Result is not ok.

    For plugins that check more on their own and replace a Result.
    """
    failed = [r for r in results if not r.ok and r.requirement.required]
    if failed:
        raise NetworkRequirementsError(_message(plugin, failed, results),
                                       _action(failed),
                                       "\n".join(r.line() for r in results),
                                       results)


def _message(plugin, failed, results):
    required = len([r for r in results if r.requirement.required])
    names = []
    for r in failed:
        if r.requirement.what() not in names:
            names.append(r.requirement.what())
    names = ", ".join(names)
    return "%s cannot reach %d of %d required network destination%s: %s" % (
        plugin or "the plugin", len(failed), required,
        "" if required == 1 else "s", names)


_ADVICE = {
    DNS_FAILURE: "check that %s resolve%s in DNS (the name is right, the DNS "
                 "servers answer); this is not an egress policy matter",
    UNREACHABLE: "check that %s %s up and listening and that the host and "
                 "port are right; this is not an egress policy matter",
    TLS_FAILURE: "check the certificate of %s: if a proxy intercepts TLS, "
                 "pass its CA file (ca_file or SSL_CERT_FILE)",
    PROXY_FAILURE: "check the proxy %s: that it runs at that address, and "
                   "its credentials (in its URL: http://USER:PASSWORD@HOST:"
                   "PORT); a refusal by a proxy that is not egress is for "
                   "whoever runs it to lift; this is not an egress policy "
                   "matter",
}


def _action(failed):
    parts = []
    places = []  # [(where, [rule])], in the order first met
    for r in failed:
        if r.outcome != REFUSED or not r.rule:
            continue
        rules = dict(places).get(r.where)
        if rules is None:
            rules = []
            places.append((r.where, rules))
        if r.rule not in rules:
            rules.append(r.rule)
    for where, rules in places:
        parts.append("ask the administrator to add %s in the egress "
                     "policy:\n" % where +
                     "\n".join("  " + rule for rule in rules))
    for outcome in (PROXY_FAILURE, DNS_FAILURE, UNREACHABLE, TLS_FAILURE):
        these = [r.requirement for r in failed if r.outcome == outcome]
        if not these:
            continue
        if outcome == PROXY_FAILURE:
            proxies = _unique(r.proxy_used for r in failed
                              if r.outcome == outcome and r.proxy_used)
            parts.append(_ADVICE[outcome] % (", ".join(proxies) or
                                             "the proxy"))
        elif outcome == DNS_FAILURE:
            names = ", ".join(sorted(set(r.host for r in these)))
            one = len(set(r.host for r in these)) == 1
            parts.append(_ADVICE[outcome] % (names, "s" if one else ""))
        elif outcome == UNREACHABLE:
            targets = _unique(r.target() for r in these)
            parts.append(_ADVICE[outcome] % (", ".join(targets),
                                             "is" if len(targets) == 1 else "are"))
        else:
            parts.append(_ADVICE[outcome] %
                         ", ".join(_unique(r.target() for r in these)))
    return "\n".join(parts)


def _unique(items):
    """items without repeats, in order."""
    out = []
    for i in items:
        if i not in out:
            out.append(i)
    return out


class _Env(object):
    """What the environment says: proxies, CA file, whether in egress run."""

    def __init__(self, ca_file, timeout=DEFAULT_TIMEOUT):
        self.proxies = getproxies_environment()
        self.ca_file = ca_file or os.environ.get("SSL_CERT_FILE") or None
        self.egress_run = os.environ.get("EGRESS_RUN") == "1"
        self.timeout = float(timeout)

    def proxy_for(self, req):
        """The proxy URL req is checked through, "" for a direct check."""
        path = req.path()
        if path == DIRECT:
            return ""
        if req.proxy:
            return req.proxy
        scheme = "http" if req.protocol == "http" else "https"
        proxy = self.proxies.get(scheme, "")
        if not proxy:
            if path == PROXY:
                raise _Failed(PROXY_FAILURE, "the plugin reaches %s through "
                              "a proxy (via: proxy), but %s is not set"
                              % (req.target(), "HTTP_PROXY" if scheme ==
                                 "http" else "HTTPS_PROXY"))
            return ""
        if path == PROXY:
            return proxy  # the plugin's client uses it, NO_PROXY or not
        try:
            bypass = proxy_bypass_environment(req.host, self.proxies)
        except TypeError:  # Python 2.7 before 2.7.13: no proxies argument
            bypass = proxy_bypass_environment(req.host)
        return "" if bypass else proxy


class _Failed(Exception):
    def __init__(self, outcome, detail, rule=None, egress_id=None,
                 where=None):
        Exception.__init__(self, detail)
        self.outcome, self.detail = outcome, detail
        self.rule, self.egress_id, self.where = rule, egress_id, where


def _run_one(req, deadline, env, slot):
    shown = ""
    try:
        proxy = env.proxy_for(req)
        shown = _redact(proxy)
        if proxy:
            detail = _via_proxy(req, proxy, deadline, env, slot)
        else:
            detail = _direct(req, deadline, env, slot)
        slot["result"] = Result(req, OK, detail, proxy_used=shown)
    except _Failed as f:
        slot["result"] = Result(req, f.outcome, f.detail, f.rule, f.egress_id,
                                proxy_used=shown, where=f.where)
    except Exception as e:  # a bug here must not hide the other results
        slot["result"] = Result(req, UNREACHABLE, "check failed: %s"
                                % _errtext(e))


def _left(deadline):
    return deadline - _now()


def _timeout_for(sock, deadline):
    left = _left(deadline)
    if left <= 0:
        raise socket.timeout("timed out")
    sock.settimeout(left)


# --- direct -----------------------------------------------------------------

def _direct(req, deadline, env, slot):
    where = " under egress run" if env.egress_run else ""
    slot["stage"] = "resolving %s" % req.host
    addrs = _resolve(req, deadline, env)
    slot["stage"] = "connecting to %s" % req.target()
    sock = _connect(req, addrs, deadline, env.egress_run)
    try:
        if req.url:
            slot["stage"] = "waiting for an answer to %s" % req.what()
            status = _request(req, sock, deadline, env)
            return "%s answered %s%s" % (req.what(), status, where)
        if req.protocol in ("tls", "https"):
            slot["stage"] = "in the TLS handshake with %s" % req.target()
            _tls(req, sock, deadline, env)
            return "TLS handshake with %s verified%s" % (req.target(), where)
        if req.protocol == "http":
            slot["stage"] = "waiting for %s to answer" % req.target()
            status = _http_head(req, sock, deadline, absolute=False)
            return "%s answered %s%s" % (req.target(), status, where)
        if env.egress_run:
            slot["stage"] = "waiting to see %s stay open" % req.target()
            _settle(req, sock, deadline)
        return "connected to %s%s" % (req.target(), where)
    finally:
        sock.close()


def _resolve(req, deadline, env):
    """getaddrinfo in a thread, as it takes no timeout of its own."""
    if _is_ip(req.host):
        family = socket.AF_INET6 if ":" in req.host else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 0, "", (req.host, req.port))]
    box = {}

    def lookup():
        try:
            box["addrs"] = socket.getaddrinfo(req.host, req.port, 0,
                                              socket.SOCK_STREAM)
        except Exception as e:
            box["error"] = e

    t = threading.Thread(target=lookup)
    t.daemon = True
    t.start()
    t.join(max(0.0, _left(deadline)))
    if t.is_alive():
        raise _Failed(DNS_FAILURE, "no answer from the name lookup of %s "
                      "within the time left" % req.host)
    if "addrs" in box:
        return box["addrs"]
    err = box["error"]
    # Ask the DNS server ourselves: getaddrinfo cannot tell egress's refusal
    # (NXDOMAIN with an Extended DNS Error) from a name that does not exist.
    why = _dns_why(req, deadline)
    if why is not None:
        raise why
    raise _Failed(DNS_FAILURE, "%s does not resolve (%s)"
                  % (req.host, _errtext(err)))


def _connect(req, addrs, deadline, refused_is_policy):
    err = None
    for family, socktype, proto, _, sockaddr in addrs:
        sock = socket.socket(family, socktype, proto)
        try:
            _timeout_for(sock, deadline)
            sock.connect(sockaddr)
            return sock
        except Exception as e:
            err = e
            sock.close()
    code = getattr(err, "errno", None)
    if code == errno.ECONNREFUSED and refused_is_policy and \
            not _destination_refused(req, deadline):
        # egress run refuses a denied connection at connect(); an allowed
        # one is refused at connect() too when the destination refuses it
        # (egress holds the SYN until the destination answered).
        raise _Failed(REFUSED, "egress run refused the connection to %s: "
                      "the egress policy does not allow it" % req.target(),
                      rule=rule_for(req.host, req.port))
    raise _Failed(UNREACHABLE, "cannot connect to %s (%s)"
                  % (req.target(), _errtext(err)))


def _destination_refused(req, deadline):
    """Under egress run: whether egress's proxy (EGRESS_PROXY) allows a
    tunnel to req, so that a refused connect() was the destination's."""
    proxy = os.environ.get("EGRESS_PROXY", "")
    if not proxy:
        return False
    u = urlsplit(proxy)
    try:
        sock = socket.create_connection((u.hostname, u.port or 80),
                                        max(0.1, _left(deadline)))
    except (socket.error, ValueError):
        return False
    try:
        _connect_tunnel(req, sock, deadline, proxy)
        return True  # it connected now: the refusal was not the policy's
    except _Failed as f:
        return f.outcome != REFUSED
    finally:
        sock.close()


def _settle(req, sock, deadline):
    """Under egress run: fail if egress cuts the connection right away."""
    wait = min(_SETTLE, _left(deadline))
    if wait <= 0:
        return
    sock.settimeout(wait)
    try:
        data = sock.recv(1)
    except socket.timeout:
        return  # still open, nothing said: a client-first protocol
    except socket.error as e:
        raise _Failed(UNREACHABLE, "egress run accepted the connection to "
                      "%s, then it was cut (%s): the destination refused or "
                      "did not answer egress" % (req.target(), _errtext(e)))
    if not data:
        raise _Failed(UNREACHABLE, "egress run accepted the connection to "
                      "%s, then closed it: the destination refused or did "
                      "not answer egress" % req.target())


# --- through a proxy --------------------------------------------------------

def _via_proxy(req, proxy_url, deadline, env, slot):
    u = urlsplit(proxy_url if "://" in proxy_url else "http://" + proxy_url)
    phost, pport = u.hostname or "", u.port or 80
    proxy = _redact(proxy_url)  # what is printed: never the password
    auth = _proxy_auth(u)
    preq = Requirement(phost, pport, "tcp")
    slot["stage"] = "connecting to the proxy %s" % proxy
    try:
        # A proxy that refuses is down, not the policy.
        sock = _connect(preq, _resolve_proxy(preq, deadline), deadline, False)
    except _Failed as f:
        raise _Failed(PROXY_FAILURE, "cannot reach the proxy %s: %s; is it "
                      "running, and is its address right?"
                      % (proxy, f.detail))
    try:
        if req.url:
            slot["stage"] = "waiting for an answer to %s through %s" % (
                req.what(), proxy)
            if req.protocol == "https":
                _connect_tunnel(req, sock, deadline, proxy, auth, env)
            status = _request(req, sock, deadline, env, proxy, auth)
            return "%s answered %s through the proxy %s" % (
                req.what(), status, proxy)
        if req.protocol == "http":
            slot["stage"] = "waiting for the proxy %s to reach %s" % (
                proxy, req.target())
            status = _http_head(req, sock, deadline, absolute=True,
                                proxy=proxy, auth=auth, env=env)
            return "%s answered %s through the proxy %s" % (
                req.target(), status, proxy)
        slot["stage"] = "waiting for the proxy %s to reach %s" % (
            proxy, req.target())
        _connect_tunnel(req, sock, deadline, proxy, auth, env)
        if req.protocol in ("tls", "https"):
            slot["stage"] = "in the TLS handshake with %s through %s" % (
                req.target(), proxy)
            _tls(req, sock, deadline, env)
            return "TLS handshake with %s verified through the proxy %s" % (
                req.target(), proxy)
        return "tunnel to %s opened by the proxy %s" % (req.target(), proxy)
    finally:
        sock.close()


def _redact(proxy_url):
    """proxy_url with its password, if any, shown as ***."""
    if not proxy_url or "@" not in proxy_url:
        return proxy_url
    u = urlsplit(proxy_url if "://" in proxy_url else "http://" + proxy_url)
    if u.password is None:
        return proxy_url
    netloc = u.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    shown = "%s://%s:***@%s" % (u.scheme, user, netloc[1])
    return shown + (u.path if u.path not in ("", "/") else "")


def _proxy_auth(u):
    """The Proxy-Authorization header line for a URL's credentials, or ""."""
    if u.username is None:
        return ""
    try:
        from urllib.parse import unquote
    except ImportError:  # Python 2.7
        from urllib import unquote
    import base64
    cred = "%s:%s" % (unquote(u.username), unquote(u.password or ""))
    token = base64.b64encode(cred.encode("utf-8")).decode("ascii")
    return "Proxy-Authorization: Basic %s\r\n" % token


def _still_connecting(req, proxy, env, what):
    """The proxy took the request and had not answered when the check's
    time ran out: the destination is the silent one (the proxy would have
    answered at once had it refused, or were it down)."""
    return _Failed(UNREACHABLE, "the proxy %s was still trying to reach %s "
                   "when this check's %s ran out (%s; egress tries for "
                   "timeouts.dial, 10s by default): %s does not answer, "
                   "as a host that is down or a firewall dropping its "
                   "packets does" % (proxy, req.target(), _secs(env.timeout),
                                     what, req.target()))


def _resolve_proxy(preq, deadline):
    if _is_ip(preq.host):
        return _resolve(preq, deadline, None)
    try:
        return socket.getaddrinfo(preq.host, preq.port, 0, socket.SOCK_STREAM)
    except socket.error as e:
        raise _Failed(UNREACHABLE, "cannot resolve %s (%s)"
                      % (preq.host, _errtext(e)))


def _connect_tunnel(req, sock, deadline, proxy, auth="", env=None):
    target = req.target()
    try:
        _timeout_for(sock, deadline)
        sock.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s"
                      "User-Agent: egress_requirements\r\n\r\n"
                      % (target, target, auth)).encode("ascii"))
        status, reason, headers, body = _read_response(sock, deadline,
                                                       stop_at_200=True)
    except _Failed:
        raise
    except Exception as e:
        if _is_timeout(e) and env is not None:
            raise _still_connecting(req, proxy, env, "no answer to CONNECT")
        raise _Failed(PROXY_FAILURE, "the proxy %s did not answer CONNECT "
                      "%s (%s)" % (proxy, target, _errtext(e)))
    if status == 200:
        return
    _proxy_failure(req, proxy, status, reason, headers, body, True,
                   bool(auth))


def _http_head(req, sock, deadline, absolute, proxy="", auth="", env=None):
    """HEAD / (absolute-form through a proxy); the origin's status line."""
    target = req.target()
    path = "http://%s/" % target if absolute else "/"
    try:
        _timeout_for(sock, deadline)
        sock.sendall(("HEAD %s HTTP/1.1\r\nHost: %s\r\n%s"
                      "User-Agent: egress_requirements\r\n"
                      "Connection: close\r\n\r\n" % (path, target, auth))
                     .encode("ascii"))
        status, reason, headers, body = _read_response(sock, deadline,
                                                       head=True)
    except _Failed:
        raise
    except Exception as e:
        if proxy and _is_timeout(e) and env is not None:
            raise _still_connecting(req, proxy, env, "no answer to HEAD")
        who = "the proxy %s" % proxy if proxy else target
        raise _Failed(PROXY_FAILURE if proxy else UNREACHABLE,
                      "%s did not answer HEAD %s (%s)"
                      % (who, path, _errtext(e)))
    if proxy and _from_egress(status, reason, headers, body) or \
            proxy and status in (407, 502, 504):
        _proxy_failure(req, proxy, status, reason, headers, body, False,
                       bool(auth))
    return ("%d %s" % (status, reason)).strip()


def _from_egress(status, reason, headers, body):
    if status not in (403, 502, 504):
        return False
    return _egress_answered(headers)


def _egress_answered(headers):
    """Whether an answer carries egress's headers: its 403, 502 and 504
    always do. A 403 without them is another proxy's, by its own rules."""
    return "x-egress-id" in headers or "x-egress-decision" in headers


# Answers from egress (proxy/httpproxy/answer.go), in the reason phrase:
#   403 egress denied HOST:PORT: WHY; to allow: - {...} (id ID)
#   502 egress could not resolve HOST: no such host (id ID)
#   502 egress could not reach HOST:PORT: connection refused (id ID)
#   504 egress timed out reaching HOST:PORT: ... (id ID)
# and in the body: "to allow it, add under allow: in FILE:" then the rule,
# "egress: cannot resolve HOST: ...", "id: ID".
_RULE_RE = re.compile(r"to allow: (- \{[^}]*\})")
# The hint in an EDE text: "; to allow: RULE[ (PORT: ...)]" up to "; id".
_EDE_HINT_RE = re.compile(r"; to allow: .*?(?=; id [0-9a-f]+$|$)")
# The hint in a 403's reason phrase: "; to allow: RULE" up to " (id ID)".
# A request rule's hint in the body: "hint: add WHERE: RULE".
_WHERE_RE = re.compile(r"^add (under http: of the rule at .+?): (- \{.*\})$")
_REQUEST_HINT_RE = re.compile(r"; to allow: .*?(?= \(id [0-9a-f]+\)$|$)")
_ID_RE = re.compile(r"\(id ([0-9a-f]+)\)|^id: ([0-9a-f]+)$|; id ([0-9a-f]+)",
                    re.M)


def _proxy_failure(req, proxy, status, reason, headers, body, connect,
                   sent_credentials=False):
    egress_id = headers.get("x-egress-id") or _first(_ID_RE, reason + "\n" +
                                                     body)
    said = ("%d %s" % (status, reason)).strip()
    if body.startswith("egress: "):
        said += ": " + body.splitlines()[0][len("egress: "):]
    if status == 407:
        if sent_credentials:
            raise _Failed(PROXY_FAILURE, "the proxy %s refused the "
                          "credentials in its URL (%s)" % (proxy, said))
        raise _Failed(PROXY_FAILURE, "the proxy %s wants credentials (%s): "
                      "put them in its URL, http://USER:PASSWORD@HOST:PORT"
                      % (proxy, said))
    if status == 403 and not _egress_answered(headers):
        raise _Failed(PROXY_FAILURE, "the proxy %s refused %s by its own "
                      "rules (%s): it is not egress (no X-Egress-* headers), "
                      "so no egress rule lifts this; ask whoever runs that "
                      "proxy" % (proxy, req.target(), said))
    refusal = egress_refusal(status, reason, headers, body)
    if refusal is not None:
        detail = "the proxy %s denied %s" % (proxy, req.target())
        if refusal.code:
            detail += " (%s)" % refusal.code
        if refusal.egress_id:
            detail += ", egress id %s" % refusal.egress_id
        raise _Failed(REFUSED, detail,
                      rule=refusal.rule or rule_for(req.host, req.port),
                      egress_id=refusal.egress_id, where=refusal.where)
    text = reason + "\n" + body
    if status == 502 and ("could not resolve" in text or
                          "cannot resolve" in text):
        if "no such host" in text:
            what = "the name does not exist"
        elif "timeout" in text or "timed out" in text:
            what = "the DNS servers did not answer in time"
        else:
            what = "DNS failure"
        raise _Failed(DNS_FAILURE, "the proxy %s could not resolve %s: %s "
                      "(%s)" % (proxy, req.host, what, said),
                      egress_id=egress_id)
    raise _Failed(UNREACHABLE, "the proxy %s could not reach %s (%s)"
                  % (proxy, req.target(), said), egress_id=egress_id)


class Refusal(object):
    """egress's refusal (its 403), as egress sent it.

    detail: the status line's explanation, without its hint and id
    ("egress denied GET https://api/v1/x: no request rule matched");
    rule: the line to add, or None; where: where it goes, ALLOW or, for a
    request rule, "under http: of the rule at FILE:LINE"; code: the
    reason code (X-Egress-Reason); egress_id: the id of egress's log line.
    """

    def __init__(self, detail, rule, where, code, egress_id):
        self.detail, self.rule, self.where = detail, rule, where
        self.code, self.egress_id = code, egress_id


def egress_refusal(status, reason, headers, body=""):
    """The Refusal in an HTTP answer, or None when it is none of egress's
    (not a 403, or a 403 without egress's X-Egress-* headers: another
    proxy's). The one reader of egress's 403 in this kit: the status line,
    the X-Egress-* headers, and the body's lines ("to allow it, add under
    allow: in FILE:" then the rule; "hint: add under http: of the rule at
    FILE:LINE: RULE" for a request rule; "reason:"; "id:"). headers: any
    mapping with items() (urllib's message, or a dict)."""
    h = dict((k.lower(), v) for k, v in headers.items())
    if status != 403 or not _egress_answered(h):
        return None
    body = body or ""
    egress_id = h.get("x-egress-id") or _first(_ID_RE, reason + "\n" + body)
    code = h.get("x-egress-reason") or _body_field(body, "reason")
    rule, where = None, ALLOW
    lines = body.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("to allow it, add under allow:") and \
                i + 1 < len(lines) and lines[i + 1].strip().startswith("- {"):
            rule = lines[i + 1].strip()
    m = _WHERE_RE.match(_body_field(body, "hint") or "")
    if rule is None and m:
        where, rule = m.group(1), m.group(2)
    if rule is None:
        rule = _first(_RULE_RE, reason)
    if where == ALLOW and rule and not rule.startswith(("- {host", "- {cidr")):
        # A request rule whose place the body did not name (it was cut
        # short): it never goes under allow:.
        where = "under http: of the host's rule"
    detail = _REQUEST_HINT_RE.sub("", reason)
    if egress_id and detail.endswith(" (id %s)" % egress_id):
        detail = detail[:-len(" (id %s)" % egress_id)]
    return Refusal(detail, rule, where, code, egress_id)


def _body_field(body, name):
    for line in body.splitlines():
        if line.startswith(name + ": "):
            return line[len(name) + 2:].strip()
    return None


def _first(regex, text):
    m = regex.search(text)
    if not m:
        return None
    return [g for g in m.groups() if g][0]


def _read_response(sock, deadline, stop_at_200=False, head=False):
    """Status, reason, lower-cased headers and body (up to 64 KiB)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > 65536:
            raise ValueError("response header too long")
        _timeout_for(sock, deadline)
        chunk = sock.recv(4096)
        if not chunk:
            raise socket.error(errno.ECONNRESET,
                               "connection closed before an answer")
        buf += chunk
    raw, rest = buf.split(b"\r\n\r\n", 1)
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or \
            not parts[1].isdigit():
        raise ValueError("not an HTTP answer: %r" % lines[0][:80])
    status, reason = int(parts[1]), (parts[2] if len(parts) > 2 else "")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if head or (stop_at_200 and status == 200):
        # Bytes after a 200 to CONNECT belong to the tunnel; none come
        # before the client speaks.
        return status, reason, headers, ""
    try:
        want = min(int(headers.get("content-length", "65536")), 65536)
    except ValueError:
        want = 65536
    while len(rest) < want:
        try:
            _timeout_for(sock, deadline)
            chunk = sock.recv(want - len(rest))
        except Exception:
            break  # the status and headers say enough
        if not chunk:
            break
        rest += chunk
    return status, reason, headers, rest.decode("utf-8", "replace")


# --- TLS --------------------------------------------------------------------

def _tls(req, sock, deadline, env):
    _tls_wrap(req, sock, deadline, env).close()


def _tls_wrap(req, sock, deadline, env):
    """The verified TLS connection to req over sock."""
    ctx = ssl.create_default_context(cafile=env.ca_file)
    ip = _is_ip(req.host)
    if ip:
        # No SNI for an address (RFC 6066 section 3), and Python 2.7's
        # match_hostname ignores IP SANs: check them below, on both.
        ctx.check_hostname = False
    try:
        _timeout_for(sock, deadline)
        tls = ctx.wrap_socket(sock, server_hostname=None if ip else req.host)
    except Exception as e:
        text = _errtext(e)
        if _is_timeout(e):
            raise _Failed(UNREACHABLE, "%s accepted the connection but did "
                          "not complete a TLS handshake in time" %
                          req.target())
        if _is_cut(e):
            raise _Failed(UNREACHABLE, "the connection to %s was closed "
                          "during the TLS handshake (%s)" % (req.target(),
                                                            text))
        raise _Failed(TLS_FAILURE, "TLS with %s failed: %s"
                      % (req.target(), text))
    if ip and not _cert_has_ip(tls.getpeercert(), req.host):
        tls.close()
        raise _Failed(TLS_FAILURE, "TLS with %s failed: the certificate "
                      "is not valid for %s" % (req.target(), req.host))
    return tls


def _request(req, sock, deadline, env, proxy="", auth=""):
    """Send req's request on sock (TLS first for https; absolute-form to
    a proxy for http) and read the answer: its status line when the
    origin answered, whatever it said; egress's 403 is a refusal, its
    502 and 504 say why the origin was not reached."""
    conn = sock
    if req.protocol == "https":
        conn = _tls_wrap(req, sock, deadline, env)
    absolute = bool(proxy) and req.protocol == "http"
    head = req.method == "HEAD"
    try:
        _timeout_for(conn, deadline)
        conn.sendall(("%s %s HTTP/1.1\r\nHost: %s\r\n%s"
                      "User-Agent: egress_requirements\r\n"
                      "Content-Length: 0\r\nConnection: close\r\n\r\n"
                      % (req.method, req.request_target(absolute),
                         req.host_header(), auth if absolute else ""))
                     .encode("utf-8"))
        status, reason, headers, body = _read_response(conn, deadline,
                                                       head=head)
    except _Failed:
        raise
    except Exception as e:
        if proxy and _is_timeout(e):
            raise _still_connecting(req, proxy, env, "no answer to %s"
                                    % req.what())
        raise _Failed(UNREACHABLE, "%s got no answer (%s)"
                      % (req.what(), _errtext(e)))
    finally:
        if conn is not sock:
            conn.close()
    said = ("%d %s" % (status, reason)).strip()
    refusal = egress_refusal(status, reason, headers, body)
    if refusal is not None:
        # egress's refusal of this request (a request rule): its
        # explanation and the rule to add, where egress says it goes.
        why = refusal.detail
        if refusal.egress_id:
            why += " (id %s)" % refusal.egress_id
        raise _Failed(REFUSED, "403 %s" % why, rule=refusal.rule,
                      egress_id=refusal.egress_id, where=refusal.where)
    if proxy and (status == 407 and absolute or
                  status in (502, 504) and _egress_answered(headers)):
        _proxy_failure(req, proxy, status, reason, headers, body, False,
                       bool(auth))
    if status in (502, 504) and _egress_answered(headers):
        raise _Failed(UNREACHABLE, "egress could not reach %s (%s)"
                      % (req.target(), said),
                      egress_id=headers.get("x-egress-id"))
    return said


def _cert_has_ip(cert, host):
    want = _packed(host)
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "IP Address" and _packed(value.strip()) == want:
            return True
    return False


def _packed(ip):
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, ip)
        except (socket.error, ValueError):
            pass
    return None


def _is_timeout(e):
    return isinstance(e, socket.timeout) or "timed out" in str(e)


def _is_cut(e):
    if getattr(e, "errno", None) in (errno.ECONNRESET, errno.EPIPE):
        return True
    eof = getattr(ssl, "SSLEOFError", None)
    if eof is not None and isinstance(e, eof):
        return True
    text = str(e)
    return "EOF occurred" in text or "UNEXPECTED_EOF" in text or \
        "Connection reset" in text


# --- DNS --------------------------------------------------------------------

def _dns_why(req, deadline):
    """Ask the first nameserver of /etc/resolv.conf about req.host.

    Returns a _Failed saying whether egress refused the name (NXDOMAIN or
    another answer with RFC 8914 EDE 15, Blocked, whose text starts
    "egress:"), the name does not exist, or the server failed; None when
    the server has nothing to add.
    """
    server = _nameserver()
    if server is None:
        return None
    # Under egress run every query goes to egress's DNS proxy, whatever
    # address resolv.conf names: say so, or the error blames that server.
    via = server
    if os.environ.get("EGRESS_RUN") == "1":
        via = "egress's DNS proxy"
    try:
        rcode, edes = _dns_query(server, req.host, deadline)
    except socket.timeout:
        return _Failed(DNS_FAILURE, "%s does not resolve: the DNS server %s "
                       "did not answer in time" % (req.host, via))
    except Exception as e:
        return _Failed(DNS_FAILURE, "%s does not resolve, and asking the DNS "
                       "server %s failed (%s)" % (req.host, via,
                                                  _errtext(e)))
    for code, text in edes:
        if code == 15 and text.startswith("egress:"):
            rule = _first(_RULE_RE, text)
            if rule:
                # A lookup names no port: egress's hint leaves PORT to fill
                # in (an older egress gave no ports, every port). The rule
                # for the port the plugin needs allows the name, and so
                # the lookup, and no more.
                rule = rule.replace("ports: [PORT]", "ports: [%d]" % req.port)
                if "ports:" not in rule and rule.endswith("}"):
                    rule = rule[:-1] + ", ports: [%d]}" % req.port
            # The line gives the one rule above: the EDE text's own hint
            # left in would put two different rules on one line.
            said = _EDE_HINT_RE.sub("", text)
            return _Failed(REFUSED, "egress's DNS refused %s (%s)"
                           % (req.host, said),
                           rule=rule or rule_for(req.host, req.port),
                           egress_id=_first(_ID_RE, text))
    extra = "".join("; EDE %d %s" % (c, t) for c, t in edes)
    names = {2: ("SERVFAIL", "the DNS server failed"),
             3: ("NXDOMAIN", "the name does not exist"),
             5: ("REFUSED", "the DNS server refused to answer")}
    if rcode in names:
        return _Failed(DNS_FAILURE, "%s does not resolve (%s from %s: %s%s)"
                       % (req.host, names[rcode][0], via, names[rcode][1],
                          extra))
    return None


def _nameserver():
    try:
        with open("/etc/resolv.conf") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    return fields[1].split("%")[0]
    except (IOError, OSError):
        pass
    return None


def _dns_query(server, name, deadline):
    """One A query with an EDNS0 OPT record; (rcode, [(ede code, text)])."""
    qid = random.randint(0, 0xFFFF)
    qname = b""
    for label in name.rstrip(".").split("."):
        label = label.encode("idna")
        qname += struct.pack("!B", len(label)) + label
    query = (struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1) + qname +
             b"\x00" + struct.pack("!HH", 1, 1) +
             # OPT: root name, type 41, UDP size 1232, no flags, no options.
             b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0))
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.connect((server, 53))
        sock.send(query)
        while True:
            _timeout_for(sock, deadline)
            msg = sock.recv(65535)
            if len(msg) >= 12 and struct.unpack("!H", msg[:2])[0] == qid:
                return _parse_reply(msg)
    finally:
        sock.close()


def _parse_reply(msg):
    _, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", msg[:12])
    rcode = flags & 0xF
    off = 12
    for _ in range(qd):
        off = _skip_name(msg, off) + 4
    for _ in range(an + ns):
        off = _skip_name(msg, off)
        rdlen = struct.unpack("!H", msg[off + 8:off + 10])[0]
        off += 10 + rdlen
    edes = []
    for _ in range(ar):
        off = _skip_name(msg, off)
        rtype, _, ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        rdata = msg[off + 10:off + 10 + rdlen]
        off += 10 + rdlen
        if rtype != 41:
            continue
        rcode |= (ttl >> 24) << 4  # the extended RCODE's upper bits
        i = 0
        while i + 4 <= len(rdata):
            code, length = struct.unpack("!HH", rdata[i:i + 4])
            value = rdata[i + 4:i + 4 + length]
            i += 4 + length
            if code == 15 and len(value) >= 2:  # RFC 8914 EDE
                info = struct.unpack("!H", value[:2])[0]
                edes.append((info, value[2:].decode("utf-8", "replace")))
    return rcode, edes


def _skip_name(msg, off):
    while True:
        n = _byte(msg, off)
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:  # a compression pointer ends the name
            return off + 2
        off += 1 + n


def _byte(msg, off):
    if off >= len(msg):
        raise ValueError("truncated DNS message")
    b = msg[off]
    return b if isinstance(b, int) else ord(b)


# --- small things -----------------------------------------------------------

def rule_for(host, port):
    """The rule egress gives to allow host:port."""
    if _is_ip(host):
        bits = 128 if ":" in host else 32
        return "- {cidr: %s/%d, ports: [%d]}" % (host, bits, port)
    return "- {host: %s, ports: [%d]}" % (host.lower().rstrip("."), port)


def _is_ip(host):
    return _packed(host) is not None


def _hostport(host, port):
    if ":" in host:
        return "[%s]:%d" % (host, port)
    return "%s:%d" % (host, port)


def _secs(t):
    return ("%g" % t) + "s"


def errtext(e):
    """A short, stable description of a socket-level error."""
    return _errtext(e)


def _errtext(e):
    if isinstance(e, socket.timeout) or str(e) in ("timed out",):
        return "timed out"
    if isinstance(e, socket.gaierror) and e.args:
        return str(e.args[-1])
    code = getattr(e, "errno", None)
    if code in (errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT,
                errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EPIPE):
        return os.strerror(code).lower()
    return str(e) or e.__class__.__name__


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    timeout, ca_file, path = DEFAULT_TIMEOUT, None, None
    usage = "usage: egress_requirements.py [--timeout S] [--ca-file F] FILE"
    i = 0
    try:
        while i < len(argv):
            a = argv[i]
            if a in ("--timeout", "--ca-file") and i + 1 < len(argv):
                if a == "--timeout":
                    timeout = float(argv[i + 1])
                    if timeout <= 0:
                        raise ValueError("--timeout must be positive")
                else:
                    ca_file = argv[i + 1]
                i += 2
            elif path is None and not a.startswith("-"):
                path = a
                i += 1
            else:
                raise ValueError(usage)
        if path is None:
            raise ValueError(usage)
        plugin, reqs = load(path)
    except (ValueError, IOError, OSError) as e:
        print("egress_requirements: %s" % e, file=sys.stderr)
        return 2
    results = check(reqs, timeout, ca_file)
    for r in results:
        print(r.line())
    failed = [r for r in results if not r.ok and r.requirement.required]
    if failed:
        print(_message(plugin, failed, results), file=sys.stderr)
        print(_action(failed), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
