"""Fetching image URLs safely: which addresses a URL may reach, and the HTTP GET that enforces it.

By default an image URL may not reach loopback, link-local, private, unspecified, multicast,
reserved or otherwise non-public addresses (the Redis port, the metrics port, the cloud metadata
service at 169.254.169.254, anything inside the cluster). The check runs after DNS resolution, the
connection then goes to the address that was checked (so a second DNS answer cannot differ: DNS
rebinding), with the original Host header and TLS server name, and it runs again on every redirect
(followed here, at most MAX_REDIRECTS). `--allow-network` (NetworkPolicy) names networks and host
names that are reachable anyway.

A refusal is a permanent ImageLoadError raised before any connection is made; network errors and
HTTP 5xx/408/429 are transient ones (the caller may retry).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import ImageLoadError

__all__ = ["MAX_REDIRECTS", "NetworkPolicy", "fetch_http"]

MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_TRANSIENT_STATUS = (408, 429)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]  # getaddrinfo's 5-tuples


@dataclass(frozen=True)
class NetworkPolicy:
    """Where image URLs may point. By default loopback, link-local and private addresses are refused
    (checked after DNS resolution and on every redirect); `networks` (CIDR) and `hosts` (names) are
    reachable anyway (an in-cluster object store)."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    hosts: tuple[str, ...] = ()

    @classmethod
    def parse(cls, items: Sequence[str]) -> "NetworkPolicy":
        networks, hosts = [], []
        for item in items:
            text = item.strip()
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                hosts.append(text.lower().rstrip("."))
        return cls(tuple(networks), tuple(hosts))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks if network.version == address.version)


def address_kind(address: IPAddress) -> str | None:
    """What makes `address` unfit by default ("a loopback address", ...), or None for a public one."""
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:  # ::ffff:127.0.0.1 reaches 127.0.0.1
        return address_kind(mapped)
    checks = (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_reserved", "a reserved address"),
        ("is_private", "a private address"),
        ("is_site_local", "a site-local address"),
    )
    for prop, kind in checks:
        if getattr(address, prop, False):
            return kind
    if not address.is_global:
        return "a non-public address"
    return None


# getaddrinfo's answers that the name has no address (NXDOMAIN, no A/AAAA record), not that DNS failed.
_NO_SUCH_NAME = frozenset(getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name))


def _resolve(url: str, host: str, port: int, policy: NetworkPolicy) -> list[_AddrInfo]:
    """Resolves `host` once and checks every address; returns them all (all allowed) or raises."""
    try:
        infos: list[_AddrInfo] = list(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP))
    except (socket.gaierror, UnicodeError) as exc:
        # A name that does not exist stays so (failed at once); a resolver that did not answer may later.
        permanent = not isinstance(exc, socket.gaierror) or exc.errno in _NO_SUCH_NAME
        raise ImageLoadError(f"cannot fetch {url}: cannot resolve host {host!r}: {exc.args[-1]}",
                             transient=not permanent) from exc
    if not infos:
        raise ImageLoadError(f"cannot fetch {url}: host {host!r} has no address", transient=True)
    if policy.allows_host(host):
        return infos
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        address = getattr(address, "ipv4_mapped", None) or address  # ::ffff:127.0.0.1 reaches 127.0.0.1
        kind = None if policy.allows_address(address) else address_kind(address)
        if kind is not None:
            hint = f"--allow-network {ipaddress.ip_network(address)}"
            if _is_literal(host):
                subject = f"{address} is {kind}"
            else:
                subject = f"{host} resolves to {address}, {kind}"
                hint += f" or --allow-network {host.lower().rstrip('.')}"
            raise ImageLoadError(f"refused to fetch {url}: {subject} (allow it with {hint})")
    return infos


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class _Pinned:
    """Mixin: connect to the already checked addresses instead of resolving the host name again."""

    _infos: list[_AddrInfo]

    def _pin(self, infos: list[_AddrInfo]) -> None:
        self._infos = infos
        self._create_connection = self._connect_checked  # http.client's hook for opening the socket

    def _connect_checked(self, _address: object, timeout: float, source_address: object = None) -> socket.socket:
        last: OSError | None = None
        for family, kind, proto, _, sockaddr in self._infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise last or OSError("no address to connect to")


