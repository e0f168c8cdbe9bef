"""Fetching the signatures, SBOMs and attestations that describe the manifests a pull stored.

Registries keep them two ways, and both are asked for every manifest given (an index and each
platform manifest a pull stored):

- OCI 1.1 referrers, manifests whose ``subject`` names the image: listed by the referrers API
  (``GET /v2/<repo>/referrers/<digest>``), else, where the registry has no such API (it answers
  404, as distribution 2.8 does), by the referrers tag schema: an index under the tag
  ``sha256-<hex>``;
- cosign's tags ``sha256-<hex>.sig``, ``.att`` and ``.sbom``, always (cosign writes those unless
  told to use OCI 1.1).
A referrer of a referrer (a signature of an SBOM) is asked for too, one level deeper and no more.

What it trusts: nothing. A listed referrer is fetched by its digest and its bytes must hash to it
and name the subject they are listed for; its blobs go through the
:class:`~cache.ingest.blobs.BlobPuller` like any blob (digest and size checked before they are
visible), and the manifest is stored only once they are, then linked in the content graph. Bytes
that fail a check raise, and nothing of that referrer is stored. An untrusted registry cannot make
a pull fetch without end: at most :data:`MAX_REFERRERS` manifests per pull, :data:`MAX_DEPTH` deep.

What it costs, per manifest asked about: one request to the referrers API (where the tag schema
is the fallback, a HEAD of its tag too) and three HEADs for cosign's tags (a HEAD does not count
against Docker Hub's pull limit; a GET follows only for a tag that exists), plus one per new
referrer and its new blobs; a referrer already stored costs no request beyond its listing. The
caller asks only about the manifests its pull newly stored, unless told to refresh: a cached pull
costs what it did before.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol
from urllib.parse import quote

from cache.errors import DigestMismatch, ImageNotFound, InvalidManifest, SizeMismatch, SourceError
from cache.ingest.blobs import BlobPuller
from cache.ingest.commit import Arrival
from cache.ingest.pull import ReferrerOptions
from cache.ingest.report import PullReport, ReferrerReport
from cache.model.digest import Digest, sha256_of
from cache.model.manifests import (
    ACCEPT_ALL,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    Descriptor,
    Index,
    Manifest,
    parse_manifest_or_index,
    subject_of,
)
from cache.registry.client import RegistryClient
from cache.store.attachments import artifact_kind, cosign_tag
from cache.store.blobstore import BlobStore
from cache.store.graph import COSIGN_SUFFIXES, link_cosign, link_referrer
from cache.store.images import missing_blobs

MAX_DEPTH = 2  # the image's referrers, and theirs
MAX_REFERRERS = 256  # manifests per pull; what a listing holds beyond it is left out


class Listing(NamedTuple):
    """What a source lists for a subject: descriptors with the artifactType each was listed with."""

    entries: list[tuple[Descriptor, str]]
    via: str  # referrers-api or tag-schema


class ReferrerSource(Protocol):
    """Where referrers come from: a registry repository here."""

    def fetch(self, descriptor: Descriptor, offset: int, on_chunk: Callable[[bytes], None],
              on_restart: Callable[[], None]) -> int: ...

    def listing(self, subject: Digest, types: tuple[str, ...]) -> Listing: ...

    def tagged(self, tag: str) -> bytes | None: ...

    def manifest(self, digest: Digest) -> bytes: ...


class RegistryReferrers:
    """A registry repository as a :class:`ReferrerSource`; ``from_remote``: it is the team's remote
    tier (cache/remote/), which holds the referrers of the images it was filled with."""

    def __init__(self, client: RegistryClient, repository: str, from_remote: bool = False) -> None:
        self.client = client
        self.repository = repository
        self.from_remote = from_remote

    def fetch(self, descriptor: Descriptor, offset: int, on_chunk: Callable[[bytes], None],
              on_restart: Callable[[], None]) -> int:
        return self.client.fetch_blob(self.repository, descriptor.digest, offset, on_chunk, on_restart)

    def listing(self, subject: Digest, types: tuple[str, ...]) -> Listing:
        """The referrers API's answer; where the registry has none (404), the tag schema's index."""
        path = f"/v2/{self.repository}/referrers/{subject}"
        if len(types) == 1:  # the API filters one type; the answer is filtered here again either way
            path += f"?artifactType={quote(types[0], safe='')}"
        response = self.client.request("GET", path, f"repository:{self.repository}:pull", {"Accept": OCI_INDEX})
        try:
            if response.status not in (200, 404):
                raise SourceError(f"{self.client.registry}: GET {path} answered HTTP {response.status} "
                                  "(--no-referrers skips referrers)")
            try:
                body = response.read_all(MAX_MANIFEST_BYTES)
            except ValueError:
                raise InvalidManifest(f"referrers of {subject}: more than {MAX_MANIFEST_BYTES} bytes") from None
        finally:
            response.release()
        if response.status == 200:
            return Listing(listed_entries(body, f"referrers of {subject}"), "referrers-api")
        tag = f"sha256-{subject.hex}"  # no referrers API here: the tag schema's index, if any
        tagged = self.tagged(tag)
        return Listing(listed_entries(tagged, f"tag {tag}") if tagged is not None else [], "tag-schema")

    def tagged(self, tag: str) -> bytes | None:
        """The manifest under ``tag``, None when there is none. Asked with HEAD first: most images
        have no such tag, and a HEAD does not count against a registry's pull limit (Docker Hub's)."""
        path = f"/v2/{self.repository}/manifests/{tag}"
        response = self.client.request("HEAD", path, f"repository:{self.repository}:pull", {"Accept": ACCEPT_ALL})
        response.release()
        if response.status == 404:
            return None
        try:
            return self.client.get_manifest(self.repository, tag)[0]
        except ImageNotFound:
            return None  # deleted between the two requests

    def manifest(self, digest: Digest) -> bytes:
        return self.client.get_manifest(self.repository, str(digest))[0]


def listed_entries(raw: bytes, what: str) -> list[tuple[Descriptor, str]]:
    """The descriptors an index of referrers lists, each with its artifactType ("" when none)."""
    parsed = parse_manifest_or_index(raw, OCI_INDEX, what)
    if not isinstance(parsed, Index):
        raise InvalidManifest(f"{what}: not an image index")
    kinds = [entry.get("artifactType") if isinstance(entry, dict) else None
             for entry in json.loads(raw).get("manifests", [])]
    return [(descriptor, kind if isinstance(kind, str) else "")
            for descriptor, kind in zip(parsed.manifests, kinds, strict=True)]


def wanted(manifest: Manifest, types: tuple[str, ...]) -> bool:
    """Whether ``--referrers-type`` keeps it: its artifactType, config or a blob's media type is asked."""
    if not types:
        return True
    return artifact_kind(manifest) in types or any(blob.media_type in types for blob in manifest.layers)


