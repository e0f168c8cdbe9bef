"""The Engine API through docker-py, for the daemons :class:`cache.sources.engine.SocketEngine`
does not speak to: TLS (DOCKER_TLS_VERIFY, DOCKER_CERT_PATH, a context's certificates),
``ssh://`` and ``npipe://``. Same calls, same errors; imported only when such a daemon is used.
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors
import requests

from cache.errors import DaemonUnavailable, SourceError
from cache.sources.engine import API_TIMEOUT, gone_before_save, not_found, refused, unreachable


class DockerPyEngine:
    def __init__(self, host: str, *, tls: Any = None) -> None:
        self.host = host
        try:
            kwargs: dict[str, Any] = docker.utils.kwargs_from_env()
        except docker.errors.DockerException as error:
            raise DaemonUnavailable(f"bad Docker settings in the environment: {error}") from None
        kwargs["base_url"] = host
        if tls is not None:
            kwargs["tls"] = tls
        try:
            self._client = docker.APIClient(version="auto", timeout=API_TIMEOUT, **kwargs)
        except docker.errors.DockerException as error:
            raise unreachable(host, _reason(error)) from None

    def inspect(self, name: str) -> dict[str, Any]:
        try:
            info = self._client.inspect_image(name)
        except docker.errors.ImageNotFound:
            raise not_found(name, self.host) from None
        except docker.errors.APIError as error:
            raise refused(self.host, "inspect", name, error.explanation) from None
        except requests.exceptions.RequestException as error:
            raise unreachable(self.host, _reason(error)) from None
        if not isinstance(info, dict):
            raise SourceError(f"the Docker daemon at {self.host} answered the inspect of {name!r} with no image")
        return info

    def history(self, name: str) -> list[Any] | None:
        try:
            history = self._client.history(name)
        except (docker.errors.APIError, requests.exceptions.RequestException):
            return None
        return history if isinstance(history, list) else None

    def info(self) -> dict[str, Any] | None:
        try:
            info = self._client.info()
        except (docker.errors.APIError, requests.exceptions.RequestException):
            return None
        return info if isinstance(info, dict) else None

    @contextmanager
    def save(self, name: str) -> Iterator[Any]:
        client = self._client
        try:
            response = client._get(client._url("/images/{0}/get", name), stream=True, timeout=None)
            client._raise_for_status(response)
        except docker.errors.NotFound:
            raise gone_before_save(name, self.host) from None
        except docker.errors.APIError as error:
            raise refused(self.host, "save", name, error.explanation) from None
        except requests.exceptions.RequestException as error:
            raise unreachable(self.host, _reason(error)) from None
        try:
            yield _body(response)
        finally:
            response.close()

    def close(self) -> None:
        self._client.close()


def _body(response: Any) -> Any:
    """The save stream's body as something with ``readinto``, reading as directly as it can.

    urllib3's ``read`` re-buffers and joins every read; http.client's own ``readinto`` decodes
    the chunked transfer encoding straight into our buffers. Used only when urllib3 has nothing
    buffered and nothing to decode (the daemon sends a plain tar); else urllib3's response.
    """
    raw = response.raw
    inner = getattr(raw, "_fp", None)
    plain = (raw.headers.get("Content-Encoding") or "identity").lower() == "identity"
    untouched = not getattr(raw, "_decoded_buffer", None) and not getattr(raw, "_fp_bytes_read", 0)
    if isinstance(inner, http.client.HTTPResponse) and plain and untouched:
        return inner
    return raw


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    match = re.search(r"(\[Errno [^\]]+\][^')\"]*)", text)
    return match.group(1).strip() if match else text[:200]
