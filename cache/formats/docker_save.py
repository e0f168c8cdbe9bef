"""A streaming reader of `docker save` tar streams: the legacy layout and Docker 25+'s OCI layout.

    legacy (dockerd < 25)       <v1id>/VERSION, <v1id>/json, <v1id>/layer.tar, <config hex>.json,
                                manifest.json, repositories (folders in name order, metadata last)
    OCI (Docker 25+)            blobs/sha256/<hex>, index.json (may nest an index), manifest.json,
                                oci-layout; layers uncompressed (graph drivers) or the registry's
                                gzip blobs (containerd image store)

The stream is read once, front to back (:mod:`cache.formats.tar`): nothing seeks, nothing is
spooled to a temporary tarball, no layer is held in memory. What is held is bounded whatever the
tar holds: at most :data:`MAX_MEMBERS` members; metadata (JSON) kept only as manifest.json names
it, within :data:`METADATA_BUDGET` (:class:`MetadataKeeper`). Each layer is hashed as it passes
and, when a :class:`LayerChooser` says it is new, written at the same time into a staged blob
(our fixed zstd for an uncompressed tar, the bytes as they are for a compressed blob). Layer
bytes go from the stream's ``readinto`` straight into buffers that :class:`BackgroundSink`
makes once and cycles between the threads. Links (docker save links duplicate layers) are
recorded and resolved later. What the image is (config, layer
order) is decided afterwards by :mod:`cache.sources.saveimage`; nothing becomes visible in the
store here.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO

from cache.errors import DigestMismatch, NotADockerSave, StreamCutOff
from cache.formats.compression import CorruptLayer, DiffIdHasher, zstd_compressor
from cache.formats.tar import Readable, TarCutOff, TarError, TarMember, TarStream, header_ok, open_tar
from cache.model.digest import Digest
from cache.model.manifests import MAX_CONFIG_BYTES, OCI_LAYER_ZSTD
from cache.progress import Progress
from cache.registry.http import HTTPError
from cache.sources.staging import BUFFER_BYTES, BackgroundSink, StagedBlob, Staging
from cache.sources.storedlayers import OCI_TYPE_OF, stored_layer
from cache.sources.v1ids import chain_ids, layer_position
from cache.store.blobstore import BlobStore

SNIFF_BYTES = 4096
JSON_BLOB_LIMIT = 4 << 20  # a blobs/ entry this small starting with "{" is metadata, kept in memory
# A docker save has a few members per layer (and an image at most 127 layers): a tar with more is
# refused before per-member bookkeeping (links, layers seen) or header parsing time add up.
MAX_MEMBERS = 100_000
# Metadata held in memory at once: the largest config allowed, twice (a tar stream may carry
# JSON members before manifest.json says which of them are needed).
METADATA_BUDGET = 2 * MAX_CONFIG_BYTES
_BLOB_PATH = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_TOP_METADATA = {"manifest.json", "index.json"}  # repositories and oci-layout are never read


@dataclass(frozen=True)
class SaveEntry:
    """One image of a docker save: where its config and layers are in the tar, and its tags."""

    config_path: str
    layer_paths: tuple[str, ...]
    repo_tags: tuple[str, ...]


@dataclass
class SavedLayer:
    """One layer tar (or compressed layer blob) that went by in the stream."""

    path: str
    compression: str  # "none", "gzip" or "zstd": the bytes as they were in the tar
    size: int
    digest: Digest  # sha256 of the bytes in the tar
    diff_id: Digest | None  # sha256 of the uncompressed tar (None: not computed and not known)
    staged: StagedBlob | None  # the new blob written for it, or None when hashed only


@dataclass
class SaveContents:
    """What one pass over a docker save stream found."""

    staging: Staging
    files: dict[str, bytes] = field(default_factory=dict)
    layers: dict[str, SavedLayer] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    others: set[str] = field(default_factory=set)
    bytes_read: int = 0

    def resolve(self, path: str) -> str:
        """Follow symlinks and hard links (docker save links duplicate layers) to a stored member."""
        path = normalise(path)
        for _ in range(40):
            target = self.links.get(path)
            if target is None:
                return path
            path = target
        raise NotADockerSave(f"link loop at {path!r}")

    def file(self, path: str) -> bytes | None:
        return self.files.get(self.resolve(path))

    def layer(self, path: str) -> SavedLayer | None:
        return self.layers.get(self.resolve(path))

    def has(self, path: str) -> bool:
        resolved = self.resolve(path)
        return resolved in self.files or resolved in self.layers or resolved in self.others

    def path_diff_ids(self) -> dict[str, Digest]:
        """Member path → diff_id for every layer hashed in this pass (exact knowledge for a next pass)."""
        out = {path: layer.diff_id for path, layer in self.layers.items() if layer.diff_id is not None}
        for link in self.links:
            layer = self.layer(link)
            if layer is not None and layer.diff_id is not None:
                out[link] = layer.diff_id
        return out

    def discard(self) -> None:
        self.staging.discard()


class TooManyMembers(NotADockerSave):
    """The tar has more than :data:`MAX_MEMBERS` members."""


def members(tar: TarStream, what: str) -> Iterator[TarMember]:
    """The tar's members, refused past :data:`MAX_MEMBERS`."""
    for count, member in enumerate(tar, 1):
        if count > MAX_MEMBERS:
            raise TooManyMembers(
                f"{what} has more than {MAX_MEMBERS} tar members, far more than a docker save has; refused"
            )
        yield member


