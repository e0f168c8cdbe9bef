"""The push side of the OCI Distribution API, on the same client (auth, retries, redirects, TLS).

Only what a cache needs to fill a registry: ask whether a blob is there (HEAD), mount it from
another repository of the same registry, upload it in one PUT, and put a manifest. Every
request asks for the scope ``repository:<name>:pull,push``, so one token serves the whole push.

The monolithic upload (POST for a session, then one PUT with the whole blob and its digest) is
the one every registry implements; chunked PATCH uploads would only help resuming, and a cache
can simply send a blob again.
"""

from __future__ import annotations

from typing import BinaryIO
from urllib.parse import urlencode, urlparse

from cache.errors import SourceError
from cache.model.digest import Digest
from cache.registry.client import RegistryClient, _release
from cache.registry.http import Response


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


class PushRefused(SourceError):
    """The registry answered a push with a refusal (401, 403, 405...): no point trying more."""


def blob_exists(client: RegistryClient, repository: str, digest: Digest, scope: str | None = None) -> bool:
    """HEAD the blob: what the registry already has is never uploaded again."""
    response = client.request("HEAD", f"/v2/{repository}/blobs/{digest}", scope or push_scope(repository))
    _release(response)
    if response.status in (200, 404):
        return response.status == 200
    raise _refusal(client, "HEAD", f"blob {digest}", response)


def manifest_digest(client: RegistryClient, repository: str, reference: str, accept: str) -> str | None:
    """HEAD a manifest: the digest the registry holds under ``reference``, or None when it has none."""
    response = client.request("HEAD", f"/v2/{repository}/manifests/{reference}", push_scope(repository),
                              {"Accept": accept})
    _release(response)
    if response.status == 404:
        return None
    if response.status == 200:
        return response.headers.get("Docker-Content-Digest") or ""
    raise _refusal(client, "HEAD", f"manifest {reference}", response)


def mount_blob(client: RegistryClient, repository: str, digest: Digest, from_repository: str) -> str | None:
    """Ask for a cross-repository mount. None when mounted; else the upload session the registry
    opened instead (it may not offer mounts, or not have the blob in ``from_repository``)."""
    query = urlencode({"mount": str(digest), "from": from_repository})
    response = client.request("POST", f"/v2/{repository}/blobs/uploads/?{query}", push_scope(repository))
    _release(response)
    if response.status == 201:
        return None
    if response.status == 202 and response.headers.get("Location"):
        return _session_path(client, response.headers["Location"])
    raise _refusal(client, "POST", f"mount of {digest}", response)


def start_upload(client: RegistryClient, repository: str) -> str:
    response = client.request("POST", f"/v2/{repository}/blobs/uploads/", push_scope(repository))
    _release(response)
    if response.status == 202 and response.headers.get("Location"):
        return _session_path(client, response.headers["Location"])
    raise _refusal(client, "POST", "an upload session", response)


def upload_blob(
    client: RegistryClient, repository: str, digest: Digest, size: int, body: BinaryIO, session: str | None = None
) -> None:
    """Send the whole blob in one PUT (opening a session first unless given one)."""
    session = session or start_upload(client, repository)
    separator = "&" if "?" in session else "?"
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    response = client.request("PUT", f"{session}{separator}{urlencode({'digest': str(digest)})}",
                              push_scope(repository), headers, body)
    _release(response)
    if response.status not in (201, 204):
        raise _refusal(client, "PUT", f"blob {digest}", response)


def put_manifest(client: RegistryClient, repository: str, reference: str, raw: bytes, media_type: str) -> None:
    """PUT a manifest or index (exact bytes, so its digest is kept) under a tag or its digest."""
    headers = {"Content-Type": media_type, "Content-Length": str(len(raw))}
    response = client.request("PUT", f"/v2/{repository}/manifests/{reference}", push_scope(repository), headers, raw)
    _release(response)
    if response.status not in (200, 201, 204):
        raise _refusal(client, "PUT", f"manifest {reference}", response)


def _session_path(client: RegistryClient, location: str) -> str:
    """An upload Location as a path on this registry (registries send absolute or relative URLs;
    one behind a proxy may name a host we cannot reach, so only its path and query are kept)."""
    parsed = urlparse(location)
    return parsed.path + (f"?{parsed.query}" if parsed.query else "")


def _refusal(client: RegistryClient, method: str, what: str, response: Response) -> SourceError:
    kind = PushRefused if response.status in (401, 403, 405) else SourceError
    return kind(f"{client.registry}: {method} of {what} answered HTTP {response.status}")
