"""The Docker Engine API calls a daemon pull makes: ping, inspect, history, and the save stream.

Which daemon: the one the docker CLI would use. ``docker_host`` (``--docker-host``), else
DOCKER_HOST (with DOCKER_TLS_VERIFY / DOCKER_CERT_PATH), else the current docker context, else
the default socket.

How it is spoken to: a unix socket or a plain ``tcp://`` address, the common cases, go through
our own HTTP/1.1 client (:mod:`cache.registry.http`). It starts in a millisecond, where importing
docker-py and requests takes over 100 ms, and it reads the save stream as HTTP/1.0: the daemon
then sends the tar as it is, ended by closing the connection, instead of in 32 KiB chunks that
cost a second of CPU per GiB to unframe. A cut is still caught: a docker save tar ends with its
end-of-archive blocks, and the reader insists on them (see :class:`SaveReader`). TLS, ``ssh://``
and ``npipe://`` addresses go through docker-py (:mod:`cache.sources.engine_dockerpy`).

The API version is the daemon's own (``/_ping`` tells it), or DOCKER_API_VERSION when set.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from cache.errors import DaemonUnavailable, ImageNotFound, SourceError
from cache.formats.tar import Readable
from cache.registry.http import TRANSIENT, Connection, Response, Timeout
from cache.registry.proxy import proxy_for

DEFAULT_HOST = "unix:///var/run/docker.sock"
API_TIMEOUT = 120  # ping, inspect and history; the save stream itself has no timeout (docker-py#2097)
HINT = "start it, or point at one with DOCKER_HOST=unix:///path/to/docker.sock or --docker-host"
MAX_JSON = 64 << 20  # an inspect or history answer larger than this is not one
UNIX_HOST_HEADER = "api.moby.localhost"  # what the docker CLI sends over a unix socket


class Engine(Protocol):
    """A connection to one daemon; :func:`connect` gives the right kind."""

    host: str  # the address, as the user would write it (for messages)

    def inspect(self, name: str) -> dict[str, Any]:
        """The image's inspect data; ImageNotFound when the daemon does not have it."""
        ...

    def history(self, name: str) -> list[Any] | None:
        """The image's history (newest first), or None when the daemon would not give it."""
        ...

    def save(self, name: str) -> Any:
        """A context manager giving the ``docker save`` stream of ``name`` (with ``readinto``)."""
        ...

    def info(self) -> dict[str, Any] | None:
        """The daemon's ``/info`` (data root, storage driver), or None when it would not give it."""
        ...

    def close(self) -> None: ...


def unreachable(host: str, reason: str) -> DaemonUnavailable:
    return DaemonUnavailable(f"no Docker daemon reachable at {host} ({reason}); {HINT}")


def not_found(name: str, host: str) -> ImageNotFound:
    return ImageNotFound(f"image {name!r} is not in the Docker daemon at {host}; docker pull, build or load it first")


def refused(host: str, doing: str, name: str, detail: str) -> SourceError:
    detail = " ".join(str(detail).split())  # podman's messages list causes on lines of their own
    return SourceError(f"the Docker daemon at {host} refused to {doing} {name!r}: {detail}")


def gone_before_save(name: str, host: str) -> ImageNotFound:
    return ImageNotFound(f"image {name!r} disappeared from the Docker daemon at {host} before the save")


def connect(docker_host: str | None = None) -> Engine:
    """The daemon the docker CLI would use (or ``docker_host``), with the lightest client that can."""
    host = docker_host or os.environ.get("DOCKER_HOST") or ""
    context_tls: Any = None
    if not host:
        host, context_tls = _context_endpoint()
    host = host or DEFAULT_HOST
    cert_path = os.environ.get("DOCKER_CERT_PATH")
    tls = context_tls is not None or bool(cert_path) or bool(os.environ.get("DOCKER_TLS_VERIFY"))
    parts = urlsplit(host)
    if parts.scheme == "unix" and parts.path:
        return SocketEngine(host, unix_path=parts.path)
    if parts.scheme in ("tcp", "http") and parts.hostname and not tls:
        try:
            port = parts.port or 2375
        except ValueError:
            raise unreachable(host, "its port is not a number") from None
        return SocketEngine(host, address=(parts.hostname, port))
    from cache.sources.engine_dockerpy import DockerPyEngine  # TLS, ssh://, npipe://: docker-py knows them

    return DockerPyEngine(host, tls=context_tls)


