"""One registry, spoken to over the OCI Distribution API (HTTP from :mod:`cache.registry.http`).

What it takes care of, so callers don't:
- scheme: plain HTTP for loopback hosts, HTTPS otherwise; ``insecure`` allows HTTP and
  unverified TLS for other hosts;
- auth: Bearer tokens (anonymous or with Docker's stored credentials), one token per scope,
  and Basic where a registry asks for it; the 401 challenge is answered lazily, so an open
  registry costs no extra request;
- retries with backoff on 5xx, 429 (honouring Retry-After) and cut connections;
- redirects to blob storage followed by hand, without the registry's Authorization header;
- resumable blob downloads with ``Range: bytes=N-``;
- a speed floor (:class:`SpeedFloor`): a response that stays under it is abandoned and retried
  like a cut one, so a registry that drips a blob cannot hold a pull for ever.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple, TypeVar
from urllib.parse import urlencode, urljoin, urlparse

from cache.errors import BlobNotFound, DigestMismatch, ImageNotFound, InvalidManifest, LayerhoardError, SourceError
from cache.model.digest import Digest, sha256_of
from cache.model.manifests import ACCEPT_ALL, MAX_MANIFEST_BYTES
from cache.registry.http import TRANSIENT, Body, Pool, Response, SpeedFloor, Timeout
from cache.registry.proxy import is_loopback_host

if TYPE_CHECKING:  # Docker's config is read only when a registry asks for credentials
    from cache.registry.credentials import Credentials

T = TypeVar("T")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Bytes of a read from the socket: large enough that per-chunk work (hashing calls, the hand-off
# to the writing thread) is small; a cut connection loses at most the read under way.
CHUNK = 1024 * 1024
USER_AGENT = "layerhoard/0.1"
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
TIMEOUT = Timeout(connect=10, read=120)
# Under 1 KiB/s for 30 s: no working link is that slow for that long, a stall of a few seconds
# (TCP backoff, a busy blob store) passes, and an abandoned transfer resumes with Range, so a
# false alarm costs a reconnect, not the bytes. curl has the knobs but no default.
MIN_SPEED = SpeedFloor(rate=1024, seconds=30.0)


def speed_floor(rate: int | None = None, seconds: float | None = None) -> SpeedFloor:
    """The floor of ``rate`` bytes/s (0: off) over ``seconds``; either one not given comes from
    LAYERHOARD_MIN_SPEED / LAYERHOARD_MIN_SPEED_TIME (serve and the API read them too), else
    from MIN_SPEED. A value there that does not parse is an error naming the variable."""
    from cache.units import parse_size

    if rate is None:
        rate = _environ("LAYERHOARD_MIN_SPEED", parse_size)
    if seconds is None:
        seconds = _environ("LAYERHOARD_MIN_SPEED_TIME", parse_window)
    return SpeedFloor(MIN_SPEED.rate if rate is None else rate, MIN_SPEED.seconds if seconds is None else seconds)


def parse_window(text: str) -> float:
    """A duration (``30s``) longer than zero: the window of the speed floor."""
    from cache.units import parse_duration

    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: the speed floor needs a window longer than 0 s")
    return seconds


def _environ(name: str, parse: Callable[[str], T]) -> T | None:
    text = os.environ.get(name, "").strip()
    try:
        return parse(text) if text else None
    except ValueError as error:
        raise LayerhoardError(f"{name}={text}: {error}") from None


def api_host(registry: str) -> str:
    """Where a registry name is served: Docker Hub's API lives on registry-1.docker.io."""
    return "registry-1.docker.io" if registry == "docker.io" else registry


def is_loopback(host: str) -> bool:
    """Whether a registry host (``name[:port]``) is this machine: spoken to over plain HTTP."""
    return is_loopback_host(urlparse(f"//{host}").hostname or "")