def _parse_json(data: bytes | None, what: str) -> Any:
    if data is None:
        raise NotADockerSave(f"{what} is missing")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise NotADockerSave(f"{what} is not valid JSON: {error}") from None


def manifest_entries(raw: bytes, what: str) -> list[SaveEntry]:
    """The images manifest.json lists (``what`` names the archive in errors)."""
    document = _parse_json(raw, f"{what}: manifest.json")
    if not isinstance(document, list):
        raise NotADockerSave(f"{what}: manifest.json is not a list")
    entries = []
    for item in document:
        if not isinstance(item, dict) or not isinstance(item.get("Config"), str):
            raise NotADockerSave(f"{what}: manifest.json entry without Config")
        layers, tags = item.get("Layers") or [], item.get("RepoTags") or []
        if not isinstance(layers, list) or not all(isinstance(p, str) for p in layers):
            raise NotADockerSave(f"{what}: manifest.json entry with a bad Layers list")
        entries.append(SaveEntry(item["Config"], tuple(layers), tuple(t for t in tags if isinstance(t, str))))
    return entries


def wanted_by(entries: list[SaveEntry]) -> frozenset[str]:
    """The metadata members an import reads when manifest.json lists ``entries``."""
    return frozenset({"manifest.json", *(normalise(entry.config_path) for entry in entries)})


def normalise(name: str) -> str:
    """A member name as a key: no leading ./ or /, no . or .. segments (never used as a file path)."""
    path = posixpath.normpath("/" + name.replace("\\", "/")).lstrip("/")
    return path


