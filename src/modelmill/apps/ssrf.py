"""Outbound HTTP for workflows, behind a guard against server-side request forgery.

    resp = await fetch("GET", "https://api.example.com/orders/42", timeout=5, max_bytes=1_000_000)
    resp.status, resp.text, resp.json

A workflow's ``http`` node sends a request to a URL it builds from a template, so whoever can
write a workflow, or put words into one, could point this server at what only it can reach: its
own admin routes, the cloud's metadata service (169.254.169.254, which hands out credentials),
databases on the private network. So every request is checked before it leaves:

- the host is resolved here, and every address it resolves to must be a public unicast address:
  the ranges of IANA's special-purpose registries are refused by a list kept here (so the answer
  does not depend on the Python version's ``ipaddress``): loopback, private (RFC 1918,
  unique-local IPv6), shared (100.64/10), link-local (169.254/16, fe80::/10: the metadata services
  live there), IETF protocol assignments (192.0.0.0/24, where Oracle Cloud's metadata service
  answers at 192.0.0.192), benchmarking, documentation, multicast, reserved, and every IPv6
  address outside global unicast (2000::/3); and so are IPv6 addresses that carry one of those
  (IPv4-mapped, NAT64, 6to4, Teredo);
- the connection goes to the address that was checked (the name is not resolved a second time,
  so a DNS answer that changes between check and connect, "rebinding", cannot slip through);
  TLS still verifies the certificate against the name;
- redirects are followed here, each one checked the same way;
- a timeout covers the whole exchange, and a body over ``max_bytes`` is cut off and refused.

The server's operator (never a workflow file) allows inner addresses with ``MODELMILL_HTTP_ALLOW``:
comma-separated hosts, ``host:port`` pairs, addresses or CIDR ranges
(``MODELMILL_HTTP_ALLOW=10.0.0.0/8,intranet.example.com,127.0.0.1:9000``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from modelmill.errors import InputError

ALLOW_ENV = "MODELMILL_HTTP_ALLOW"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

_METADATA = "link-local (where cloud metadata services answer)"
# IANA's IPv4 and IPv6 special-purpose address registries (and multicast, reserved): no workflow
# calls these. Checked in this order, so a smaller range's reason wins over the one around it.
_DENY = [(ipaddress.ip_network(net), why) for net, why in [
    ("0.0.0.0/32", "unspecified"),
    ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", _METADATA),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved for IETF protocol assignments (Oracle Cloud's metadata service answers at "
                     "192.0.0.192)"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "reserved (6to4 relay anycast)"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "an IPv4-compatible address (deprecated)"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/23", "reserved for IETF protocol assignments"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "reserved (SRv6)"),
    ("fc00::/7", "private (unique-local)"),
    ("fe80::/10", _METADATA),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
]]
_GLOBAL_V6 = ipaddress.ip_network("2000::/3")  # IPv6 global unicast; everything outside it is refused


class Refused(InputError):
    """A URL the guard will not fetch: what it resolved to and why, and how to allow it."""


class FetchFailed(InputError):
    """The request left but failed: timeout, refused connection, too large a body, too many redirects."""


@dataclass
class Response:
    status: int
    url: str
    headers: dict = field(default_factory=dict)
    text: str = ""
    bytes: int = 0

    @property
    def json(self):
        try:
            return json.loads(self.text)
        except (ValueError, RecursionError):
            return None


def why_refused(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``addr`` is not a public unicast address (None when it is), worded to follow "is"."""
    if isinstance(addr, ipaddress.IPv6Address):
        kind, inner = None, None
        if addr.ipv4_mapped:
            kind, inner = "an IPv4-mapped", addr.ipv4_mapped
        elif addr.sixtofour:
            kind, inner = "a 6to4", addr.sixtofour
        elif addr.teredo:
            kind, inner = "a Teredo", addr.teredo[1]
        elif addr in _NAT64:
            kind, inner = "a NAT64", ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if inner is not None:
            why = why_refused(inner)
            return f"{kind} address carrying {inner}, which is {why}" if why else None
    for net, why in _DENY:
        if addr.version == net.version and addr in net:
            return why
    if isinstance(addr, ipaddress.IPv6Address) and addr not in _GLOBAL_V6:
        return "reserved (outside IPv6 global unicast, 2000::/3)"
    # what a newer registry adds that the list above lacks, as far as this Python knows it
    if addr.is_private or addr.is_reserved or not addr.is_global:
        return "reserved"
    return None