def _context_endpoint() -> tuple[str, Any]:
    """The current docker context's endpoint and TLS settings (``docker context use``), when it is
    not the default one. The docker CLI's config is read here; docker-py only for a real context."""
    name = os.environ.get("DOCKER_CONTEXT")
    if name is None:
        config = os.path.join(os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker"), "config.json")
        try:
            with open(config, "rb") as handle:
                name = json.load(handle).get("currentContext")
        except (OSError, ValueError, AttributeError):
            return "", None
    if not name or name == "default":
        return "", None
    try:
        from docker.context import ContextAPI

        context = ContextAPI.get_context(name)
    except Exception:  # a broken context store must not stop a pull that needs no context
        return "", None
    host = getattr(context, "Host", None) if context is not None else None
    if not isinstance(host, str) or not host:
        return "", None
    return host, getattr(context, "TLSConfig", None)


class SocketEngine:
    """The Engine API over a unix socket or plain TCP, with :mod:`cache.registry.http`."""

    def __init__(self, host: str, *, unix_path: str | None = None, address: tuple[str, int] | None = None) -> None:
        self.host = host
        self._unix_path = unix_path
        self._address = address or (UNIX_HOST_HEADER, 80)
        host, port = self._address
        self._origin = host if unix_path else f"{host}:{port}"
        # Over TCP the proxy settings apply, as they do to docker-py's requests and to the docker CLI.
        self._proxy = None if unix_path else proxy_for("http", host, port)
        self._prefix: str | None = None

    def _request(self, path: str, *, stream: bool = False) -> Response:
        """GET ``path``; for ``stream`` as HTTP/1.0 (no chunked framing) and with no read timeout."""
        host, port = self._address
        connection = Connection(host, port, timeout=Timeout(API_TIMEOUT, None if stream else API_TIMEOUT),
                                proxy=self._proxy, unix_path=self._unix_path)
        headers = {"Host": self._origin, "User-Agent": "layerhoard"}
        if self._proxy is not None:  # a plain-HTTP proxy takes the whole URL
            path, headers = f"http://{self._origin}{path}", {**headers, **self._proxy.headers}
        if not stream:
            headers["Connection"] = "close"
        try:
            connection.send("GET", path, headers, None, protocol="HTTP/1.0" if stream else "HTTP/1.1")
            return Response(None, self.host, connection, "GET")
        except TRANSIENT as error:
            connection.close()
            raise unreachable(self.host, _reason(error)) from None
        except BaseException:
            connection.close()
            raise

    def _api(self, path: str) -> str:
        """``path`` under the API version in use: the daemon's, asked once, or DOCKER_API_VERSION."""
        if self._prefix is None:
            version = os.environ.get("DOCKER_API_VERSION") or ""
            if not version:
                response = self._request("/_ping")
                try:
                    version = response.headers.get("Api-Version")
                    if not re.fullmatch(r"\d+\.\d+", version):
                        version = ""  # none, or not a version: the daemon's default (unversioned paths)
                    if response.status != 200:
                        raise unreachable(self.host, f"its /_ping answered HTTP {response.status}")
                finally:
                    response.release()
            self._prefix = f"/v{version}" if version else ""
        return self._prefix + path

    def _json(self, path: str) -> tuple[int, Any]:
        response = self._request(self._api(path))
        try:
            raw = response.read_all(MAX_JSON)
        except (ValueError, *TRANSIENT) as error:
            raise unreachable(self.host, f"a broken answer to {path}: {_reason(error)}") from None
        finally:
            response.release()
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, None

    def inspect(self, name: str) -> dict[str, Any]:
        status, info = self._json(f"/images/{_quoted(name)}/json")
        if status == 404:
            raise not_found(name, self.host)
        if status != 200:
            raise refused(self.host, "inspect", name, _message(status, info))
        if not isinstance(info, dict):
            raise SourceError(f"the Docker daemon at {self.host} answered the inspect of {name!r} with no image")
        return info

    def history(self, name: str) -> list[Any] | None:
        try:
            status, history = self._json(f"/images/{_quoted(name)}/history")
        except DaemonUnavailable:
            return None
        return history if status == 200 and isinstance(history, list) else None

    def info(self) -> dict[str, Any] | None:
        try:
            status, info = self._json("/info")
        except DaemonUnavailable:
            return None
        return info if status == 200 and isinstance(info, dict) else None

    @contextmanager
    def save(self, name: str) -> Iterator[Readable]:
        response = self._request(self._api(f"/images/{_quoted(name)}/get"), stream=True)
        try:
            if response.status != 200:
                detail = _message(response.status, _small_json(response))
                if response.status == 404:
                    raise gone_before_save(name, self.host)
                raise refused(self.host, "save", name, detail)
            yield response
        finally:
            response.release()

    def close(self) -> None:
        pass  # every request has its own connection, closed when it is answered


def _quoted(name: str) -> str:
    return quote(name, safe="/:")  # as docker-py: a name's slashes stay, the daemon's router expects them


def _small_json(response: Response) -> Any:
    try:
        return json.loads(response.read_all(1 << 20))
    except (ValueError, *TRANSIENT):
        return None


def _message(status: int, body: Any) -> str:
    message = body.get("message") if isinstance(body, dict) else None
    return f"HTTP {status}: {message}" if isinstance(message, str) and message else f"HTTP {status}"


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno is not None:
        return f"[Errno {error.errno}] {error.strerror}"
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