class _PinnedHTTP(_Pinned, http.client.HTTPConnection):
    def __init__(self, host: str, port: int, infos: list[_AddrInfo], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._pin(infos)


class _PinnedHTTPS(_Pinned, http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, infos: list[_AddrInfo], timeout: float) -> None:
        # The TLS server name and certificate check use `host`, the name in the URL.
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._pin(infos)


def fetch_http(url: str, policy: NetworkPolicy, timeout_s: float, max_bytes: int) -> bytes:
    """GETs an http(s) URL under `policy`, following up to MAX_REDIRECTS redirects (each checked),
    and returns at most `max_bytes` bytes of body (one more means "too big": the caller decides).
    `timeout_s` bounds the whole fetch (connections, redirects, headers and body), so that a host that
    sends a byte now and then cannot hold the calling thread for longer."""
    current = url
    deadline = time.monotonic() + timeout_s
    for _ in range(MAX_REDIRECTS + 1):
        status, location, body = _get_once(url, current, policy, deadline, timeout_s, max_bytes)
        if status in _REDIRECTS:
            if not location:
                raise ImageLoadError(f"cannot fetch {url}: HTTP {status} redirect without a Location")
            try:
                current = urllib.parse.urljoin(current, location)
            except ValueError as exc:  # e.g. "http://[::1/x": urljoin parses the target
                raise ImageLoadError(f"cannot fetch {url}: HTTP {status} redirect to an invalid URL: {exc}") from exc
            continue
        if 200 <= status < 300:
            return body
        transient = status >= 500 or status in _TRANSIENT_STATUS
        where = url if current == url else f"{url} (redirected to {current})"
        raise ImageLoadError(f"cannot fetch {where}: HTTP {status}", transient=transient)
    raise ImageLoadError(f"cannot fetch {url}: more than {MAX_REDIRECTS} redirects")


def _get_once(original: str, url: str, policy: NetworkPolicy, deadline: float, timeout_s: float,
              max_bytes: int) -> tuple[int, str | None, bytes]:
    shown = original if url == original else f"{original} (redirected to {url})"
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:  # a malformed host, a port that is not a number or out of range
        raise ImageLoadError(f"cannot fetch {shown}: invalid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise ImageLoadError(f"cannot fetch {shown}: only http and https URLs are fetched")
    if not host:
        raise ImageLoadError(f"cannot fetch {shown}: the URL has no host")
    infos = _resolve(shown, host, port, policy)

    def left() -> float:
        """Seconds left of the fetch's time (each blocking step waits at most that long)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout(f"took more than {timeout_s:g} s")
        return remaining

    kind = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    connection = None
    try:
        connection = kind(host, port, infos, left())
        connection.request("GET", target, headers={"User-Agent": "clipsearch"})
        sock = connection.sock  # the response reads from it (the connection may drop its reference)
        sock.settimeout(left())
        response = connection.getresponse()
        if response.status in _REDIRECTS:
            return response.status, response.getheader("Location"), b""
        if not 200 <= response.status < 300:
            return response.status, None, b""
        chunks, size = [], 0
        while size <= max_bytes:  # in pieces, each read bounded by the time left
            sock.settimeout(left())
            chunk = response.read1(min(1 << 16, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return response.status, None, b"".join(chunks)
    except http.client.InvalidURL as exc:  # control characters or spaces in the path
        raise ImageLoadError(f"cannot fetch {shown}: invalid URL: {exc}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise ImageLoadError(f"cannot fetch {shown}: {_network_reason(exc)}", transient=True) from exc
    finally:
        if connection is not None:
            connection.close()


def _network_reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return f"timed out ({exc})" if str(exc) and str(exc) != "timed out" else "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
