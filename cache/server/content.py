"""The read side: manifests (with Accept negotiation), tags and catalog, answered from the store.

Manifests go out as their exact stored bytes with their own media type. A client that does not
accept the stored type of an index gets this host's platform manifest from it instead (what
distribution does for old clients); any other mismatch is MANIFEST_UNKNOWN, never a rewrite.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from cache.errors import BlobNotFound, InvalidDigest, InvalidManifest, InvalidReference
from cache.formats.index_json import IndexEntry
from cache.model.digest import Digest, parse_digest
from cache.model.manifests import MAX_MANIFEST_BYTES, Index, Platform, parse_manifest_or_index
from cache.model.refs import SERVED_KINDS, ImageRef, served_name
from cache.server.errors import RegistryError
from cache.server.names import Repository
from cache.store.blobstore import BlobStore

_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)  # the spec's grammar: ASCII only


@dataclass(frozen=True)
class ManifestBody:
    raw: bytes
    media_type: str
    digest: Digest


def parse_reference(reference: str) -> Digest | str:
    """A digest, or a tag; anything else is DIGEST_INVALID or TAG_INVALID."""
    if ":" in reference:
        return checked_digest(reference)
    if not _TAG.fullmatch(reference):
        raise RegistryError("TAG_INVALID", "invalid tag", {"tag": reference[:128]})
    return reference


def lookup_reference(reference: str) -> Digest | str:
    """A reference to look up (GET, HEAD, DELETE): a tag outside the grammar names nothing, so it is
    MANIFEST_UNKNOWN (404), as registries and the conformance suite expect, not TAG_INVALID."""
    try:
        return parse_reference(reference)
    except RegistryError as error:
        if error.code != "TAG_INVALID":
            raise
        raise RegistryError("MANIFEST_UNKNOWN", "manifest unknown", error.detail) from None


def checked_digest(text: str) -> Digest:
    try:
        return parse_digest(text)
    except InvalidDigest as error:
        raise RegistryError("DIGEST_INVALID", str(error)) from None


def stored_manifest(store: BlobStore, digest: Digest) -> ManifestBody | None:
    """The manifest or index stored under ``digest``; None when absent or not a manifest."""
    try:
        if store.size(digest) > MAX_MANIFEST_BYTES:
            return None
        raw = store.read_bytes(digest)
        parsed = parse_manifest_or_index(raw, what=f"manifest {digest}")
    except (BlobNotFound, InvalidManifest):
        return None
    return ManifestBody(raw, parsed.media_type, digest)


def tagged_entry(store: BlobStore, repo: Repository, tag: str) -> tuple[str, dict[str, object]] | None:
    """The stored name (and its entry) that ``repo:tag`` means in serve: an image pushed into serve
    first, then the registry image the cache mirrors, then a daemon image of that name. The three
    are kept apart in the cache (none overwrites another); serve answers with one."""
    for kind in SERVED_KINDS:
        name = f"{kind}{repo.full}:{tag}"
        entry = store.image_descriptor(name)
        if entry is not None:
            return name, entry
    return None


def tagged_digest(store: BlobStore, repo: Repository, tag: str) -> Digest | None:
    found = tagged_entry(store, repo, tag)
    if found is None:
        return None
    entry = found[1]
    try:
        return parse_digest(str(entry.get("digest")))
    except InvalidDigest:
        return None


def negotiate(store: BlobStore, body: ManifestBody, accept: list[str], pinned: bool) -> ManifestBody:
    """What to send for ``accept``; a request by digest always gets the digest's bytes."""
    if pinned or not accept or "*/*" in accept or body.media_type in accept:
        return body
    parsed = parse_manifest_or_index(body.raw, what=f"manifest {body.digest}")
    if isinstance(parsed, Index):
        try:
            child = stored_manifest(store, parsed.choose(Platform.host()).digest)
        except InvalidManifest:
            child = None
        if child is not None and child.media_type in accept:
            return child
    raise RegistryError("MANIFEST_UNKNOWN", f"stored as {body.media_type}, which the client does not accept",
                        {"accept": accept})


def accepted_types(headers: list[str]) -> list[str]:
    """Media types from every Accept header (parameters such as q= dropped)."""
    return [part.split(";")[0].strip() for header in headers for part in header.split(",") if part.strip()]


def named_entries(entries: list[IndexEntry]) -> Iterator[tuple[ImageRef, IndexEntry]]:
    """index.json's entries with the image names they carry; names we did not write are left out."""
    for entry in entries:
        if not entry.name:
            continue
        try:
            yield ImageRef.parse(served_name(entry.name)), entry
        except InvalidReference:
            continue  # a name we did not write: not ours to serve


def _stored_refs(store: BlobStore) -> list[ImageRef]:
    return [ref for ref, _ in named_entries(store.index_entries())]


def known_name(store: BlobStore, repo: Repository) -> bool:
    return any(ref.name == repo.full for ref in _stored_refs(store))


def tags(store: BlobStore, repo: Repository) -> list[str]:
    return sorted({ref.tag for ref in _stored_refs(store) if ref.name == repo.full and ref.tag and not ref.digest})


def catalog(store: BlobStore, registry: str) -> list[str]:
    return sorted({ref.repository for ref in _stored_refs(store) if ref.registry == registry})


def page(items: list[str], n: str | None, last: str | None) -> tuple[list[str], bool]:
    """The ``n`` items after ``last`` (the spec's pagination) and whether more follow."""
    if last:
        items = [item for item in items if item > last]
    if n is None:
        return items, False
    if not re.fullmatch(r"[0-9]{1,9}", n):  # not isdigit(): "²" is a digit to it, and int() refuses it
        raise RegistryError("UNSUPPORTED", "n must be a non-negative integer", status=400)
    count = int(n)
    return items[:count], len(items) > count


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a single ``bytes=`` range (RFC 9110), None for the whole blob.

    A form we do not handle (several ranges, another unit) is ignored, as the RFC allows; a
    range that starts beyond the end is RANGE_INVALID (416). Positions of any length are taken:
    one beyond what any blob holds counts as "past the end", without converting thousands of digits.
    """
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*", header)
    if match is None or not (match.group(1) or match.group(2)):
        return None
    first_text, last_text = match.groups()
    if not first_text:  # suffix: the last N bytes
        length = _position(last_text)
        if length == 0:
            raise RegistryError("RANGE_INVALID", "empty suffix range", {"size": size})
        return max(0, size - length), size - 1
    first = _position(first_text)
    last = _position(last_text) if last_text else size - 1
    if first >= size or last < first:
        raise RegistryError("RANGE_INVALID", f"range {header.strip()[:80]} is not within the blob's {size} bytes",
                            {"size": size})
    return first, min(last, size - 1)


def _position(digits: str) -> int:
    """A byte position; more than 18 digits is beyond any blob (and int() of 5000 digits raises)."""
    return int(digits) if len(digits) <= 18 else 1 << 62