class ReferrerFetch:
    """One pull's fetching of referrers: a budget shared by every subject it is asked about."""

    def __init__(self, store: BlobStore, source: ReferrerSource, origin: str, options: ReferrerOptions) -> None:
        self.store = store
        self.source = source
        self.origin = origin  # recorded as each blob's source, like the image's
        self.options = options
        self.puller = BlobPuller(store, source.fetch, origin, jobs=1)
        self.reports: list[ReferrerReport] = []
        self.seen: set[Digest] = set()

    def run(self, subjects: Iterable[Digest]) -> list[ReferrerReport]:
        level = list(dict.fromkeys(subjects))
        for _ in range(MAX_DEPTH):
            level = [found for subject in level for found in self._subject(subject)]
        return self.reports

    def _subject(self, subject: Digest) -> list[Digest]:
        """Fetch what refers to ``subject``; returns the digests taken (to be asked about in turn)."""
        taken = []
        listing = self.source.listing(subject, self.options.types)
        for descriptor, kind in listing.entries:
            if self.options.types and kind and kind not in self.options.types:
                continue  # listed with another type: not fetched at all
            raw = self._stored(descriptor.digest) or self._fetched(subject, descriptor)
            if raw is not None and self._take(subject, raw, listing.via):
                taken.append(descriptor.digest)
        for suffix in COSIGN_SUFFIXES:
            raw = self.source.tagged(cosign_tag(subject, suffix))
            if raw is not None and self._take(subject, raw, f"cosign:{suffix}"):
                taken.append(sha256_of(raw))
        return taken

    def _stored(self, digest: Digest) -> bytes | None:
        """A referrer stored already, with every blob it names: nothing to fetch."""
        if not self.store.has(digest) or missing_blobs(self.store, digest):
            return None
        return self.store.read_bytes(digest)

    def _fetched(self, subject: Digest, descriptor: Descriptor) -> bytes | None:
        if len(self.seen) >= MAX_REFERRERS:
            return None
        raw = self.source.manifest(descriptor.digest)
        if sha256_of(raw) != descriptor.digest:
            raise DigestMismatch(f"referrer {descriptor.digest} of {subject}: content has digest {sha256_of(raw)}")
        if len(raw) != descriptor.size:
            raise SizeMismatch(f"referrer {descriptor.digest} of {subject}: {len(raw)} bytes, "
                               f"listed as {descriptor.size}")
        return raw

    def _take(self, subject: Digest, raw: bytes, via: str) -> bool:
        """Store one referrer (blobs first, then the manifest) and link it; False when left out."""
        digest = sha256_of(raw)
        if digest in self.seen or len(self.seen) >= MAX_REFERRERS:
            return False
        parsed = parse_manifest_or_index(raw, what=f"referrer {digest} of {subject}")
        if not isinstance(parsed, Manifest) or not wanted(parsed, self.options.types):
            return False  # an index as a referrer is left out: nothing here reads one
        cosign = via.startswith("cosign:")
        named = subject_of(raw)
        if not cosign and (named is None or named[0] != subject):
            raise InvalidManifest(f"referrer {digest} is listed for {subject} but names "
                                  f"{named[0] if named else 'no subject'}")
        self.seen.add(digest)
        reused = self.store.has(digest) and not missing_blobs(self.store, digest)
        if not reused:
            self.puller.pull_artifact(parsed)
            self.store.put_bytes(raw, parsed.media_type, self.origin)
        if cosign:
            link_cosign(self.store, subject, digest, via[7:])
        else:
            link_referrer(self.store, subject, digest, artifact_kind(parsed))
        size = len(raw) + parsed.config.size + sum(blob.size for blob in parsed.layers)
        self.reports.append(ReferrerReport(str(subject), str(digest), artifact_kind(parsed), via, size, reused))
        return True


def fetch_referrers(
    store: BlobStore, source: ReferrerSource, subjects: Iterable[Digest], origin: str,
    options: ReferrerOptions | None = None,
) -> list[ReferrerReport]:
    """Fetch, check, store and link what refers to ``subjects`` (manifest digests a pull stored)
    and, one level deeper, what refers to those; returns what was looked at, for the PullReport."""
    options = options or ReferrerOptions()
    if not options.enabled:
        return []
    return ReferrerFetch(store, source, origin, options).run(subjects)


def add_registry_referrers(store: BlobStore, report: PullReport | Arrival, source: RegistryReferrers,
                           subjects: list[Digest], options: ReferrerOptions) -> None:
    """Fetch the referrers of ``subjects`` from a registry into ``report`` (its requests and bytes
    counted with the pull's). Given an Arrival, it runs before the image is named: a referrer that
    fails its checks fails the pull with nothing named, and the next pull asks again."""
    if not subjects:
        return
    client = source.client
    received, requests = client.bytes_received, client.request_count
    report.referrers = fetch_referrers(store, source, subjects, report.source, options)
    report.bytes_fetched += client.bytes_received - received
    report.requests += client.request_count - requests
    if source.from_remote:
        report.bytes_from_remote += client.bytes_received - received
