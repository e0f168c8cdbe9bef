"""The remote tier at work: look up manifests and blobs there before the origin, fill it after.

Trust: a blob from the remote is checked exactly as one from the origin (the BlobPuller checks its
sha256, size and diff_id), and a manifest asked for by digest is checked against that digest.
A manifest found by the remote's tag for a name is trusted as far as write access to the remote
is: that is what naming through the remote means (docs/team-cache.md).

Failures never fail the local job: the first error reading the remote (down, refused, bad bytes)
prints one warning line and the remote is skipped for the rest of the command; the first refused
push prints one line and the command stops filling it but keeps reading from it.

Pushes run on one background thread of the same process, started as soon as an image is recorded,
so a `warm` of many images overlaps them with the next pulls; the command waits for it at exit
(:meth:`RemoteTier.wait`). A thread rather than a detached process: it reuses this command's
connections, tokens and credential-helper answers, its failures are reported where the user looks,
a CI job that ends does not kill it halfway, and a prune started after the command cannot evict a
blob it is still sending.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cache.errors import BlobNotFound, ImageNotFound, InvalidManifest, LayerhoardError, SourceError
from cache.ingest.blobs import Fetch
from cache.ingest.referrers import RegistryReferrers
from cache.model.digest import Digest, sha256_of
from cache.model.manifests import (
    ACCEPT_ALL,
    OCI_INDEX,
    Descriptor,
    Index,
    Manifest,
    Platform,
    parse_config,
    parse_manifest_or_index,
)
from cache.model.refs import ImageRef
from cache.registry import push
from cache.registry.client import RegistryClient, RetryPolicy
from cache.registry.http import Timeout
from cache.remote.address import INDEX_KEY, RemoteSpec, platform_key, remote_tag
from cache.store.attachments import attached_to, attachments
from cache.store.blobstore import BlobStore

# A remote that is down must cost seconds, not the origin's patient minutes of retries.
REMOTE_RETRY = RetryPolicy(attempts=2, backoff=0.1, max_wait=2.0)
REMOTE_TIMEOUT = Timeout(connect=3, read=60)


def warn_on_stderr(message: str) -> None:
    print(f"layerhoard: warning: {message}", file=sys.stderr, flush=True)


@dataclass
class PushSummary:
    images: int = 0
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    blobs_present: int = 0
    bytes_uploaded: int = 0
    manifests_put: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: PushSummary) -> None:
        self.images += other.images
        self.blobs_uploaded += other.blobs_uploaded
        self.blobs_mounted += other.blobs_mounted
        self.blobs_present += other.blobs_present
        self.bytes_uploaded += other.bytes_uploaded
        self.manifests_put += other.manifests_put
        self.errors += other.errors


class RemoteTier:
    """One remote for one command; thread-safe."""

    def __init__(
        self,
        spec: RemoteSpec,
        *,
        insecure: bool = False,
        jobs: int = 4,
        warn: Callable[[str], None] = warn_on_stderr,
        client: RegistryClient | None = None,
    ) -> None:
        self.spec = spec
        self.jobs = max(1, jobs)
        self.client = client or RegistryClient(spec.registry, insecure=insecure, retry=REMOTE_RETRY,
                                               pool_size=self.jobs + 2, timeout=REMOTE_TIMEOUT)
        self._warn = warn
        self._lock = threading.Lock()
        self._down = False
        self._push_off = spec.read_only
        self._known: set[Digest] = set()  # blobs the remote is known to hold (served, HEADed, pushed)
        self._pusher: ThreadPoolExecutor | None = None
        self._pending: list[Future[PushSummary]] = []
        self.blobs_served = 0
        self.bytes_served = 0
        self.pushed = PushSummary()

    @property
    def readable(self) -> bool:
        return not self._down

    @property
    def writable(self) -> bool:
        return not self._down and not self._push_off

    def fail(self, error: BaseException | str) -> None:
        """Reading failed: say so once, then skip the remote for the rest of the command."""
        with self._lock:
            if self._down:
                return
            self._down = True
        self._warn(f"remote {self.spec.name} skipped for this command: {error}")

    def refuse_push(self, error: BaseException | str) -> None:
        with self._lock:
            if self._push_off or self._down:
                return
            self._push_off = True
        self._warn(f"remote {self.spec.name} is not filled by this command: {error}")

    # -- reading -------------------------------------------------------------------------------
    def manifest(self, reference: str) -> tuple[bytes, str] | None:
        """A manifest by tag or digest, or None (not there, or the remote is unusable)."""
        if self._down:
            return None
        try:
            return self.client.get_manifest(self.spec.repository, reference)
        except ImageNotFound:
            return None
        except LayerhoardError as error:
            self.fail(error)
            return None

    def manifest_by_digest(self, digest: Digest) -> tuple[bytes, str] | None:
        found = self.manifest(str(digest))
        if found is not None and sha256_of(found[0]) != digest:
            self.fail(f"manifest {digest} came back with digest {sha256_of(found[0])}")
            return None
        return found

    def resolve(self, kind: str, name: str, platform: str) -> Manifest | Index | None:
        """The image the remote's tag for (kind, name, platform) names, or None."""
        found = self.manifest(remote_tag(kind, name, platform))
        if found is None:
            return None
        try:
            return parse_manifest_or_index(found[0], found[1], f"remote manifest for {name}")
        except InvalidManifest as error:
            self.fail(error)
            return None

    def resolve_ref(self, ref: ImageRef, platform: Platform | None, all_platforms: bool) -> tuple[bytes, str] | None:
        """A registry reference through the remote: by digest when pinned, else by the name's tag."""
        if ref.digest is not None:
            return self.manifest_by_digest(ref.digest)
        key = "index" if all_platforms else platform_key(platform or Platform.host())
        return self.manifest(remote_tag("docker", f"{ref.name}:{ref.tag}", key))

    def fetch_first(self, origin: Fetch | None) -> Fetch:
        """A BlobPuller fetch that asks the remote first and the origin (if any) on a miss.

        Both serve the same content-addressed bytes, so a transfer cut off from the remote
        resumes from the origin at the offset reached; the BlobPuller checks the whole blob.
        """

        def fetch(descriptor: Descriptor, offset: int, on_chunk: Callable[[bytes], None],
                  on_restart: Callable[[], None]) -> int:
            if not self._down:
                got = 0

                def counted(chunk: bytes) -> None:
                    nonlocal got
                    on_chunk(chunk)
                    got += len(chunk)

                def restarted() -> None:
                    nonlocal got, offset
                    got = offset = 0
                    on_restart()

                try:
                    received = self.client.fetch_blob(self.spec.repository, descriptor.digest, offset, counted,
                                                      restarted)
                except BlobNotFound:
                    pass
                except SourceError as error:
                    self.fail(error)
                else:
                    with self._lock:
                        self._known.add(descriptor.digest)
                        self.blobs_served += 1
                        self.bytes_served += received
                    return received
                offset += got
            if origin is None:
                raise BlobNotFound(f"blob {descriptor.digest} is not in the remote {self.spec.name}")
            return origin(descriptor, offset, on_chunk, on_restart)

        return fetch

    # -- filling -------------------------------------------------------------------------------
    def push_later(self, store: BlobStore, top: Manifest | Index, kind: str, name: str,
                   origin: ImageRef | None = None) -> None:
        """Queue a push of a recorded image (blobs, manifests, tags) on the background thread."""
        if not self.writable:
            return
        with self._lock:
            if self._pusher is None:
                self._pusher = ThreadPoolExecutor(1, thread_name_prefix="remote-push")
            self._pending.append(self._pusher.submit(self.push_image, store, top, kind, name, origin))

    def wait(self) -> PushSummary:
        """Wait for queued pushes (their failures were already reported) and sum them up."""
        with self._lock:
            pending, self._pending = self._pending, []
        for future in pending:
            future.result()
        return self.pushed

    def close(self) -> None:
        self.wait()
        if self._pusher is not None:
            self._pusher.shutdown(wait=True)
        self.client.close()

    def push_image(
        self, store: BlobStore, top: Manifest | Index, kind: str, name: str, origin: ImageRef | None = None
    ) -> PushSummary:
        """Put a stored image into the remote: the blobs missing there (HEAD first; mounted from the
        origin's repository when the origin is the same registry), then manifests, then the name's
        tags. Never raises for the remote's sake: a refusal is reported once and pushing stops."""
        summary = PushSummary(images=1)
        try:
            if self.writable:
                self._push(store, top, kind, name, origin, summary)
        except SourceError as error:  # refused, down, or failing: stop filling, keep reading
            summary.errors.append(str(error))
            self.refuse_push(error)
        except LayerhoardError as error:  # a blob evicted meanwhile, a damaged manifest: skip this image
            summary.errors.append(str(error))
            self._warn(f"{name} not pushed to {self.spec.name}: {error}")
        with self._lock:
            self.pushed.add(summary)
        return summary

    def _push(self, store: BlobStore, top: Manifest | Index, kind: str, name: str, origin: ImageRef | None,
              summary: PushSummary) -> None:
        manifests = _manifests_of(store, top)
        blobs: dict[Digest, int] = {}
        for manifest in manifests:
            for descriptor in (manifest.config, *manifest.layers):
                blobs[descriptor.digest] = descriptor.size
        mount_from = origin.repository if origin and origin.registry == self.spec.registry else None
        with ThreadPoolExecutor(min(self.jobs, max(1, len(blobs))), thread_name_prefix="remote-blob") as pool:
            outcomes = list(pool.map(lambda item: self._push_blob(store, item[0], item[1], mount_from),
                                     blobs.items()))
        for outcome, size in zip(outcomes, blobs.values(), strict=True):
            _count(summary, outcome, size)
        tagged = "@" not in name  # a pull by digest is found by digest: no tag needed
        for manifest in manifests:
            if manifest is not top:  # an index's children first: registries check that they exist
                summary.manifests_put += self._put_manifest(manifest, str(manifest.digest))
            platform = _platform_of(store, manifest)
            if tagged and platform is not None:  # each platform answers its own tag for the name
                summary.manifests_put += self._put_manifest(manifest, remote_tag(kind, name, platform))
        if isinstance(top, Index) and len(manifests) == len(top.manifests):
            # only a complete index can be pushed: registries refuse one whose children are missing
            summary.manifests_put += self._put_manifest(top, remote_tag(kind, name, INDEX_KEY) if tagged
                                                        else str(top.digest))
        elif not tagged and isinstance(top, Manifest):
            summary.manifests_put += self._put_manifest(top, str(top.digest))
        self._push_attachments(store, top, summary)

    def _push_attachments(self, store: BlobStore, top: Manifest | Index, summary: PushSummary) -> None:
        """What travels with the image, after it (registries may refuse a subject they lack): each
        referrer's blobs, then the referrer by digest, and the remote's tag schema where it has no
        referrers API; each cosign manifest under its tag."""
        # an index as a referrer is not pushed: the manifests it names may not all be here
        attached = [(item, item.manifest) for item in attachments(store, [top.digest])
                    if isinstance(item.manifest, Manifest)]
        for item, manifest in attached:
            for blob in (manifest.config, *manifest.layers):
                _count(summary, self._push_blob(store, blob.digest, blob.size, None), blob.size)
            summary.manifests_put += self._put_manifest(manifest, item.cosign_tag or str(item.digest))
        for subject in dict.fromkeys(item.subject for item, _ in attached if item.cosign_tag is None):
            summary.manifests_put += self._keep_tag_schema(store, subject)

    def _keep_tag_schema(self, store: BlobStore, subject: Digest) -> int:
        """Add the subject's referrers to the remote's ``sha256-<hex>`` index, as the distribution
        spec asks of a client pushing to a registry without the referrers API; 1 if put."""
        listing = RegistryReferrers(self.client, self.spec.repository).listing(subject, ())
        if listing.via == "referrers-api":
            return 0  # the registry lists them itself
        listed = {descriptor.digest: {**descriptor.to_json(), **({"artifactType": kind} if kind else {})}
                  for descriptor, kind in listing.entries}
        ours = {item.digest: item.descriptor() for item in attached_to(store, subject) if item.via == "referrer"}
        if ours.keys() <= listed.keys():
            return 0
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                            "manifests": [d for _, d in sorted({**listed, **ours}.items())]},
                           separators=(",", ":")).encode()
        push.put_manifest(self.client, self.spec.repository, f"sha256-{subject.hex}", index, OCI_INDEX)
        return 1

    def _push_blob(self, store: BlobStore, digest: Digest, size: int, mount_from: str | None) -> str:
        repository = self.spec.repository
        if digest in self._known or push.blob_exists(self.client, repository, digest):
            outcome = "present"
        else:
            session = push.mount_blob(self.client, repository, digest, mount_from) if mount_from else None
            if mount_from and session is None:
                outcome = "mounted"
            else:
                with store.open(digest) as body:  # streamed from the store; the registry checks the digest
                    push.upload_blob(self.client, repository, digest, size, body, session)
                outcome = "uploaded"
        with self._lock:
            self._known.add(digest)
        return outcome

    def _put_manifest(self, manifest: Manifest | Index, reference: str) -> int:
        """PUT unless the remote already has exactly these bytes there (HEAD first); 1 if put."""
        if push.manifest_digest(self.client, self.spec.repository, reference, ACCEPT_ALL) == str(manifest.digest):
            return 0
        push.put_manifest(self.client, self.spec.repository, reference, manifest.raw, manifest.media_type)
        return 1


