"""diff_id claims: a layer stored now, its uncompressed sha256 checked later, before anything uses it.

Why: the check of a layer's diff_id (gunzip every layer, sha256 every uncompressed byte) was two
thirds of a cold pull's CPU on a gzip-6 image of real files (bench/pull.py: 2.1 s of 3.3 s for
1 GiB of tar), and skopeo does not do it. So the command line's pull stores a layer once its
digest and size are checked and records what its config says it uncompresses to as a *claim*
(``pending/<blob>`` in the metadata index); once the command has printed its result,
:func:`start_background_check` starts a detached ``layerhoard verify --diff-ids`` that settles
every claim. A process, not a thread: a thread must end before the command exits, so the command
would take as long as before. The library's own pulls (the Python API, serve) still check as
they stream.

What it trusts: nothing. A claim is never read as a pair (invariant 4: a pair is recorded only by
:func:`check_claim`, after hashing the uncompressed bytes here). Whatever needs a pair asks here
first: a daemon pull's stored layers (:func:`verified_blobs_for`), an SBOM scan and an export that
writes diff_ids (:func:`require_diff_ids`, through ``CachedImage.require_image``). They wait for
a check in progress (one lock per blob) or make it themselves. A claim the bytes refute is kept
(``baddiff/<blob>``): every use of it fails, ``verify`` reports it, the pair is never recorded.

Crash safety: the claim is written after the blob is published, so a pull killed in between
leaves a blob without a pair, which is hashed when first used (as before claims). A check killed
midway leaves its claims pending: ls, du and verify show them, a use checks them, and the next
pull's background check takes them up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from cache.errors import BlobNotFound, DigestMismatch
from cache.model.digest import CHUNK, Digest, parse_digest
from cache.model.manifests import compression_of
from cache.store.blobstore import BlobStore

CHECKERS = 2  # gunzip and sha256 release the GIL: one layer per core
CHECK_LOCK = "diffid-check.lock"  # shared by every background check while it runs


class ClaimCheck(NamedTuple):
    """How one claim ended: ``found`` says what the bytes are when they refute it ('' if verified)."""

    blob: Digest
    diff_id: Digest
    found: str

    @property
    def verified(self) -> bool:
        return not self.found

    def to_json(self) -> dict[str, str]:
        return {"blob": str(self.blob), "diff_id": str(self.diff_id), "found": self.found}


def claim_lock(store: BlobStore, blob: Digest, wait: bool = True) -> contextlib.AbstractContextManager[bool]:
    """Held while one process checks ``blob``'s claims; a process that dies lets go of it."""
    return store.locks_folder.lock(f"diffid-{blob.hex}.lock", blocking=wait)


def check_claim(store: BlobStore, blob: Digest, diff_id: Digest, media_type: str, *, wait: bool = True
                ) -> ClaimCheck | None:
    """Settle the claim that stored ``blob`` uncompresses to ``diff_id``: hash it here (once, under
    the blob's lock), then record the pair or the refutation. None when ``wait`` is False and
    another process is checking it. BlobNotFound when the blob is not stored (evicted meanwhile)."""
    with claim_lock(store, blob, wait) as held:
        if not held:
            return None
        known = store.index.diff_id_of(blob)
        if known == diff_id:
            return ClaimCheck(blob, diff_id, "")
        found = store.index.refuted_diff_id(blob, diff_id)
        if found is None and known is not None:  # one blob has one uncompressed content
            found = f"uncompresses to {known}"
        if found is None:
            actual, found = _uncompressed_digest(store, blob, media_type)
            store.index.settle_diff_id(blob, diff_id, actual, media_type, found)
            if actual == diff_id:
                return ClaimCheck(blob, diff_id, "")
        else:
            store.index.settle_diff_id(blob, diff_id, None, media_type, found)
        return ClaimCheck(blob, diff_id, found)


def _uncompressed_digest(store: BlobStore, blob: Digest, media_type: str) -> tuple[Digest | None, str]:
    """(sha256 of the uncompressed bytes, what they are) of a stored layer; None when they do not
    decompress."""
    from cache.formats.compression import CorruptLayer, DiffIdHasher  # a cached pull never hashes: only here

    hasher = DiffIdHasher(compression_of(media_type))
    try:
        with store.open(blob) as handle:
            while chunk := handle.read(4 * CHUNK):
                hasher.update(chunk)
        actual = hasher.finish()
    except CorruptLayer as error:
        return None, f"does not decompress ({error})"
    return actual, f"uncompresses to {actual}"


def reported_diff_id(store: BlobStore, blob: Digest) -> tuple[Digest | None, bool]:
    """What a report says a stored layer uncompresses to: (verified diff_id, True), else (the claim
    still pending, False), else (None, False)."""
    verified = store.index.diff_id_of(blob)
    if verified is not None:
        return verified, True
    pending = store.index.pending_diff_id(blob)
    return (pending[0] if pending else None), False


