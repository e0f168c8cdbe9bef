"""``docker-daemon:NAME``: an image from a Docker (or podman) daemon, streaming only new layers.

1. Inspect the image (its ID is the config's sha256, RootFS.Layers its diff_ids).
2. If the config and a blob for every diff_id are stored (an earlier daemon pull, or registry
   pulls whose diff_ids we verified), record the image from the store: no `docker save` at all.
3. Otherwise stream ``GET /images/{name}/get`` once through :class:`SaveReader`: new layers are
   compressed with our fixed zstd while their diff_id is computed, stored ones only hashed; the
   config is kept byte for byte and checked against the image ID; an OCI manifest is written.
   If a guess about which legacy folder holds which layer was wrong, one more, exact pass follows.

The daemon is found as the docker CLI finds it, and spoken to as :mod:`cache.sources.engine`
says. The image is recorded under its full normalised name
(``app:1`` → ``docker.io/library/app:1``), its source as ``docker-daemon:app:1``.
"""

from __future__ import annotations

import re
import time
from typing import Any

from cache.errors import InvalidDigest, InvalidReference, SourceError
from cache.formats.docker_save import LayerChooser, SaveContents, SaveReader
from cache.ingest.report import PullReport
from cache.model.digest import Digest, parse_digest
from cache.model.manifests import parse_config
from cache.model.refs import DaemonSource, ImageRef, daemon_image_name
from cache.progress import ProgressFactory
from cache.sources.engine import Engine, connect
from cache.sources.saveimage import MissingLayers, commit, find_entries, pick_entry, prepare, record_stored
from cache.store.blobstore import BlobStore


def pull_from_daemon(
    store: BlobStore,
    source: DaemonSource,
    *,
    docker_host: str | None = None,
    progress: ProgressFactory | None = None,
) -> PullReport:
    """Bring the daemon's image ``source.name`` into ``store``; see the module text for how."""
    started = time.monotonic()
    engine = connect(docker_host)
    try:
        info = engine.inspect(source.name)
        image_id = _digest(info.get("Id"), "image ID")
        diff_ids = [_digest(d, "layer diff_id") for d in (info.get("RootFS") or {}).get("Layers") or []]
        ref = daemon_image_name(record_name(source.name, info))
        if store.has(image_id):
            config_raw = store.read_bytes(image_id)
            if list(parse_config(config_raw).diff_ids) == diff_ids:
                stored = record_stored(store, config_raw, [ref], str(source), started)
                if stored is not None:
                    return stored
        sizes = _layer_sizes(engine.history(source.name), len(diff_ids))
        learned: dict[str, Digest] = {}
        for attempt in (1, 2):
            chooser = LayerChooser(store, diff_ids, sizes, learned)
            contents = _stream_save(engine, source.name, chooser, store, progress, info.get("Size"))
            try:
                what = f"docker save of {source.name}"
                entry = pick_entry(find_entries(contents, what), what, image_id)
                prepared = prepare(store, contents, entry, what, image_id=image_id, diff_ids=diff_ids)
                report = commit(store, contents, prepared, [ref], str(source), started)
                report.requests = attempt
                return report
            except MissingLayers:
                if attempt == 2:
                    raise SourceError(f"docker save of {source.name} did not give every layer twice in a row") from None
                learned = contents.path_diff_ids()  # now exact: the second pass keeps the right layers
            finally:
                contents.discard()
        raise AssertionError("unreachable")
    finally:
        engine.close()


def _digest(value: object, what: str) -> Digest:
    try:
        return parse_digest(value)  # type: ignore[arg-type]
    except InvalidDigest as error:
        raise SourceError(f"the daemon's {what} is not a sha256 digest: {error}") from None


def record_name(name: str, info: dict[str, Any]) -> str:
    """The name in index.json: the full normalised reference; for an image ID, its first tag."""
    hex_id = str(info.get("Id", "")).removeprefix("sha256:")
    by_id = name.startswith("sha256:") or (re.fullmatch(r"[0-9a-f]{12,64}", name) and hex_id.startswith(name))
    if by_id:
        tags = [t for t in info.get("RepoTags") or [] if isinstance(t, str) and t != "<none>:<none>"]
        if not tags:
            return f"localhost/daemon-image:{hex_id}"
        name = tags[0]
    try:
        return str(ImageRef.parse(name))
    except InvalidReference:
        return f"localhost/daemon-image:{hex_id}"


def _layer_sizes(history: list[Any] | None, count: int) -> list[int | None]:
    """Each layer's content size from the daemon's history (a hint for the size guess), or Nones."""
    if history is None:
        return [None] * count
    sizes = [entry.get("Size") for entry in reversed(history) if isinstance(entry, dict)]
    if len(sizes) != count:  # empty_layer entries (ENV, LABEL) report 0: drop them when that fits
        sizes = [s for s in sizes if isinstance(s, int) and s > 0]
    if len(sizes) != count or not all(isinstance(s, int) for s in sizes):
        return [None] * count
    return list(sizes)


def _stream_save(
    engine: Engine,
    name: str,
    chooser: LayerChooser,
    store: BlobStore,
    progress: ProgressFactory | None,
    total: object,
) -> SaveContents:
    what = f"docker save of {name}"
    bar = progress(f"docker save {name}", total if isinstance(total, int) else None) if progress else None
    try:
        with engine.save(name) as stream:
            # The stream may be delimited by the connection's end: only the tar's own end proves it whole.
            return SaveReader(store, chooser, what=what, progress=bar).read(stream, require_end=True)
    finally:
        if bar is not None:
            bar.close()
