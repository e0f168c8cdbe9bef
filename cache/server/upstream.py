"""Pull-through (``serve --upstream NAME=URL``): misses are fetched from upstream into the store.

One upstream fetch per blob however many clients ask: the first miss starts a :class:`Flight`
that streams the blob into the store (under the digest's cross-process lock, so a concurrent
``layerhoard pull`` does not fetch it again either) and into a spool file beside it; every client,
the first included, tails the spool from its own offset, so Range works on a miss too. The fetch runs in its own
thread and finishes even when the client that started it goes away. The last byte is held back
until the digest is checked: a client never receives a whole blob that failed verification.

Tags go upstream first (a cached pull costs one manifest request) and fall back to the store when
the upstream fails. A tag is recorded in index.json once every blob of its image is stored.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from cache.errors import BlobNotFound, ImageNotFound, LayerhoardError
from cache.ingest.commit import Arrival, commit
from cache.model.digest import Digest, sha256_of
from cache.model.manifests import Index, Manifest, parse_manifest_or_index
from cache.registry.client import CHUNK, RegistryClient
from cache.server.errors import RegistryError
from cache.server.names import Repository, normalise_registry
from cache.store.blobstore import BlobStore
from cache.store.fsutil import InUse
from cache.store.images import missing_blobs


def parse_upstreams(pairs: list[str]) -> dict[str, str]:
    """``NAME=URL`` options as {registry: base URL}."""
    upstreams = {}
    for pair in pairs:
        name, sep, url = pair.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise LayerhoardError(f"invalid upstream {pair!r}: use NAME=URL, like docker.io=https://registry-1.docker.io")
        upstreams[normalise_registry(name)] = url.rstrip("/")
    return upstreams


class Flight:
    """One blob on its way from upstream into the store, readable while it arrives."""

    def __init__(self, digest: Digest) -> None:
        self.digest = digest
        self.path: Path | None = None
        self.size: int | None = None
        self.written = 0
        self.state = "starting"  # -> "fetching" -> "done" | "failed"; or "starting" -> "stored"
        self.error: RegistryError | None = None
        self._cond = threading.Condition()

    def _set(self, **changes: object) -> None:
        with self._cond:
            for key, value in changes.items():
                setattr(self, key, value)
            self._cond.notify_all()

    def wait_started(self) -> None:
        """Block until bytes can be read (or the blob is stored, or the fetch failed)."""
        with self._cond:
            self._cond.wait_for(lambda: self.state != "starting")
            if self.state == "failed" and self.error is not None:
                raise self.error

    def wait_finished(self) -> None:
        """Block until the blob is stored (or raise the fetch's error)."""
        with self._cond:
            self._cond.wait_for(lambda: self.state in ("done", "stored", "failed"))
            if self.state == "failed":
                raise self.error or RegistryError("UNAVAILABLE", "upstream fetch failed")

    def readable_beyond(self, offset: int) -> int:
        """Block until bytes past ``offset`` may be sent; returns how far. Raises when the fetch failed."""
        with self._cond:
            self._cond.wait_for(lambda: self.state != "fetching" or self._limit() > offset)
            if self.state == "failed":
                raise self.error or RegistryError("UNAVAILABLE", "upstream fetch failed")
            return self._limit()

    def _limit(self) -> int:
        if self.state == "done" or self.size is None:
            return self.written
        return min(self.written, self.size - 1)  # the last byte waits for the digest check


class Upstreams:
    """The miss handler of a server: fetches manifests and blobs of configured registries."""

    def __init__(self, store: BlobStore, urls: dict[str, str], on_fetch: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.urls = urls
        self._clients: dict[str, RegistryClient] = {}
        self._flights: dict[Digest, Flight] = {}
        self._pending: dict[str, Manifest | Index] = {}
        self._lock = threading.Lock()
        self._on_fetch = on_fetch or (lambda _what: None)

    def covers(self, repo: Repository) -> bool:
        return repo.registry in self.urls

    def _client(self, registry: str) -> RegistryClient:
        with self._lock:
            client = self._clients.get(registry)
            if client is None:
                client = RegistryClient(registry, base_url=self.urls[registry], pool_size=32)
                self._clients[registry] = client
            return client

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    # -- manifests -----------------------------------------------------------------------------
    def manifest(self, repo: Repository, reference: Digest | str) -> Digest:
        """Fetch a manifest into the store; raises MANIFEST_UNKNOWN or UNAVAILABLE."""
        self._on_fetch(f"manifest {repo.full}:{reference}")
        try:
            raw, content_type = self._client(repo.registry).get_manifest(repo.path, str(reference))
            parsed = parse_manifest_or_index(raw, content_type, what=f"manifest of {repo.full}:{reference}")
        except ImageNotFound as error:
            raise RegistryError("MANIFEST_UNKNOWN", str(error)) from None
        except LayerhoardError as error:
            raise RegistryError("UNAVAILABLE", f"upstream {repo.registry}: {error}") from None
        digest = sha256_of(raw)
        if isinstance(reference, Digest) and digest != reference:
            raise RegistryError("UNAVAILABLE", f"upstream {repo.registry} sent manifest {digest} for {reference}")
        self.store.put_bytes(raw, parsed.media_type, source=f"docker://{repo.full}")
        if isinstance(reference, str):
            with self._lock:
                self._pending[f"{repo.full}:{reference}"] = parsed
            self._record_complete()
        return digest

    def _record_complete(self) -> None:
        """Name in index.json every fetched tag whose image is now wholly stored."""
        with self._lock:
            pending = list(self._pending.items())
        for ref, top in pending:
            # an index is complete once one platform's blobs are all stored (missing_blobs): the
            # name points at the index, as a pull's does, and serve answers every platform stored
            if missing_blobs(self.store, top.digest):
                continue
            try:
                commit(self.store, Arrival(f"docker://{ref}", top), [ref])
            except LayerhoardError:
                continue  # evicted meanwhile: the next fetch tries again
            with self._lock:
                self._pending.pop(ref, None)

    # -- blobs ---------------------------------------------------------------------------------
    def blob_size(self, repo: Repository, digest: Digest) -> int:
        """HEAD upstream; raises BLOB_UNKNOWN or UNAVAILABLE."""
        path = f"/v2/{repo.path}/blobs/{digest}"
        try:
            reply = self._client(repo.registry).request("HEAD", path, f"repository:{repo.path}:pull")
        except LayerhoardError as error:
            raise RegistryError("UNAVAILABLE", f"upstream {repo.registry}: {error}") from None
        reply.release()  # a HEAD has no body to read
        length = reply.headers.get("Content-Length", "")
        if reply.status == 200 and length.isdigit():
            return int(length)
        raise RegistryError("BLOB_UNKNOWN", "blob unknown to registry", {"digest": str(digest)})

    def blob(self, repo: Repository, digest: Digest) -> Flight:
        """The flight bringing ``digest`` in (started now unless one is under way), once readable."""
        with self._lock:
            flight = self._flights.get(digest)
            if flight is None:
                flight = self._flights[digest] = Flight(digest)
                threading.Thread(target=self._fetch, args=(repo, flight), daemon=True,
                                 name=f"upstream-{digest.short}").start()
        flight.wait_started()
        return flight

    def _fetch(self, repo: Repository, flight: Flight) -> None:
        try:
            with self.store.writer(flight.digest) as writer:
                if writer is None:  # stored meanwhile (another process held the lock)
                    flight._set(state="stored")
                    return
                self._on_fetch(f"blob {flight.digest}")
                # Clients tail a spool file written without buffering: the store's writer writes
                # behind on its own thread, so its file is no guide to which bytes are readable.
                # gc leaves the spool alone while it fills; it is removed after (readers keep their
                # open descriptors).
                with InUse(self.store.ingest_folder, f"spool-{uuid.uuid4().hex}") as in_use:
                    spool = in_use.path
                    with os.fdopen(in_use.writable(), "wb", buffering=0) as out, \
                            self._client(repo.registry).open_blob(repo.path, flight.digest) as response:
                        length = response.headers.get("Content-Length", "")
                        flight._set(path=spool, size=int(length) if length.isdigit() else None, state="fetching")
                        for chunk in response.iter_content(CHUNK):
                            writer.write(chunk)
                            out.write(chunk)
                            flight._set(written=flight.written + len(chunk))
                    writer.commit(source=f"docker://{repo.full}")
            flight._set(state="done")
        except BlobNotFound as error:
            flight._set(state="failed", error=RegistryError("BLOB_UNKNOWN", str(error), {"digest": str(flight.digest)}))
        except Exception as error:  # anything else: the clients see UNAVAILABLE or a cut stream
            self._on_fetch(f"failed: blob {flight.digest}: {type(error).__name__}: {error}")
            flight._set(state="failed", error=RegistryError("UNAVAILABLE", f"upstream {repo.registry}: {error}"))
        finally:
            with self._lock:
                self._flights.pop(flight.digest, None)
            self._record_complete()