class RetryPolicy(NamedTuple):
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
        timeout: Timeout = TIMEOUT,
        floor: SpeedFloor | None = None,
    ) -> None:
        """``floor`` None: the one the environment sets, else the default (:func:`speed_floor`)."""
        self.registry = registry
        host = api_host(registry)
        self.base_url = base_url or f"{'http' if is_loopback(host) else 'https'}://{host}"
        self.insecure = insecure
        self._fallback_to_http = insecure and not is_loopback(host) and base_url is None
        self._credentials = credentials
        self._credentials_loaded = credentials is not None
        self.retry = retry or RetryPolicy()
        self.floor = floor if floor is not None else speed_floor()
        self.pool = Pool(max_idle=pool_size, timeout=timeout, verify_tls=not insecure, floor=self.floor)
        self._tokens: dict[str, str] = {}
        self._basic: dict[str, str] = {}
        self._lock = threading.Lock()
        self.request_count = 0
        self.bytes_received = 0

    def close(self) -> None:
        self.pool.close()

    # -- auth ----------------------------------------------------------------------------------
    @property
    def credentials(self) -> Credentials | None:
        if not self._credentials_loaded:
            from cache.registry.credentials import lookup

            self._credentials = lookup(self.registry)
            self._credentials_loaded = True
        return self._credentials

    def _auth_headers(self, scope: str) -> dict[str, str]:
        with self._lock:
            token = self._tokens.get(scope)
        if token:
            return {"Authorization": f"Bearer {token}"}
        return dict(self._basic)  # Basic once a registry asked for it, else anonymous

    def _answer_challenge(self, response: Response, scope: str) -> bool:
        """Get what the 401 asks for; False when there is nothing more we can offer."""
        challenge = response.headers.get("WWW-Authenticate", "")
        kind, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        credentials = self.credentials
        if kind.lower() == "basic":
            if not credentials or self._basic:
                return False
            self._basic = _basic_auth(credentials)
            return True
        if kind.lower() != "bearer" or "realm" not in params:
            return False
        query = {"service": params["service"]} if params.get("service") else {}
        query["scope"] = params.get("scope") or scope
        headers = _basic_auth(credentials) if credentials else {}
        url = f"{params['realm']}{'&' if '?' in params['realm'] else '?'}{urlencode(query)}"
        status, data = self._fetch_token(url, headers, params["realm"])
        if status != 200:
            who = "with the stored credentials" if credentials else "anonymously"
            raise SourceError(
                f"{self.registry}: token service refused access {who} (HTTP {status}); "
                "log in with `docker login` if the image is private"
            )
        try:
            body = json.loads(data)
        except ValueError:
            raise SourceError(f"{self.registry}: token service answered with something that is not JSON") from None
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise SourceError(f"{self.registry}: token service gave no token")
        with self._lock:
            self._tokens[scope] = token
        return True

    def _fetch_token(self, url: str, headers: dict[str, str], realm: str) -> tuple[int, bytes]:
        """GET the token service (following its redirects): the status and the (small) body."""
        for _ in range(6):
            try:
                reply = self.pool.request("GET", url, {"User-Agent": USER_AGENT, **headers})
                try:
                    data = reply.read_all(MAX_MANIFEST_BYTES)
                finally:
                    reply.release()
            except (ValueError, *TRANSIENT) as error:
                raise SourceError(f"{self.registry}: cannot get a token from {realm}: {error}") from None
            self._count()
            location = reply.headers.get("Location")
            if reply.status not in (301, 302, 303, 307, 308) or not location:
                return reply.status, data
            url = urljoin(url, location)
        raise SourceError(f"{self.registry}: too many redirects from the token service {realm}")

    def _count(self, received: int = 0) -> None:
        with self._lock:
            self.request_count += 1
            self.bytes_received += received

    # -- requests ------------------------------------------------------------------------------
    def request(
        self, method: str, path: str, scope: str, headers: dict[str, str] | None = None, body: Body = None
    ) -> Response:
        """Send with auth, redirects and retries; the body is left unread for the caller to stream
        (and release). Returns the final response, whatever its status (callers decide what a 404
        means); raises SourceError when retries are exhausted. A file ``body`` is rewound before
        every send (retries, the resend after a 401), so it must be seekable."""
        last_error = ""
        for attempt in range(self.retry.attempts):
            try:
                response = self._send_authenticated(method, path, scope, headers or {}, body)
            except TRANSIENT as error:
                last_error = f"connection failed: {error}"
                if self._fallback_to_http and self.base_url.startswith("https://"):
                    self.base_url = "http://" + self.base_url[len("https://"):]
                    continue
                if attempt + 1 < self.retry.attempts:  # no wait after the last try: nothing follows it
                    time.sleep(self.retry.wait(attempt))
                continue
            if response.status in RETRY_STATUSES:
                last_error = f"HTTP {response.status}"
                wait = self.retry.wait(attempt, response.headers.get("Retry-After"))
                _release(response)
                if attempt + 1 < self.retry.attempts:
                    time.sleep(wait)
                continue
            return response
        raise SourceError(f"{self.registry}: {method} {path} failed after {self.retry.attempts} tries ({last_error})")

    def _send_authenticated(
        self, method: str, path: str, scope: str, headers: dict[str, str], body: Body = None
    ) -> Response:
        response = self._send_following_redirects(method, path, scope, headers, body)
        if response.status == 401 and self._answer_challenge(response, scope):
            _release(response)
            response = self._send_following_redirects(method, path, scope, headers, body)
        if response.status == 401:
            _release(response)
            raise SourceError(
                f"{self.registry}: access denied to {path} (HTTP 401); log in with `docker login {self.registry}`"
            )
        return response

    def _send_following_redirects(
        self, method: str, path: str, scope: str, headers: dict[str, str], body: Body = None
    ) -> Response:
        url = self.base_url + path
        own_host = urlparse(url).netloc
        for _ in range(6):
            send_headers = {"User-Agent": USER_AGENT, **headers}
            if urlparse(url).netloc == own_host:  # blob storage elsewhere never sees our credentials
                send_headers.update(self._auth_headers(scope))
            response = self.pool.request(method, url, send_headers, body)
            self._count()
            location = response.headers.get("Location")
            if response.status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                _release(response)
                if response.status == 303:
                    method = "GET"
                continue
            return response
        raise SourceError(f"{self.registry}: too many redirects for {path}")

    # -- manifests -----------------------------------------------------------------------------
    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str]:
        """The exact bytes and Content-Type of a manifest or index (size-limited before reading)."""
        path = f"/v2/{repository}/manifests/{reference}"
        response = self.request("GET", path, _scope(repository), {"Accept": ACCEPT_ALL})
        try:
            if response.status == 404:
                raise ImageNotFound(f"{self.registry}/{repository}:{reference} not found in the registry")
            if response.status != 200:
                raise SourceError(f"{self.registry}: GET {path} answered HTTP {response.status}")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > MAX_MANIFEST_BYTES:
                raise InvalidManifest(f"manifest {reference} is larger than {MAX_MANIFEST_BYTES} bytes ({declared})")
            try:
                body = response.read_all(MAX_MANIFEST_BYTES)
            except ValueError:
                raise InvalidManifest(f"manifest {reference} is larger than {MAX_MANIFEST_BYTES} bytes") from None
        except TRANSIENT as error:
            raise SourceError(f"{self.registry}: manifest {reference} cut off: {error}") from None
        finally:
            _release(response)
        with self._lock:
            self.bytes_received += len(body)
        claimed = response.headers.get("Docker-Content-Digest")
        if claimed and claimed != str(sha256_of(body)):
            raise DigestMismatch(
                f"{self.registry}/{repository}:{reference}: manifest content has digest "
                f"{sha256_of(body)}, the registry says {claimed}"
            )
        return body, response.headers.get("Content-Type", "")

    def list_tags(self, repository: str, page_size: int = 1000) -> list[str]:
        """Every tag of ``repository``, following the ``Link: <…>; rel="next"`` pages: one request per
        ``page_size`` tags. A repository the registry does not know has no tags."""
        tags: list[str] = []
        path: str | None = f"/v2/{repository}/tags/list?{urlencode({'n': page_size})}"
        while path is not None:
            response = self.request("GET", path, _scope(repository), {"Accept": "application/json"})
            try:
                if response.status == 404:
                    return tags
                if response.status != 200:
                    raise SourceError(f"{self.registry}: GET {path} answered HTTP {response.status}")
                try:
                    document = json.loads(response.read_all(MAX_MANIFEST_BYTES))
                except ValueError:
                    raise SourceError(f"{self.registry}: the tags list of {repository} is not JSON "
                                      f"of at most {MAX_MANIFEST_BYTES} bytes") from None
            except TRANSIENT as error:
                raise SourceError(f"{self.registry}: tags list of {repository} cut off: {error}") from None
            finally:
                _release(response)
            listed = document.get("tags") if isinstance(document, dict) else None
            if listed is not None and not (isinstance(listed, list) and all(isinstance(t, str) for t in listed)):
                raise SourceError(f"{self.registry}: the tags list of {repository} is not a list of strings")
            tags += listed or []
            path = _next_page(response.headers.get("Link", ""))
        return tags

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
            response = self.request("GET", path, _scope(repository), headers)
            try:
                if response.status == 404:
                    raise BlobNotFound(f"{self.registry}/{repository}: blob {digest} not found in the registry")
                if response.status == 416 and offset:
                    return received  # we already hold every byte; the digest check decides
                if response.status not in (200, 206):
                    raise SourceError(f"{self.registry}: GET {path} answered HTTP {response.status}")
                if offset and (response.status == 200 or not _range_starts_at(response, offset)):
                    on_restart()  # Range ignored: take the whole blob again
                    offset = 0
                for chunk in response.stream(CHUNK):
                    on_chunk(chunk)
                    offset += len(chunk)
                    received += len(chunk)
                    with self._lock:
                        self.bytes_received += len(chunk)
                return received
            except TRANSIENT as error:
                failures += 1
                if failures >= self.retry.attempts:
                    raise SourceError(f"{self.registry}: blob {digest} failed {failures} times mid-transfer "
                                      f"(last: {error})") from None
                time.sleep(self.retry.wait(failures - 1))
            finally:
                _release(response)

    def open_blob(self, repository: str, digest: Digest) -> BlobResponse:
        """A streaming blob (for pull-through serving); use it as a context manager."""
        path = f"/v2/{repository}/blobs/{digest}"
        response = self.request("GET", path, _scope(repository))
        if response.status == 404:
            _release(response)
            raise BlobNotFound(f"{self.registry}/{repository}: blob {digest} not found in the registry")
        if response.status != 200:
            _release(response)
            raise SourceError(f"{self.registry}: GET {path} answered HTTP {response.status}")
        return BlobResponse(response, self)