def _allow_list(allow: str | None) -> list:
    out = []
    for entry in (allow if allow is not None else os.environ.get(ALLOW_ENV, "")).split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        host, port = entry, None
        if entry.startswith("["):  # [v6] or [v6]:port
            h, _, rest = entry[1:].partition("]")
            host, port = h, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        elif entry.count(":") == 1:  # host:port
            h, _, p = entry.rpartition(":")
            if p.isdigit():
                host, port = h, int(p)
        try:
            out.append((ipaddress.ip_network(host, strict=False), port))
        except ValueError:
            out.append((host, port))
    return out


def _allowed(rules: list, host: str, addr, port: int) -> bool:
    for what, p in rules:
        if p is not None and p != port:
            continue
        if isinstance(what, str):
            if what == host.lower():
                return True
        elif addr.version == what.version and addr in what:
            return True
    return False


def _port(parts) -> int:
    try:
        port = parts.port
    except ValueError:
        raise Refused(f"'{parts.netloc}' has a port that is not a number from 0 to 65535", field="url") from None
    return port or (443 if parts.scheme == "https" else 80)


async def check_url(url: str, allow: str | None = None) -> tuple[str, int, str]:
    """(host, port, address to connect to) of ``url``, or :class:`Refused` saying why not."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise Refused(f"'{url[:200]}' is not an http(s) URL", field="url", fix="start the URL with https://")
    host = parts.hostname
    if not host:
        raise Refused(f"'{url[:200]}' names no host", field="url")
    if parts.username or parts.password:
        raise Refused("a URL with a user name or password in it is refused", field="url",
                      fix="send credentials in a header instead")
    port = _port(parts)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise FetchFailed(f"host '{host}' does not resolve ({e})", field="url") from None
    addrs = list(dict.fromkeys(ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos))
    if not addrs:
        raise FetchFailed(f"host '{host}' resolves to no address", field="url")
    rules = _allow_list(allow)
    for addr in addrs:  # every address: a name that also resolves to an inner one is refused
        why = why_refused(addr)
        if why and not _allowed(rules, host, addr, port):
            shown = f"address {addr}" if host == str(addr) else f"'{host}' resolves to {addr}, which"
            raise Refused(f"{shown} is {why}; workflows may not call such addresses", field="url",
                          fix=f"if this service is meant to be called, the server's operator allows it with "
                              f"{ALLOW_ENV}={f'[{host}]' if ':' in host else host}:{port}")
    return host, port, str(addrs[0])


async def fetch(method: str, url: str, *, headers: dict | None = None, body: bytes | None = None,
                timeout: float = 10.0, max_bytes: int = 1_000_000, max_redirects: int = 5,
                allow: str | None = None) -> Response:
    """Send one request through the guard (see the module's text); redirects followed and checked."""
    import httpx

    method = method.upper()
    if method not in METHODS:
        raise InputError(f"method '{method}' is not one of {', '.join(METHODS)}", field="method")
    headers = _clean_headers(headers or {})
    deadline = time.monotonic() + timeout
    origin = None
    for hop in range(max_redirects + 1):
        left = deadline - time.monotonic()
        try:
            host, port, addr = await asyncio.wait_for(check_url(url, allow), max(left, 0.001))
        except asyncio.TimeoutError:
            raise FetchFailed(f"{url[:200]}: the name did not resolve within {timeout:g} s", field="timeout") from None
        parts = urlsplit(url)
        if origin is not None and (parts.scheme, host, port) != origin:
            if origin[0] == "https" and parts.scheme == "http":
                raise FetchFailed(f"a redirect from https to http ({url[:200]}) is refused", field="url")
            # another origin: credentials meant for the first one stay behind
            headers = {k: v for k, v in headers.items() if not is_secret_header(k)}
        origin = (parts.scheme, host, port)
        netloc = f"[{addr}]" if ":" in addr else addr
        pinned = parts._replace(netloc=f"{netloc}:{port}").geturl()
        hdrs = {**headers, "Host": parts.netloc.rpartition("@")[2]}
        ext = {"sni_hostname": host} if parts.scheme == "https" else {}
        left = deadline - time.monotonic()
        if left <= 0:
            raise FetchFailed(f"{url[:200]}: no answer within {timeout:g} s", field="timeout")
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(left), follow_redirects=False, trust_env=False) as c:
                req = c.build_request(method, pinned, headers=hdrs, content=body, extensions=ext)
                resp = await asyncio.wait_for(c.send(req, stream=True), left)
                try:
                    if resp.is_redirect and resp.headers.get("location"):
                        if hop == max_redirects:
                            raise FetchFailed(f"more than {max_redirects} redirects (the last to "
                                              f"{resp.headers['location'][:200]})", field="url")
                        url = urljoin(url, resp.headers["location"])
                        if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
                            method, body = "GET", None
                            headers = {k: v for k, v in headers.items()
                                       if k.lower() not in ("content-type", "content-length")}
                        continue
                    declared = resp.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > max_bytes:
                        raise FetchFailed(f"{url[:200]} answers with {int(declared):,} bytes, over the limit of "
                                          f"{max_bytes:,}", field="max_bytes")
                    data = bytearray()
                    async for chunk in _chunks(resp, deadline, url, timeout):
                        data += chunk
                        if len(data) > max_bytes:
                            raise FetchFailed(f"{url[:200]} sent more than {max_bytes:,} bytes; cut off",
                                              field="max_bytes")
                finally:
                    await resp.aclose()
        except (httpx.TimeoutException, asyncio.TimeoutError):
            raise FetchFailed(f"{url[:200]}: no answer within {timeout:g} s", field="timeout") from None
        except httpx.HTTPError as e:
            raise FetchFailed(f"{url[:200]}: {type(e).__name__}: {e}", field="url") from None
        return Response(resp.status_code, url, dict(resp.headers), bytes(data).decode(resp.encoding or "utf-8",
                                                                                     "replace"), len(data))
    raise FetchFailed(f"more than {max_redirects} redirects", field="url")


SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key",
                            "x-auth-token"})
_SECRET_WORDS = ("token", "secret", "auth", "cookie", "key", "password")


def is_secret_header(name: str) -> bool:
    """Whether a header carries a credential: one of :data:`SECRET_HEADERS`, or a name with token,
    secret, auth, cookie, key or password in it (any case). Such headers stay behind when a redirect
    leaves the origin, and a run's trace shows them as ***."""
    name = str(name).lower()
    return name in SECRET_HEADERS or any(w in name for w in _SECRET_WORDS)


def _clean_headers(headers: dict) -> dict:
    """The request's own headers: Host is ours to set (the name checked), and a name or value must be
    one line of Latin-1 (what HTTP carries)."""
    out = {}
    for k, v in headers.items():
        k, v = str(k), str(v)
        if k.lower() == "host":
            continue
        try:
            k.encode("ascii"), v.encode("latin-1")
        except UnicodeEncodeError:
            raise InputError(f"header '{k[:60]}' has characters HTTP headers cannot carry", field="headers",
                             fix="percent-encode the value, or send it in the body") from None
        if any(c in k + v for c in "\r\n\0") or not k or any(c in k for c in " :"):
            raise InputError(f"header '{k[:60]}' is not one line of name: value", field="headers")
        out[k] = v
    return out


async def _chunks(resp, deadline: float, url: str, timeout: float):
    it = resp.aiter_bytes().__aiter__()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FetchFailed(f"{url[:200]}: no whole answer within {timeout:g} s", field="timeout")
        try:
            yield await asyncio.wait_for(it.__anext__(), left)
        except StopAsyncIteration:
            return
