"""``docker-archive:FILE``: importing a `docker save` tarball (or ``-`` for stdin), every blob checked.

The same streaming reader as the daemon source, so the same layer reuse: a layer whose diff_id is
already stored is hashed, not written again. For a plain tar file a first, cheap look reads only
the member headers, manifest.json and the config (seeking past layer data), so the reader knows
exactly which member holds which layer before the single streaming pass; from stdin (or a
compressed tarball) that look is skipped and layers are kept unless their content says otherwise.

Names in index.json: each of the image's RepoTags, normalised (``app:1`` →
``docker.io/library/app:1``); an untagged archive gets ``localhost/<file name without
.tar>:latest`` (podman's ``localhost/`` for images from no registry; ``stdin`` for ``-``), or
``name`` when the caller gives one. The source is recorded as ``docker-archive:FILE``.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cache.digest import Digest
from cache.errors import InvalidManifest, InvalidReference, LayerhoardError, SourceError
from cache.model import MAX_CONFIG_BYTES, parse_config
from cache.progress import ProgressFactory
from cache.refs import ArchiveSource, ImageRef
from cache.report import PullReport
from cache.sources.dockersave import LayerChooser, SaveReader, normalise
from cache.sources.saveimage import commit, find_entries, pick_entry, prepare
from cache.store import BlobStore

_PLAIN_TAR_MAGIC = b"ustar"


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
    chooser = _chooser(store, source.path)
    bar = progress(f"import {source.path}", _size(source.path)) if progress else None
    try:
        with _open(source.path) as stream:
            contents = SaveReader(store, chooser, what=what, progress=bar).read(stream)
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


def _chooser(store: BlobStore, path: str) -> LayerChooser:
    """Exact member → diff_id knowledge from a header-only look at a plain tar file (else none)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError:
        return LayerChooser(store)
    if path == "-" or head[257:262] != _PLAIN_TAR_MAGIC:
        return LayerChooser(store)
    try:
        diff_ids, paths = _layer_paths(path)
    except (tarfile.TarError, OSError, ValueError, LayerhoardError):
        return LayerChooser(store)  # the streaming pass reports what is wrong with the file
    return LayerChooser(store, diff_ids, paths=paths)


def _layer_paths(path: str) -> tuple[tuple[Digest, ...], dict[str, Digest]]:
    """Layer member path → diff_id from manifest.json and the config, reading no layer data."""
    with tarfile.open(path, mode="r:") as tar:
        members = {normalise(m.name): m for m in tar.getmembers()}

        def read(name: str) -> bytes | None:
            member = members.get(normalise(name))
            if member is None or not member.isfile() or member.size > MAX_CONFIG_BYTES:
                return None
            handle = tar.extractfile(member)
            return handle.read() if handle else None

        manifest = read("manifest.json")
        entries = json.loads(manifest) if manifest else []
        if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
            return (), {}
        config_raw = read(str(entries[0].get("Config")))
        if config_raw is None:
            return (), {}
        try:
            diff_ids = parse_config(config_raw).diff_ids
        except InvalidManifest:
            return (), {}
        layers = entries[0].get("Layers") or []
        if len(layers) != len(diff_ids):
            return (), {}
        return diff_ids, {normalise(str(p)): d for p, d in zip(layers, diff_ids, strict=True)}


def _names(repo_tags: tuple[str, ...], path: str) -> list[str]:
    names = []
    for tag in repo_tags:
        with contextlib.suppress(InvalidReference):
            names.append(str(ImageRef.parse(tag)))
    if names:
        return list(dict.fromkeys(names))
    stem = "stdin" if path == "-" else Path(path).name
    stem = re.sub(r"\.(tar|tar\.gz|tgz)$", "", stem.lower())
    stem = re.sub(r"[^a-z0-9._-]+", "-", stem).strip("._-") or "archive"
    return [f"localhost/{stem}:latest"]