def _count(summary: PushSummary, outcome: str, size: int) -> None:
    if outcome == "uploaded":
        summary.blobs_uploaded += 1
        summary.bytes_uploaded += size
    elif outcome == "mounted":
        summary.blobs_mounted += 1
    else:
        summary.blobs_present += 1


def _manifests_of(store: BlobStore, top: Manifest | Index) -> list[Manifest]:
    """The plain manifests to push: the top one, or an index's children that are stored."""
    if isinstance(top, Manifest):
        return [top]
    stored = []
    for entry in top.manifests:
        if store.has(entry.digest):
            child = parse_manifest_or_index(store.read_bytes(entry.digest), entry.media_type,
                                            f"manifest {entry.digest}")
            if isinstance(child, Manifest):
                stored.append(child)
    return stored


def _platform_of(store: BlobStore, manifest: Manifest) -> str | None:
    """The tag platform of a stored manifest, from its config (None for a non-image artifact)."""
    try:
        platform = parse_config(store.read_bytes(manifest.config.digest)).platform
    except LayerhoardError:
        return None
    return platform_key(platform) if platform is not None else None


def push_cached(store: BlobStore, tier: RemoteTier, name: str) -> PushSummary:
    """Push the cached image ``name`` (as index.json names it) with its name's tags (push-cache)."""
    entry = store.image_descriptor(name)
    if entry is None:
        raise ImageNotFound(f"{name} is not in the cache")
    digest = Descriptor.from_json(entry, f"index.json entry {name}").digest
    top = parse_manifest_or_index(store.read_bytes(digest), what=f"manifest of {name}")
    record = store.index.image(name) or {}
    kind = "daemon" if str(record.get("source", "")).startswith("docker-daemon:") else "docker"
    try:
        origin = ImageRef.parse(name) if kind == "docker" else None
    except LayerhoardError:
        origin = None
    return tier.push_image(store, top, kind, name, origin)
