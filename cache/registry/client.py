"""One registry, spoken to over the OCI Distribution API with requests.

What it takes care of, so callers don't:
- scheme: plain HTTP for loopback hosts, HTTPS otherwise; ``insecure`` allows HTTP and
  unverified TLS for other hosts;
- auth: Bearer tokens (anonymous or with Docker's stored credentials), one token per scope,
  and Basic where a registry asks for it; the 401 challenge is answered lazily, so an open
  registry costs no extra request;
- retries with backoff on 5xx, 429 (honouring Retry-After) and cut connections;
- redirects to blob storage followed by hand, without the registry's Authorization header;
- resumable blob downloads with ``Range: bytes=N-``.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlparse

import requests
import requests.adapters
import requests.auth
import urllib3

from cache.digest import Digest, sha256_of
from cache.errors import BlobNotFound, DigestMismatch, ImageNotFound, InvalidManifest, SourceError
from cache.model import ACCEPT_ALL, MAX_MANIFEST_BYTES
from cache.registry.credentials import Credentials, lookup

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Bytes of a read from the socket; what a cut connection loses of the last read, so keep it modest.
CHUNK = 128 * 1024
USER_AGENT = "layerhoard/0.1"
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,
)


def api_host(registry: str) -> str:
    """Where a registry name is served: Docker Hub's API lives on registry-1.docker.io."""
    return "registry-1.docker.io" if registry == "docker.io" else registry


def is_loopback(host: str) -> bool:
    name = urlparse(f"//{host}").hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass
class RetryPolicy:
    attempts: int = 5
    backoff: float = 0.5  # seconds, doubled each try
    max_wait: float = 30.0

    def wait(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after and retry_after.strip().isdigit():
            return min(float(retry_after), self.max_wait)
        return min(self.backoff * 2.0**attempt, self.max_wait)


class RegistryClient:
    """A client for one registry host. Thread-safe: blob downloads run in parallel threads."""

    def __init__(
        self,
        registry: str,
        *,
        insecure: bool = False,
        credentials: Credentials | None = None,
        retry: RetryPolicy | None = None,
        pool_size: int = 16,
        base_url: str | None = None,
    ) -> None:
        self.registry = registry
        host = api_host(registry)
        self.base_url = base_url or f"{'http' if is_loopback(host) else 'https'}://{host}"
        self.insecure = insecure
        self._fallback_to_http = insecure and not is_loopback(host) and base_url is None
        self._credentials = credentials
        self._credentials_loaded = credentials is not None
        self.retry = retry or RetryPolicy()
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = USER_AGENT
        self.session.verify = not insecure
        self._tokens: dict[str, str] = {}
        self._basic = False
        self._lock = threading.Lock()
        self.request_count = 0
        self.bytes_received = 0

    def close(self) -> None:
        self.session.close()

    # -- auth ----------------------------------------------------------------------------------
    @property
    def credentials(self) -> Credentials | None:
        if not self._credentials_loaded:
            self._credentials = lookup(self.registry)
            self._credentials_loaded = True
        return self._credentials

    def _auth_headers(self, scope: str) -> dict[str, str]:
        with self._lock:
            token = self._tokens.get(scope)
        if token:
            return {"Authorization": f"Bearer {token}"}
        return {}  # anonymous, or Basic that the session adds itself

    def _answer_challenge(self, response: requests.Response, scope: str) -> bool:
        """Get what the 401 asks for; False when there is nothing more we can offer."""
        challenge = response.headers.get("WWW-Authenticate", "")
        kind, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        if kind.lower() == "basic":
            if not self.credentials or self._basic:
                return False
            self._basic = True
            self.session.auth = (self.credentials.username, self.credentials.password)
            return True
        if kind.lower() != "bearer" or "realm" not in params:
            return False
        query = {"service": params["service"]} if params.get("service") else {}
        query["scope"] = params.get("scope") or scope
        auth = None
        if self.credentials:
            auth = (self.credentials.username, self.credentials.password)
        try:
            reply = requests.get(params["realm"], params=query, auth=auth, timeout=(10, 60),
                                 verify=not self.insecure, headers={"User-Agent": USER_AGENT})
        except requests.RequestException as error:
            raise SourceError(f"{self.registry}: cannot get a token from {params['realm']}: {error}") from None
        self._count(0)
        if reply.status_code != 200:
            who = "with the stored credentials" if auth else "anonymously"
            raise SourceError(
                f"{self.registry}: token service refused access {who} (HTTP {reply.status_code}); "
                "log in with `docker login` if the image is private"
            )
        try:
            body = reply.json()
        except ValueError:
            raise SourceError(f"{self.registry}: token service answered with something that is not JSON") from None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise SourceError(f"{self.registry}: token service gave no token")
        with self._lock:
            self._tokens[scope] = token
        return True

    def _count(self, received: int) -> None:
        with self._lock:
            self.request_count += 1
            self.bytes_received += received

    # -- requests ------------------------------------------------------------------------------
    def request(
        self, method: str, path: str, scope: str, headers: dict[str, str] | None = None, stream: bool = False
    ) -> requests.Response:
        """Send with auth, redirects and retries. Returns the final response, whatever its status
        (callers decide what a 404 means); raises SourceError when retries are exhausted."""
        last_error = ""
        for attempt in range(self.retry.attempts):
            try:
                response = self._send_authenticated(method, path, scope, headers or {}, stream)
            except _TRANSIENT as error:
                last_error = f"connection failed: {error}"
                if self._fallback_to_http and self.base_url.startswith("https://"):
                    self.base_url = "http://" + self.base_url[len("https://"):]
                    continue
                time.sleep(self.retry.wait(attempt))
                continue
            if response.status_code in RETRY_STATUSES:
                last_error = f"HTTP {response.status_code}"
                wait = self.retry.wait(attempt, response.headers.get("Retry-After"))
                response.close()
                time.sleep(wait)
                continue
            return response
        raise SourceError(f"{self.registry}: {method} {path} failed after {self.retry.attempts} tries ({last_error})")

    def _send_authenticated(
        self, method: str, path: str, scope: str, headers: dict[str, str], stream: bool
    ) -> requests.Response:
        response = self._send_following_redirects(method, path, scope, headers, stream)
        if response.status_code == 401 and self._answer_challenge(response, scope):
            response.close()
            response = self._send_following_redirects(method, path, scope, headers, stream)
        if response.status_code == 401:
            response.close()
            raise SourceError(
                f"{self.registry}: access denied to {path} (HTTP 401); log in with `docker login {self.registry}`"
            )
        return response

    def _send_following_redirects(
        self, method: str, path: str, scope: str, headers: dict[str, str], stream: bool
    ) -> requests.Response:
        url = self.base_url + path
        own_host = urlparse(url).netloc
        for _ in range(6):
            send_headers = dict(headers)
            same_host = urlparse(url).netloc == own_host
            if same_host:
                send_headers.update(self._auth_headers(scope))
            response = self.session.request(
                method, url, headers=send_headers, stream=stream, allow_redirects=False, timeout=(10, 120),
                # blob storage must not see the registry's credentials (Basic is the session's)
                auth=None if same_host else _NoAuth(),
            )
            self._count(0)
            if response.status_code in (301, 302, 303, 307, 308) and "Location" in response.headers:
                url = urljoin(url, response.headers["Location"])
                response.close()
                if response.status_code == 303:
                    method = "GET"
                continue
            return response
        raise SourceError(f"{self.registry}: too many redirects for {path}")

    # -- manifests -----------------------------------------------------------------------------
    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str]:
        """The exact bytes and Content-Type of a manifest or index (size-limited before reading)."""
        path = f"/v2/{repository}/manifests/{reference}"
        response = self.request("GET", path, _scope(repository), {"Accept": ACCEPT_ALL}, stream=True)
        with response:
            if response.status_code == 404:
                raise ImageNotFound(f"{self.registry}/{repository}:{reference} not found in the registry")
            if response.status_code != 200:
                raise SourceError(f"{self.registry}: GET {path} answered HTTP {response.status_code}")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > MAX_MANIFEST_BYTES:
                raise InvalidManifest(f"manifest {reference} is larger than {MAX_MANIFEST_BYTES} bytes ({declared})")
            body = bytearray()
            for chunk in response.iter_content(64 * 1024):
                body += chunk
                if len(body) > MAX_MANIFEST_BYTES:
                    raise InvalidManifest(f"manifest {reference} is larger than {MAX_MANIFEST_BYTES} bytes")
            with self._lock:
                self.bytes_received += len(body)
            claimed = response.headers.get("Docker-Content-Digest")
            if claimed and claimed != str(sha256_of(bytes(body))):
                raise DigestMismatch(
                    f"{self.registry}/{repository}:{reference}: manifest content has digest "
                    f"{sha256_of(bytes(body))}, the registry says {claimed}"
                )
            return bytes(body), response.headers.get("Content-Type", "")

    # -- blobs ---------------------------------------------------------------------------------
    def fetch_blob(
        self,
        repository: str,
        digest: Digest,
        offset: int,
        on_chunk: Callable[[bytes], None],
        on_restart: Callable[[], None],
    ) -> int:
        """Stream a blob from ``offset`` into ``on_chunk``, resuming with Range after a cut.

        ``on_restart`` is called when the bytes already taken must be dropped (the registry ignored
        Range). Returns the bytes received. The caller checks the digest.
        """
        path = f"/v2/{repository}/blobs/{digest}"
        received = 0
        failures = 0
        while True:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            response = self.request("GET", path, _scope(repository), headers, stream=True)
            try:
                if response.status_code == 404:
                    raise BlobNotFound(f"{self.registry}/{repository}: blob {digest} not found in the registry")
                if response.status_code == 416 and offset:
                    return received  # we already hold every byte; the digest check decides
                if response.status_code not in (200, 206):
                    raise SourceError(f"{self.registry}: GET {path} answered HTTP {response.status_code}")
                if offset and (response.status_code == 200 or not _range_starts_at(response, offset)):
                    on_restart()  # Range ignored: take the whole blob again
                    offset = 0
                for chunk in response.iter_content(CHUNK):
                    on_chunk(chunk)
                    offset += len(chunk)
                    received += len(chunk)
                    with self._lock:
                        self.bytes_received += len(chunk)
                return received
            except _TRANSIENT as error:
                failures += 1
                if failures >= self.retry.attempts:
                    raise SourceError(f"{self.registry}: blob {digest} kept failing mid-transfer ({error})") from None
                time.sleep(self.retry.wait(failures - 1))
            finally:
                response.close()

    def open_blob(self, repository: str, digest: Digest) -> requests.Response:
        """A streaming response for a blob (for pull-through serving). The caller closes it."""
        path = f"/v2/{repository}/blobs/{digest}"
        response = self.request("GET", path, _scope(repository), stream=True)
        if response.status_code == 404:
            response.close()
            raise BlobNotFound(f"{self.registry}/{repository}: blob {digest} not found in the registry")
        if response.status_code != 200:
            response.close()
            raise SourceError(f"{self.registry}: GET {path} answered HTTP {response.status_code}")
        return response


class _NoAuth(requests.auth.AuthBase):
    """Sends no credentials (overrides the session's Basic auth on redirects to blob storage)."""

    def __call__(self, request: Any) -> Any:
        request.headers.pop("Authorization", None)
        return request


def _scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def _range_starts_at(response: requests.Response, offset: int) -> bool:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return match is not None and int(match.group(1)) == offset