class LayerChooser:
    """Decides, before a layer's bytes arrive, whether they must be written (new) or only hashed.

    Known ahead: the image's diff_ids (from the daemon's inspect, or an archive's config), their
    content sizes where the daemon reports them, and exact paths where a previous pass or an
    archive's manifest.json says which member holds which layer. In the legacy layout a folder's
    json names its layer (:mod:`cache.sources.v1ids`); failing that the size decides. A wrong
    "write" wastes work only (the staged copy is dropped at the end); a wrong "hash only" is found
    when the pass ends, and the caller makes a second, exact pass.
    """

    def __init__(
        self,
        store: BlobStore,
        diff_ids: Sequence[Digest] = (),
        sizes: Sequence[int | None] = (),
        paths: dict[str, Digest] | None = None,
    ) -> None:
        self.store = store
        self.diff_ids = list(diff_ids)
        self.chains = chain_ids(self.diff_ids)
        self.sizes = list(sizes) if len(sizes) == len(self.diff_ids) else [None] * len(self.diff_ids)
        self.paths = dict(paths or {})
        self.missing = {d for d in self.diff_ids if stored_layer(store, d) is None}
        self.unseen = set(range(len(self.diff_ids)))
        self.staged: set[Digest] = set()

    def wants_v1_json(self, folder: str) -> bool:
        """Whether ``<folder>/json`` could tell which layer ``<folder>/layer.tar`` is (not known yet)."""
        return bool(self.chains) and f"{folder}/layer.tar" not in self.paths

    def note_v1_json(self, folder: str, data: bytes) -> None:
        position = layer_position(folder, data, self.chains)
        if position is not None:
            self.paths.setdefault(f"{folder}/layer.tar", self.diff_ids[position])

    def should_store(self, path: str, size: int, compression: str, named: Digest | None) -> bool:
        if compression != "none":  # a compressed blob is named by its digest in the OCI layout
            return named is None or not self.store.has(named)
        diff_id = self.paths.get(path) or named or self._guess_by_size(size)
        if diff_id is None:
            return not self.diff_ids or bool(self.missing - self.staged)
        if diff_id in self.staged:
            return False
        if diff_id in self.missing:
            return True
        return stored_layer(self.store, diff_id) is None

    def _guess_by_size(self, size: int) -> Digest | None:
        """The unseen layer whose content size is the largest not above the tar's (headers add bytes)."""
        if not self.missing or self.missing <= self.staged:
            return None
        fits = [i for i in self.unseen if self.sizes[i] is not None and self.sizes[i] <= size]  # type: ignore[operator]
        if not fits or any(self.sizes[i] is None for i in self.unseen):
            return None
        best = max(fits, key=lambda i: self.sizes[i])  # type: ignore[arg-type,return-value]
        return self.diff_ids[best]

    def seen(self, diff_id: Digest | None, staged: bool) -> None:
        if diff_id is None:
            return
        self.unseen -= {i for i, d in enumerate(self.diff_ids) if d == diff_id}
        if staged:
            self.staged.add(diff_id)


class _CountingReader:
    """The raw stream, counted and reported; transport errors become "cut off".

    Reads with the stream's own ``readinto`` (straight into the caller's buffer) where it has
    one; a stream with only ``read`` is copied in.
    """

    def __init__(self, stream: IO[bytes] | BinaryIO | Readable, what: str, progress: Progress | None) -> None:
        self._stream = stream
        self._readinto = getattr(stream, "readinto", None)
        self._what = what
        self._progress = progress
        self.count = 0

    def _cut(self, error: BaseException) -> StreamCutOff:
        return StreamCutOff(f"{self._what} was cut off after {self.count} bytes ({error}); nothing was stored")

    def readinto(self, buffer: memoryview) -> int:
        try:
            if self._readinto is not None:
                got = self._readinto(buffer) or 0
            else:
                data = self._stream.read(len(buffer))  # type: ignore[union-attr]
                got = len(data)
                buffer[:got] = data
        except (OSError, ValueError, HTTPError) as error:
            raise self._cut(error) from None
        except Exception as error:  # urllib3/requests/http.client errors of a broken HTTP body
            if type(error).__module__.split(".")[0] in ("urllib3", "requests", "http"):
                raise self._cut(error) from None
            raise
        self.count += got
        if self._progress is not None and got:
            self._progress.update(got)
        return got


def _sniff(head: bytes) -> str | None:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if len(head) >= 512:
        if head[:512] == bytes(512):
            return "none"  # an empty tar: only the end-of-archive blocks
        return "none" if header_ok(head[:512]) else None
    return None


def _is_metadata(path: str) -> bool:
    if "/" not in path:
        return path in _TOP_METADATA or path.endswith(".json")
    folder, _, leaf = path.rpartition("/")
    return "/" not in folder and leaf in ("json", "VERSION")


