"""From what a docker save stream held to an image in the store: find it, check it, publish it.

The image is found through manifest.json (every docker save writes it, both layouts), else
through index.json (an OCI layout, following nested indexes). Every check happens before anything
is published: the config's sha256 is the name it was found under (and the image ID, when the
caller knows it), every layer's diff_id is the config's, every layer has bytes (new and staged,
or already stored). Then new blobs are published, their diff_id pairs recorded, the config kept
byte for byte, an OCI manifest written (:func:`cache.model.manifests.build_manifest`) and the image named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cache.errors import DigestMismatch, InvalidManifest, LayerhoardError, NotADockerSave, SourceError
from cache.formats.docker_save import SaveContents, SavedLayer, SaveEntry, manifest_entries
from cache.ingest.commit import Arrival
from cache.ingest.commit import commit as commit_image
from cache.ingest.report import LayerReport, PullReport
from cache.model.digest import Digest, parse_digest, sha256_of
from cache.model.manifests import (
    OCI_CONFIG,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    build_manifest,
    parse_config,
    parse_manifest,
    parse_manifest_or_index,
)
from cache.sources.staging import StagedBlob
from cache.sources.storedlayers import stored_layer
from cache.store.blobstore import BlobStore


class MissingLayers(LayerhoardError):
    """Layers the pass hashed without keeping (a wrong guess) and the store does not hold."""

    def __init__(self, diff_ids: list[Digest]) -> None:
        super().__init__(f"{len(diff_ids)} layer(s) were not kept in this pass, first {diff_ids[0]}")
        self.diff_ids = diff_ids


@dataclass
class LayerChoice:
    diff_id: Digest
    descriptor: Descriptor
    staged: StagedBlob | None  # to publish; None when the blob is already stored


@dataclass
class PreparedImage:
    config: ImageConfig
    layers: list[LayerChoice]
    repo_tags: tuple[str, ...]


def find_entries(contents: SaveContents, what: str) -> list[SaveEntry]:
    """The images of the save, from manifest.json, else from index.json."""
    manifest = contents.file("manifest.json")
    if manifest is not None:
        return manifest_entries(manifest, what)
    if contents.file("index.json") is not None:
        return _entries_from_index(contents, what)
    found = ", ".join(sorted(list(contents.files) + list(contents.layers))[:5]) or "nothing"
    raise NotADockerSave(
        f"{what} is not a docker save tar: no manifest.json or index.json (found {found}); "
        "it may also have been cut off before its end"
    )


def _entries_from_index(contents: SaveContents, what: str) -> list[SaveEntry]:
    """Walk index.json (and nested indexes) to the manifests whose blobs the tar holds."""
    entries = []
    pending: list[tuple[bytes | None, str]] = [(contents.file("index.json"), "index.json")]
    while pending:
        raw, name = pending.pop(0)
        if raw is None:
            continue  # a platform the save did not include
        try:
            parsed = parse_manifest_or_index(raw, what=f"{what}: {name}")
        except InvalidManifest as error:
            raise NotADockerSave(str(error)) from None
        if isinstance(parsed, Index):
            pending.extend((contents.file(_blob_path(child.digest)), str(child.digest)) for child in parsed.manifests)
            continue
        assert isinstance(parsed, Manifest)
        paths = tuple(_blob_path(layer.digest) for layer in parsed.layers)
        config_path = _blob_path(parsed.config.digest)
        if contents.has(config_path) and all(contents.has(p) for p in paths):
            entries.append(SaveEntry(config_path, paths, ()))
    if not entries:
        raise NotADockerSave(f"{what}: index.json names no image whose blobs are all in the tar")
    return entries


def pick_entry(entries: list[SaveEntry], what: str, image_id: Digest | None = None) -> SaveEntry:
    """The image to import: the one whose config is ``image_id``, else the only one."""
    if image_id is not None:
        for entry in entries:
            if _config_digest_from_path(entry.config_path) == image_id:
                return entry
    if len(entries) == 1:
        return entries[0]
    tags = ", ".join(tag for entry in entries for tag in entry.repo_tags) or "untagged"
    raise SourceError(f"{what} holds {len(entries)} images ({tags}); layerhoard imports one image per archive")


def _blob_path(digest: Digest) -> str:
    return f"blobs/sha256/{digest.hex}"


def _config_digest_from_path(path: str) -> Digest | None:
    """The digest a config's path names: ``<hex>.json`` (legacy) or ``blobs/sha256/<hex>`` (OCI)."""
    leaf = path.rsplit("/", 1)[-1]
    hex_part = leaf[: -len(".json")] if leaf.endswith(".json") else leaf
    try:
        return parse_digest(f"sha256:{hex_part}")
    except LayerhoardError:
        return None


