"""``docker-daemon:NAME``: an image from a Docker (or podman) daemon, streaming only new layers.

1. Inspect the image (its ID is the config's sha256, RootFS.Layers its diff_ids).
2. If the config and a blob for every diff_id are stored (an earlier daemon pull, or registry
   pulls whose diff_ids we verified), record the image from the store: no `docker save` at all.
3. Otherwise, when ``/info`` says overlay2 (or vfs) and its data root is readable here (root, or rootless
   docker's data root in the user's home), rebuild only the new layers from the daemon's own
   storage (:mod:`cache.sources.layer_rebuild`, with :mod:`cache.sources.dockerd_storage` saying
   where each layer is), each hashed to its diff_id: no save at all. podman's ``/info`` names its
   containers-storage graph root (overlay or vfs), read the same way
   (:mod:`cache.sources.containers_storage`).
   A daemon whose ``/info`` says it keeps images in containerd (Docker's containerd image store)
   is read from containerd's content store instead, as ``containerd:`` reads it
   (:mod:`cache.sources.containerd`): the image ID is the digest of the image's index or manifest.
4. Otherwise, or when that read is refused (not permitted, another driver, a file that changed,
   a hash that does not match), stream ``GET /images/{name}/get`` once through :class:`SaveReader`:
   new layers are compressed with our fixed zstd while their diff_id is computed, stored ones only
   hashed; the config is kept byte for byte and checked against the image ID; an OCI manifest is
   written. If a guess about which legacy folder holds which layer was wrong, one more, exact pass
   follows. The report says which way was taken (``route``) and why the direct read was not
   (``fallback``).

The daemon is found as the docker CLI finds it, and spoken to as :mod:`cache.sources.engine`
says. The image is recorded under its full normalised name
(``app:1`` → ``docker.io/library/app:1``), its source as ``docker-daemon:app:1``.
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any

from cache.errors import (
    DirectReadRefused,
    InvalidDigest,
    InvalidManifest,
    InvalidReference,
    LayerhoardError,
    SourceError,
)
from cache.formats.docker_save import LayerChooser, SaveContents, SaveReader
from cache.ingest.report import PullReport
from cache.model.digest import Digest, parse_digest
from cache.model.manifests import OCI_CONFIG, OCI_LAYER_ZSTD, parse_config
from cache.model.refs import DEFAULT_TAG, DaemonSource, ImageRef, Source, daemon_image_name
from cache.progress import ProgressFactory
from cache.sources.containers_storage import ContainersStorage, is_podman, podman_storage
from cache.sources.dockerd_storage import DockerdStorage, daemon_storage
from cache.sources.engine import Engine, connect
from cache.sources.layer_rebuild import StorageRoot, rebuild_layers
from cache.sources.saveimage import MissingLayers, commit, find_entries, pick_entry, prepare, record_stored
from cache.sources.staging import Staging
from cache.sources.storedlayers import stored_layer
from cache.store.blobstore import BlobStore
from cache.store.images import BlobsEvicted

if TYPE_CHECKING:
    from cache.ingest.pull import PullOptions


def parse(name: str) -> DaemonSource:
    if not name:
        raise InvalidReference("docker-daemon: needs an image name, like docker-daemon:app:1")
    if not name.startswith("sha256:") and "@" not in name:
        # Docker's own names: normalise but keep what the daemon understands.
        ImageRef.parse(name)
        if ":" not in name.rsplit("/", 1)[-1]:
            name += f":{DEFAULT_TAG}"
    return DaemonSource(name)


def pull(store: BlobStore, source: Source, options: PullOptions) -> PullReport:
    assert isinstance(source, DaemonSource)
    return pull_from_daemon(store, source, docker_host=options.docker_host, progress=options.progress,
                            containerd_root=options.containerd_root)


NO_STORAGE_READS = "LAYERHOARD_NO_DAEMON_STORAGE"  # set (to anything): always stream docker save


def pull_from_daemon(
    store: BlobStore,
    source: DaemonSource,
    *,
    docker_host: str | None = None,
    progress: ProgressFactory | None = None,
    containerd_root: str | None = None,
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
            if _diff_ids_of(config_raw) == diff_ids:
                stored = record_stored(store, config_raw, [ref], str(source), started)
                if stored is not None:
                    stored.route = "store"
                    return stored
        try:
            return _pull_direct(store, engine, source, image_id, diff_ids, ref, started, progress, containerd_root)
        except DirectReadRefused as why:
            fallback = str(why)
        try:
            return _pull_saved(store, engine, source, info, image_id, diff_ids, ref, started, progress, fallback)
        except LayerhoardError as error:  # the one line also says why the save was needed
            error.args = (f"{error} (streamed docker save because {fallback})", *error.args[1:])
            raise
    finally:
        engine.close()


def _pull_saved(
    store: BlobStore,
    engine: Engine,
    source: DaemonSource,
    info: dict[str, Any],
    image_id: Digest,
    diff_ids: list[Digest],
    ref: str,
    started: float,
    progress: ProgressFactory | None,
    fallback: str,
) -> PullReport:
    """The image through one ``docker save`` stream (twice when the first pass kept the wrong layers)."""
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
            report.requests, report.route, report.fallback = attempt, "docker save", fallback
            return report
        except MissingLayers:
            if attempt == 2:
                raise SourceError(f"docker save of {source.name} did not give every layer twice in a row") from None
            learned = contents.path_diff_ids()  # now exact: the second pass keeps the right layers
        finally:
            contents.discard()
    raise AssertionError("unreachable")


def _pull_direct(
    store: BlobStore,
    engine: Engine,
    source: DaemonSource,
    image_id: Digest,
    diff_ids: list[Digest],
    ref: str,
    started: float,
    progress: ProgressFactory | None,
    containerd_root: str | None = None,
) -> PullReport:
    """The image from the daemon's own storage (dockerd's overlay2 or vfs, podman's overlay or vfs
    containers-storage): its config, and each layer not stored yet rebuilt and hashed to its
    diff_id; from containerd's content store when the daemon keeps its images there;
    DirectReadRefused (nothing stored) when that cannot be done."""
    if os.environ.get(NO_STORAGE_READS):
        raise DirectReadRefused(f"{NO_STORAGE_READS} is set")
    daemon_info = engine.info()
    if keeps_images_in_containerd(daemon_info):
        return _pull_from_containerd_store(store, daemon_info, image_id, ref, source, started, progress,
                                           containerd_root)
    with _storage(daemon_info) as storage:
        config_raw = storage.config(image_id)
        if list(parse_config(config_raw).diff_ids) != diff_ids:
            raise DirectReadRefused("the daemon's stored config lists other layers than its inspect")
        new = {diff_id for diff_id in dict.fromkeys(diff_ids) if stored_layer(store, diff_id) is None}
        staging = Staging(store)
        try:
            rebuilt = rebuild_layers(storage, storage.places(diff_ids, new), staging, progress)
            for layer in rebuilt:  # every layer hashed to its diff_id: only now is anything published
                staging.publish(layer.staged, str(source))
                # The pair is ours: zstd's output hashed as written, the tar it came from hashed as rebuilt.
                store.index.record_diff_id(layer.staged.digest, layer.diff_id, OCI_LAYER_ZSTD)
        finally:
            staging.discard()
    store.put_bytes(config_raw, OCI_CONFIG, str(source))
    report = record_stored(store, config_raw, [ref], str(source), started)
    if report is None:
        raise BlobsEvicted(f"a layer of {source.name} was evicted while in use; pull again")
    read = {str(layer.diff_id) for layer in rebuilt}
    for layer_report in report.layers:
        layer_report.reused = layer_report.diff_id not in read
    report.bytes_reused = sum(layer.size for layer in report.layers if layer.reused)
    report.bytes_fetched = sum(layer.tar_size for layer in rebuilt)
    report.route = storage.route
    return report


def _storage(daemon_info: dict[str, Any] | None) -> StorageRoot:
    """The daemon's layer storage, held open: podman's containers-storage when ``/info`` is
    podman's, else dockerd's data root."""
    if is_podman(daemon_info):
        return ContainersStorage(*podman_storage(daemon_info))
    return DockerdStorage(*daemon_storage(daemon_info))


CONTAINERD_SNAPSHOTTER = ["driver-type", "io.containerd.snapshotter.v1"]  # /info DriverStatus, Docker 24+


def keeps_images_in_containerd(info: dict[str, Any] | None) -> bool:
    """Whether ``/info`` says the daemon keeps its images in containerd (the containerd image store)."""
    status = info.get("DriverStatus") if info else None
    return isinstance(status, list) and CONTAINERD_SNAPSHOTTER in status


def _pull_from_containerd_store(
    store: BlobStore,
    daemon_info: dict[str, Any] | None,
    image_id: Digest,
    ref: str,
    source: DaemonSource,
    started: float,
    progress: ProgressFactory | None,
    containerd_root: str | None,
) -> PullReport:
    """Docker's containerd image store (namespace ``moby``): the image ID is the digest of the image's
    index or manifest in containerd's content store, whose blobs are read (and linked) as
    ``containerd:`` reads them. The root: ``containerd_root``, else containerd's default, else the
    one dockerd runs itself under its data root."""
    from cache.sources.containerd import DEFAULT_ROOT, ContentStore, pull_target, target_of

    data_root = (daemon_info or {}).get("DockerRootDir")
    roots = [containerd_root] if containerd_root else [DEFAULT_ROOT, f"{data_root}/containerd/daemon"]
    reasons = []
    for root in roots:
        try:
            content = ContentStore(root)
        except SourceError as error:
            reasons.append(str(error))
            continue
        with content:
            if content.has(image_id):
                return pull_target(store, content, target_of(content, image_id), [ref], str(source), started,
                                   progress=progress)
            reasons.append(f"{content.where} has no blob {image_id}")
    raise DirectReadRefused(f"the daemon keeps images in containerd, but {'; '.join(reasons)}")


def _diff_ids_of(config_raw: bytes) -> list[Digest] | None:
    """A stored config's diff_ids; None when the image ID names no config (Docker's containerd
    store names the image's index or manifest)."""
    try:
        return list(parse_config(config_raw).diff_ids)
    except InvalidManifest:
        return None


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