def _check_metadata_size(what: str, path: str, size: int) -> None:
    if size > MAX_CONFIG_BYTES:
        raise NotADockerSave(f"{what}: {path} is {size} bytes, too large for metadata")


class MetadataKeeper:
    """Which metadata members one pass keeps in memory (``contents.files``), and the bound on it.

    ``wanted`` known ahead (an archive file's first look read its manifest.json): exactly those
    members are kept; any other JSON member is skipped unread, however many and large. Not known
    (a stream): JSON members are kept until manifest.json arrives, which then says what to keep
    (the rest is dropped). Either way, more than :data:`METADATA_BUDGET` bytes held at once is
    refused before the member that would pass it is read.
    """

    def __init__(self, contents: SaveContents, what: str, wanted: frozenset[str] | None) -> None:
        self.contents = contents
        self.what = what
        self.wanted = wanted
        self.held = 0

    def wants(self, path: str) -> bool:
        return self.wanted is None or path in self.wanted

    def keep(self, tar: TarStream, path: str, size: int, head: bytes = b"") -> None:
        """Read the rest of the current member (``head`` read already) and keep it as ``path``."""
        _check_metadata_size(self.what, path, size)
        held = self.held - len(self.contents.files.get(path, b"")) + size
        if held > METADATA_BUDGET:
            raise NotADockerSave(
                f"{self.what}: its JSON members add up to more than {METADATA_BUDGET >> 20} MiB "
                "(before manifest.json, or named by it), far more than a docker save holds; refused"
            )
        self.contents.files[path] = head + tar.read(size - len(head))
        self.held = held
        if path == "manifest.json" and self.wanted is None:
            self._learn()

    def _learn(self) -> None:
        """manifest.json has come: from now on keep what it names, and drop the rest now."""
        try:
            entries = manifest_entries(self.contents.files["manifest.json"], self.what)
        except NotADockerSave:
            return  # reported when the image is looked for; until then keep within the budget
        named = wanted_by(entries)
        self.wanted = named | {self.contents.resolve(path) for path in named}
        for path in [p for p in self.contents.files if p not in self.wanted]:
            self.held -= len(self.contents.files.pop(path))