def prepare(
    store: BlobStore,
    contents: SaveContents,
    entry: SaveEntry,
    what: str,
    *,
    image_id: Digest | None = None,
    diff_ids: Sequence[Digest] | None = None,
) -> PreparedImage:
    """Check one image of the save against its config (and the daemon's word) and pick its blobs."""
    raw = contents.file(entry.config_path)
    if raw is None:
        raise NotADockerSave(f"{what}: config {entry.config_path} is not in the tar")
    digest = sha256_of(raw)
    named = _config_digest_from_path(entry.config_path)
    if named is not None and named != digest:
        raise DigestMismatch(f"{what}: config {entry.config_path} has digest {digest}, not the one its name says")
    if image_id is not None and digest != image_id:
        raise DigestMismatch(f"{what}: config has digest {digest}, but the image ID is {image_id}")
    try:
        config = parse_config(raw, f"{what}: config")
    except InvalidManifest as error:
        raise NotADockerSave(str(error)) from None
    if diff_ids is not None and list(config.diff_ids) != list(diff_ids):
        raise DigestMismatch(f"{what}: the config's diff_ids differ from the daemon's")
    if len(entry.layer_paths) != len(config.diff_ids):
        raise NotADockerSave(
            f"{what}: manifest lists {len(entry.layer_paths)} layers, the config {len(config.diff_ids)}"
        )
    choices: list[LayerChoice] = []
    missing: list[Digest] = []
    for path, diff_id in zip(entry.layer_paths, config.diff_ids, strict=True):
        layer = contents.layer(path)
        if layer is None:
            raise NotADockerSave(f"{what}: layer {path} is {'not a layer tar' if contents.has(path) else 'missing'}")
        _check_diff_id(layer, diff_id, what)
        choice = _choose(store, layer, diff_id, choices)
        if choice is None:
            missing.append(diff_id)
        else:
            choices.append(choice)
    if missing:
        raise MissingLayers(missing)
    return PreparedImage(config, choices, entry.repo_tags)


def _check_diff_id(layer: SavedLayer, diff_id: Digest, what: str) -> None:
    if layer.diff_id is None:
        raise NotADockerSave(f"{what}: layer {layer.path} could not be checked")
    if layer.diff_id != diff_id:
        raise DigestMismatch(
            f"{what}: layer {layer.path} uncompresses to {layer.diff_id}, the config says {diff_id}"
        )


def _choose(store: BlobStore, layer: SavedLayer, diff_id: Digest, earlier: list[LayerChoice]) -> LayerChoice | None:
    for choice in earlier:  # the same layer twice in one image: one blob
        if choice.diff_id == diff_id:
            return LayerChoice(diff_id, choice.descriptor, None)
    stored = stored_layer(store, diff_id)
    staged = layer.staged
    if stored is not None and (staged is None or _prefer_stored(stored, staged)):
        return LayerChoice(diff_id, stored, None)
    if staged is not None:
        return LayerChoice(diff_id, Descriptor(staged.media_type, staged.digest, staged.size), staged)
    return None


def _prefer_stored(stored: Descriptor, staged: StagedBlob) -> bool:
    """A stored blob wins over a staged copy, except that a gzip blob from the tar wins over our zstd."""
    return not (staged.media_type.endswith("+gzip") and not stored.media_type.endswith("+gzip"))


def commit(
    store: BlobStore,
    contents: SaveContents,
    prepared: PreparedImage,
    refs: Sequence[str],
    source: str,
    started: float,
) -> PullReport:
    """Publish the new blobs and record their diff_id pairs (staging hashed them), then hand the
    image to the commit path (cache/ingest/commit.py), named under ``refs``."""
    reports: list[LayerReport] = []
    layers: list[Descriptor] = []
    for choice in prepared.layers:
        written = False
        if choice.staged is not None:
            written = contents.staging.publish(choice.staged, source)
            store.index.record_diff_id(choice.descriptor.digest, choice.diff_id, choice.descriptor.media_type)
        layers.append(choice.descriptor)
        reports.append(LayerReport(str(choice.descriptor.digest), str(choice.diff_id), choice.descriptor.size,
                                   choice.descriptor.media_type, reused=not written))
    contents.discard()  # staged copies that turned out not to be needed
    arrival = _arrival(store, prepared.config, layers, source, reports)
    arrival.bytes_fetched = contents.bytes_read
    return commit_image(store, arrival, refs, started)


def _arrival(
    store: BlobStore, config: ImageConfig, layers: list[Descriptor], source: str, reports: list[LayerReport]
) -> Arrival:
    """The OCI manifest of a saved image (its config kept byte for byte), ready for the commit."""
    store.put_bytes(config.raw, OCI_CONFIG, source)
    manifest = parse_manifest(build_manifest(Descriptor(OCI_CONFIG, config.digest, len(config.raw)), layers))
    return Arrival(source, manifest, platform=config.platform, layers=reports)


def record_stored(
    store: BlobStore, config_raw: bytes, refs: Sequence[str], source: str, started: float
) -> PullReport | None:
    """The image from stored blobs only (no stream at all), or None when a layer is not stored."""
    config = parse_config(config_raw)
    layers = [stored_layer(store, diff_id) for diff_id in config.diff_ids]
    if any(layer is None for layer in layers):
        return None
    chosen = [layer for layer in layers if layer is not None]
    reports = [LayerReport(str(d.digest), str(diff_id), d.size, d.media_type, reused=True)
               for d, diff_id in zip(chosen, config.diff_ids, strict=True)]
    return commit_image(store, _arrival(store, config, chosen, source, reports), refs, started)
