"""Which registry requests go through a proxy: HTTPS_PROXY, HTTP_PROXY and NO_PROXY, read as
docker and skopeo read them (Go's ProxyFromEnvironment rules)."""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from cache.errors import SourceError


class Proxy(NamedTuple):
    host: str
    port: int
    headers: dict[str, str]  # Proxy-Authorization when the proxy URL carries user:password


def proxy_for(scheme: str, host: str, port: int, environ: Mapping[str, str] = os.environ) -> Proxy | None:
    """The proxy for one origin, from HTTPS_PROXY / HTTP_PROXY / NO_PROXY (either case), by the
    rules docker and skopeo follow (Go's ProxyFromEnvironment): loopback hosts are never proxied;
    NO_PROXY lists hosts, domains (``example.com`` and ``.example.com`` both match subdomains),
    IP addresses and CIDR ranges, each optionally with ``:port``, or ``*`` for everything."""
    name = "https_proxy" if scheme == "https" else "http_proxy"
    url = environ.get(name) or environ.get(name.upper())
    if not url or is_loopback_host(host) or _bypassed(host, port, environ.get("no_proxy") or environ.get("NO_PROXY")):
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise SourceError(f"proxy {url!r} in ${name.upper()} is not supported: give an http://HOST:PORT proxy")
    headers = {}
    if parts.username is not None:
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(secret).decode("ascii")
    return Proxy(parts.hostname, parts.port or 80, headers)


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (a bare host name or address, no port)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bypassed(host: str, port: int, no_proxy: str | None) -> bool:
    for entry in (e.strip().lower() for e in (no_proxy or "").split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        entry_host, entry_port = _split_host_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if "/" in entry_host:
            try:
                if ipaddress.ip_address(host) in ipaddress.ip_network(entry_host, strict=False):
                    return True
            except ValueError:
                pass
            continue
        domain = entry_host.lstrip(".")
        if host.lower() == domain or host.lower().endswith("." + domain):
            return True
    return False


def _split_host_port(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port``, a bare IPv6 address or a CIDR range."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest[1:].isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else None
    return entry, None