class SaveReader:
    """Reads one docker save stream into a :class:`SaveContents` (staged, not yet published)."""

    def __init__(
        self,
        store: BlobStore,
        chooser: LayerChooser,
        *,
        what: str,
        progress: Progress | None = None,
        wanted: frozenset[str] | None = None,
    ) -> None:
        self.store = store
        self.chooser = chooser
        self.what = what
        self.progress = progress
        self.wanted = wanted  # the metadata members to keep, when known ahead (see MetadataKeeper)

    def read(self, stream: IO[bytes] | BinaryIO | Readable, *, require_end: bool = False) -> SaveContents:
        """The stream's images, staged. ``require_end``: a tar without its end-of-archive blocks
        was cut off (for a stream whose transport cannot tell its end from a cut)."""
        contents = SaveContents(Staging(self.store))
        keeper = MetadataKeeper(contents, self.what, self.wanted)
        counting = _CountingReader(stream, self.what, self.progress)
        try:
            try:
                tar = open_tar(counting)
                for member in members(tar, self.what):
                    self._member(tar, member, contents, keeper)
            except (TarError, CorruptLayer) as error:
                if isinstance(error, TarCutOff):
                    raise StreamCutOff(
                        f"{self.what} ends early after {counting.count} bytes (cut off or truncated); "
                        "nothing was stored"
                    ) from None
                if counting.count == 0:
                    raise NotADockerSave(f"{self.what} is empty, not a docker save tar") from None
                raise NotADockerSave(f"{self.what} is not a docker save tar: {error}") from None
            if counting.count == 0:
                raise NotADockerSave(f"{self.what} is empty, not a docker save tar")
            if require_end and not tar.complete:
                raise StreamCutOff(
                    f"{self.what} was cut off after {counting.count} bytes (no end-of-archive blocks); "
                    "nothing was stored"
                )
        except BaseException:
            contents.discard()
            raise
        contents.bytes_read = counting.count
        return contents

    def _member(self, tar: TarStream, member: TarMember, contents: SaveContents, keeper: MetadataKeeper) -> None:
        path = normalise(member.name)
        if member.issym():
            contents.links[path] = normalise(posixpath.join(posixpath.dirname(path), member.linkname))
            return
        if member.islnk():
            contents.links[path] = normalise(member.linkname)
            return
        if not member.isfile():
            return  # folders, devices: nothing an image needs
        if _is_metadata(path):
            self._metadata(tar, path, member.size, keeper)
            return
        head = tar.read(min(member.size, SNIFF_BYTES))
        match = _BLOB_PATH.fullmatch(path)
        named = Digest(match.group(1)) if match else None
        if named is not None and head[:1] == b"{" and member.size <= JSON_BLOB_LIMIT:
            if keeper.wants(path):  # a manifest, index or config
                keeper.keep(tar, path, member.size, head)
            return
        compression = _sniff(head)
        if compression is None:
            contents.others.add(path)  # not a layer; an error only if something refers to it
            return
        contents.layers[path] = self._layer(tar, path, member.size, compression, named, head, contents)

    def _metadata(self, tar: TarStream, path: str, size: int, keeper: MetadataKeeper) -> None:
        folder, _, leaf = path.rpartition("/")
        if not folder:
            if keeper.wants(path):
                keeper.keep(tar, path, size)
            return
        # A legacy <folder>/json names the folder's layer; read while it helps, never kept.
        if leaf == "json" and self.chooser.wants_v1_json(folder):
            _check_metadata_size(self.what, path, size)
            self.chooser.note_v1_json(folder, tar.read(size))

    def _layer(
        self,
        tar: TarStream,
        path: str,
        size: int,
        compression: str,
        named: Digest | None,
        head: bytes,
        contents: SaveContents,
    ) -> SavedLayer:
        store_it = self.chooser.should_store(path, size, compression, named)
        known_diff_id = None
        if compression != "none" and named is not None and not store_it:
            known_diff_id = self.store.index.diff_id_of(named)  # verified when it was stored
        diff_hasher = DiffIdHasher(compression) if compression != "none" and known_diff_id is None else None
        sink = None
        buffer_bytes = min(BUFFER_BYTES, max(size, SNIFF_BYTES))  # a small layer, a small buffer
        if store_it:
            compressor = zstd_compressor() if compression == "none" else None
            media_type = OCI_LAYER_ZSTD if compression == "none" else OCI_TYPE_OF[compression]
            sink = BackgroundSink(contents.staging.writer(media_type), compressor, buffer_bytes)
        sha = hashlib.sha256()
        own = None if sink is not None else memoryview(bytearray(buffer_bytes))
        try:
            lead = head  # the bytes read to sniff the format lead the first buffer
            while lead or tar.left:
                buffer = sink.buffer() if sink is not None else own
                assert buffer is not None
                buffer[: len(lead)] = lead
                length = len(lead) + tar.readinto(buffer[len(lead) :])
                lead = b""
                view = buffer[:length]
                sha.update(view)
                if diff_hasher is not None:
                    diff_hasher.update(view)
                if sink is not None:
                    sink.submit(buffer, length)
        except BaseException:
            if sink is not None:
                sink.abort()
            raise
        staged = sink.finish() if sink is not None else None
        digest = Digest(sha.hexdigest())
        if named is not None and named != digest:
            raise DigestMismatch(f"{self.what}: {path} holds bytes with digest {digest}, not the one its name says")
        diff_id = digest if compression == "none" else (diff_hasher.finish() if diff_hasher else known_diff_id)
        self.chooser.seen(diff_id, staged is not None)
        return SavedLayer(path, compression, size, digest, diff_id, staged)
