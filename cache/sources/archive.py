"""``docker-archive:FILE``: importing a `docker save` tarball (or ``-`` for stdin), every blob checked.

The same streaming reader as the daemon source, so the same layer reuse: a layer whose diff_id is
already stored is hashed, not written again. For a plain tar file a first, cheap look reads only
the member headers (seeking past all data, keeping nothing per member), then manifest.json and the
config it names, so the streaming pass knows exactly which member holds which layer and which
metadata to keep (nothing else is read into memory, however many or large the other JSON members
are). From stdin (or a compressed tarball) that look is skipped: layers are kept unless their
content says otherwise, and JSON members before manifest.json are held within the reader's budget.

Names in index.json: each of the image's RepoTags, normalised after ``docker-archive:`` (``app:1``
→ ``docker-archive:docker.io/library/app:1``, apart from the registry's image of that name); an
untagged archive gets ``localhost/<file name without
.tar>:latest`` (podman's ``localhost/`` for images from no registry; ``stdin`` for ``-``), or
``name`` when the caller gives one. The source is recorded as ``docker-archive:FILE``.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Iterator
from io import BufferedReader
from pathlib import Path
from typing import IO, TYPE_CHECKING

from cache.errors import InvalidReference, LayerhoardError, SourceError
from cache.formats.docker_save import (
    LayerChooser,
    SaveReader,
    TooManyMembers,
    manifest_entries,
    members,
    normalise,
    wanted_by,
)
from cache.formats.tar import TarError, TarHeaders
from cache.ingest.report import PullReport
from cache.model.manifests import MAX_CONFIG_BYTES, parse_config
from cache.model.refs import ArchiveSource, ImageRef, Source, archive_image_name
from cache.progress import ProgressFactory
from cache.sources.saveimage import commit, find_entries, pick_entry, prepare
from cache.store.blobstore import BlobStore

if TYPE_CHECKING:
    from cache.ingest.pull import PullOptions

_PLAIN_TAR_MAGIC = b"ustar"


def parse(path: str) -> ArchiveSource:
    if not path:
        raise InvalidReference("docker-archive: needs a file, like docker-archive:image.tar")
    return ArchiveSource(path)


def pull(store: BlobStore, source: Source, options: PullOptions) -> PullReport:
    assert isinstance(source, ArchiveSource)
    return pull_from_archive(store, source, name=options.name, progress=options.progress)


def pull_from_archive(
    store: BlobStore,
    source: ArchiveSource,
    *,
    name: str | None = None,
    progress: ProgressFactory | None = None,
) -> PullReport:
    """Import the one image of the docker save tarball ``source.path`` into ``store``."""
    started = time.monotonic()
    what = f"docker-archive {source.path}"
    chooser, wanted = _first_look(store, source.path, what)
    bar = progress(f"import {source.path}", _size(source.path)) if progress else None
    try:
        with _open(source.path) as stream:
            contents = SaveReader(store, chooser, what=what, progress=bar, wanted=wanted).read(stream)
    finally:
        if bar is not None:
            bar.close()
    try:
        entry = pick_entry(find_entries(contents, what), what)
        prepared = prepare(store, contents, entry, what)
        refs = [name] if name else _names(entry.repo_tags, source.path)
        return commit(store, contents, prepared, refs, str(source), started)
    finally:
        contents.discard()


@contextlib.contextmanager
def _open(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as error:
        raise SourceError(f"cannot read docker-archive {path}: {error.strerror}") from None
    with handle:
        yield handle


def _size(path: str) -> int | None:
    try:
        return Path(path).stat().st_size if path != "-" else None
    except OSError:
        return None


Look = tuple[LayerChooser, frozenset[str] | None]  # what the first look learned (see _first_look)


def _first_look(store: BlobStore, path: str, what: str) -> Look:
    """From a plain tar file's headers, manifest.json and config: member → diff_id, and the
    metadata members to keep; else nothing known (stdin, a compressed or an unreadable tarball)."""
    unknown: Look = (LayerChooser(store), None)
    if path == "-":
        return unknown
    try:
        with open(path, "rb") as handle:
            if handle.read(512)[257:262] != _PLAIN_TAR_MAGIC:
                return unknown
            return _look(store, handle, what)
    except TooManyMembers:
        raise  # as the streaming pass would say, after reading every header once more
    except (TarError, OSError, ValueError, LayerhoardError):
        return unknown  # the streaming pass reports what is wrong with the file


def _look(store: BlobStore, handle: BufferedReader, what: str) -> Look:
    manifest = _member_data(handle, "manifest.json", what)
    if manifest is None:
        return LayerChooser(store), None
    entries = manifest_entries(manifest, what)
    wanted = wanted_by(entries)
    if len(entries) != 1:
        return LayerChooser(store), wanted  # refused once read; until then only configs are kept
    config = _member_data(handle, normalise(entries[0].config_path), what)
    if config is None:
        return LayerChooser(store), None  # a link, say: the streaming pass resolves it
    diff_ids = parse_config(config).diff_ids
    layers = entries[0].layer_paths
    if len(layers) != len(diff_ids):
        return LayerChooser(store), wanted
    return LayerChooser(store, diff_ids, paths={normalise(p): d for p, d in zip(layers, diff_ids, strict=True)}), wanted


def _member_data(handle: BufferedReader, name: str, what: str) -> bytes | None:
    """The data of the last regular file ``name`` in the tar (as a stream keeps the last), from one
    pass over its headers; None when there is none or it is too large for metadata."""
    handle.seek(0)
    tar = TarHeaders(handle)
    leaf = name.rpartition("/")[2]
    data = None
    for member in members(tar, what):
        if leaf in member.name and normalise(member.name) == name:  # the cheap test first
            data = tar.read(member.size) if member.isfile() and member.size <= MAX_CONFIG_BYTES else None
    return data


def _names(repo_tags: tuple[str, ...], path: str) -> list[str]:
    names = []
    for tag in repo_tags:
        with contextlib.suppress(InvalidReference):
            names.append(archive_image_name(str(ImageRef.parse(tag))))
    if names:
        return list(dict.fromkeys(names))
    stem = "stdin" if path == "-" else Path(path).name
    stem = re.sub(r"\.(tar|tar\.gz|tgz)$", "", stem.lower())
    stem = re.sub(r"[^a-z0-9._-]+", "-", stem).strip("._-") or "archive"
    return [f"localhost/{stem}:latest"]