class BlobResponse:
    """A blob being received: its headers, and its body in chunks (counted as bytes received)."""

    def __init__(self, response: Response, client: RegistryClient) -> None:
        self._response = response
        self._client = client
        self.headers = response.headers

    def iter_content(self, chunk_size: int = CHUNK) -> Iterator[bytes]:
        for chunk in self._response.stream(chunk_size):
            with self._client._lock:
                self._client.bytes_received += len(chunk)
            yield chunk

    def __enter__(self) -> BlobResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        _release(self._response)


def _release(response: Response) -> None:
    """Give the connection back to the pool; the short body of a redirect or a 401 is read first
    so the connection stays open for the request that follows."""
    response.release(drain=response.status in (301, 302, 303, 307, 308, 401))


def _basic_auth(credentials: Credentials) -> dict[str, str]:
    token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def _scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def _next_page(link: str) -> str | None:
    """The path and query of a ``Link: <URL>; rel="next"`` header (same registry only), or None."""
    match = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', link)
    if match is None:
        return None
    target = urlparse(match.group(1))
    if not target.path.startswith("/v2/"):
        return None  # not a page of this API: stop rather than follow it
    return f"{target.path}?{target.query}" if target.query else target.path


def _range_starts_at(response: Response, offset: int) -> bool:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return match is not None and int(match.group(1)) == offset