def require_diff_id(store: BlobStore, blob: Digest, diff_id: Digest, media_type: str) -> None:
    """Return once (``blob``, ``diff_id``) is a verified pair; DigestMismatch when the bytes say
    otherwise. Cheap when it is verified (one look in the index)."""
    if store.index.diff_id_of(blob) == diff_id:
        return
    result = check_claim(store, blob, diff_id, media_type)
    assert result is not None  # a waiting check always ends
    if not result.verified:
        raise DigestMismatch(f"layer {blob} {result.found}, but the config says {diff_id}")


def require_diff_ids(store: BlobStore, layers: Iterable[tuple[Digest, Digest, str]]) -> None:
    """:func:`require_diff_id` for each (blob, diff_id, media type) of an image."""
    for blob, diff_id, media_type in layers:
        require_diff_id(store, blob, diff_id, media_type)


def verified_blobs_for(store: BlobStore, diff_id: Digest) -> dict[Digest, str]:
    """Stored blobs verified to uncompress to ``diff_id`` (with their media types), after checking
    the claims of that diff_id still pending: a daemon pull over a freshly pulled base finds it."""
    for blob, (claimed, media_type) in store.index.pending_diff_ids().items():
        if claimed == diff_id:
            with contextlib.suppress(BlobNotFound):  # evicted: its claim went with it
                check_claim(store, blob, claimed, media_type)
    return store.index.blobs_for_diff_id(diff_id)


def check_pending(store: BlobStore, *, wait: bool = True, jobs: int = CHECKERS) -> list[ClaimCheck]:
    """Settle every pending claim, ``jobs`` layers at a time. With ``wait`` False a claim another
    process is checking is left to it (the background check)."""
    pending = store.index.pending_diff_ids()
    if not pending:
        return []

    def check(item: tuple[Digest, tuple[Digest, str]]) -> ClaimCheck | None:
        blob, (diff_id, media_type) = item
        try:
            return check_claim(store, blob, diff_id, media_type, wait=wait)
        except BlobNotFound:
            return None  # evicted since the listing: nothing left to check

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, min(jobs, len(pending))), thread_name_prefix="diffid") as pool:
        return [result for result in pool.map(check, pending.items()) if result is not None]


class ClaimsReport(NamedTuple):
    """What :func:`settle_claims` did, and what is on record."""

    checked: list[ClaimCheck]  # claims settled now
    refuted: list[ClaimCheck]  # every claim on record that the bytes refuted
    pending: int  # claims still pending (another process is checking them)

    def to_json(self) -> dict[str, object]:
        return {"checked": len(self.checked), "verified": sum(1 for c in self.checked if c.verified),
                "refuted": [c.to_json() for c in self.refuted], "pending": self.pending}


def settle_claims(store: BlobStore, *, wait: bool = True) -> ClaimsReport:
    """``verify``: settle every pending claim (see :func:`check_pending`), then list the refuted ones.
    With ``wait``, background checks under way end first (:func:`wait_for_background_checks`)."""
    if wait:
        wait_for_background_checks(store)
    checked = check_pending(store, wait=wait)
    return ClaimsReport(checked, list(refuted_claims(store)), len(store.index.pending_diff_ids()))


def refuted_claims(store: BlobStore) -> Iterator[ClaimCheck]:
    """Every claim the bytes refuted (verify reports them)."""
    for blob, claims in store.index.refuted_diff_ids().items():
        for diff_id, found in claims.items():
            yield ClaimCheck(blob, parse_digest(diff_id), found)


def start_background_check(store: BlobStore) -> bool:
    """After a command has printed its result: a detached ``layerhoard verify --diff-ids
    --background`` when claims are pending. True when one was started.

    The child inherits a shared lock on ``locks/diffid-check.lock``, taken here before it starts, so
    :func:`wait_for_background_checks` cannot miss a check that is still starting up.
    """
    if not store.index.pending_diff_ids():
        return False
    import subprocess  # here: only a command that fetched layers pays for loading it

    command = [sys.executable, "-m", "cli.main", "--cache-dir", str(store.root), "-q", "verify", "--diff-ids",
               "--background"]
    fd = _shared_lock(store)
    try:
        subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True, pass_fds=(fd,))
    except OSError:
        return False  # the claims stay pending: the next use or `verify` settles them
    finally:
        os.close(fd)  # the child's copy keeps the lock until it exits
    return True


def wait_for_background_checks(store: BlobStore) -> None:
    """Return once every background check started so far has ended (a script that removes the cache
    folder right after a pull runs ``layerhoard verify --diff-ids`` first)."""
    with store.locks_folder.lock(CHECK_LOCK):
        pass


def _shared_lock(store: BlobStore) -> int:
    """A descriptor holding a shared flock on the check lock (gc removes only lock files it can lock)."""
    while True:
        fd = store.locks_folder.open_or_create(CHECK_LOCK, 0o664)
        fcntl.flock(fd, fcntl.LOCK_SH)
        info, mine = store.locks_folder.lstat(CHECK_LOCK), os.fstat(fd)
        if info is not None and (info.st_dev, info.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)  # removed while we waited: lock the new one
