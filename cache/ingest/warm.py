"""Warming the cache with many images: lists from files and from a Zarf package definition.

Each blob is fetched once however many images share it: the store's per-digest lock makes a
second pull of a shared layer wait for the first and then reuse it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cache.errors import DeliveryError, LayerhoardError
from cache.ingest.pull import PullOptions, pull
from cache.ingest.report import PullReport
from cache.model.manifests import Platform
from cache.model.refs import RegistrySource
from cache.store.blobstore import BlobStore

if TYPE_CHECKING:
    from cache.delivery.lock import LockedImage, LockFile


def read_image_list(path: Path) -> list[str]:
    """One image per line; blank lines and ``#`` comments are skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise LayerhoardError(f"cannot read image list {path}: {error.strerror}") from None
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def read_zarf_images(path: Path) -> list[str]:
    """The images listed under ``components[].images`` of a zarf.yaml, in order, without repeats."""
    import yaml  # only the Zarf form needs it; keeps `pull` start-up short

    try:
        document: Any = yaml.safe_load(path.read_text())
    except OSError as error:
        raise LayerhoardError(f"cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise LayerhoardError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(document, dict) or not isinstance(document.get("components"), list):
        raise LayerhoardError(f"{path} is not a Zarf package definition (no components list)")
    images: list[str] = []
    for component in document["components"]:
        listed = component.get("images") if isinstance(component, dict) else None
        for image in listed or []:
            if not isinstance(image, str):
                raise LayerhoardError(f"{path}: component images must be strings, found {image!r}")
            if image not in images:
                images.append(image)
    return images


@dataclass
class WarmResult:
    reports: list[PullReport] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    missing_referrers: list[str] = field(default_factory=list)  # locked referrers not in the cache

    @property
    def bytes_fetched(self) -> int:
        return sum(r.bytes_fetched for r in self.reports)

    @property
    def bytes_reused(self) -> int:
        return sum(r.bytes_reused for r in self.reports)


def warm(store: BlobStore, sources: list[str], options: PullOptions) -> WarmResult:
    """Pull every source; a failing image is reported and the others still go on. The names go
    into index.json in batches (:meth:`BlobStore.deferred_names`), so a warm of thousands of images
    costs no more per image in a full cache than in an empty one."""
    started = time.monotonic()
    result = WarmResult()
    pulled: dict[str, tuple[str, PullReport]] = {}  # by the name each pull recorded
    with store.deferred_names() as names:  # index.json written in batches, not once per image
        for source in sources:
            try:
                report = pull(store, source, options)
            except LayerhoardError as error:
                result.failures.append((source, str(error)))
            else:
                pulled[report.ref] = (source, report)
    for ref, (source, report) in pulled.items():
        if ref not in names.failed:
            result.reports.append(report)
            continue
        try:  # its blobs were evicted before the batch was named: once more, alone
            result.reports.append(pull(store, source, options))
        except LayerhoardError as error:
            result.failures.append((source, str(error)))
    for ref, why in names.failed.items():
        if ref not in pulled:  # a second name of a multi-name pull (a docker save with several tags)
            result.failures.append((ref, why))
    result.seconds = round(time.monotonic() - started, 3)
    return result


def warm_locked(store: BlobStore, lock: LockFile, options: PullOptions) -> WarmResult:
    """Pull exactly the digests of ``lock``, each recorded under its locked name.

    Each image is asked for as ``REPO@DIGEST`` and recorded under its locked name: the registry is
    asked for the digest, never the tag, and a stored digest costs no request at all. Each locked
    platform is pulled on its own, and the platform manifest it gives is checked against the lock.
    An image that cannot be had fails naming the image; the others still go on. What the lock says
    travels with an image (referrers, cosign tags) and the cache lacks is fetched by digest too
    (cache/delivery/locked_referrers.py); with ``offline``, what is still missing is listed in
    ``missing_referrers``.
    """
    from cache.delivery.locked_referrers import fetch_locked_referrers  # the registry client, only here

    started = time.monotonic()
    result = WarmResult()
    with store.deferred_names() as names:
        for image in lock.images.values():
            try:
                reports = _pull_locked(store, image, options)
            except LayerhoardError as error:
                result.failures.append((image.name, f"locked digest {image.digest} cannot be had: {error}"))
                continue
            result.reports.extend(reports)
            try:
                if not options.offline:
                    fetch_locked_referrers(store, image, insecure=options.insecure)
            except LayerhoardError as error:
                result.failures.append((image.name, str(error)))
            result.missing_referrers += [str(d) for d in image.referrers if not store.has(d)]
    for ref, why in names.failed.items():
        result.failures.append((ref, why))
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _pull_locked(store: BlobStore, image: LockedImage, options: PullOptions) -> list[PullReport]:
    from cache.ingest.pull import ReferrerOptions

    source = RegistrySource(image.ref)
    # no discovery (its tag requests): what travels with the image is the lock's, fetched by digest
    options = options._replace(name=image.name, all_platforms=False, referrers=ReferrerOptions(enabled=False))
    platforms = [(name, digest) for name, digest in image.platforms.items() if digest != image.digest]
    if not platforms:  # a plain manifest: the name's own digest is all there is
        return [pull(store, source, options._replace(platform=None))]
    reports = []
    for name, digest in platforms:
        report = pull(store, source, options._replace(platform=Platform.parse(name)))
        if report.digest != digest:
            raise DeliveryError(f"{image.name}: platform {name} of {image.digest} is {report.digest}, "
                                f"the lock says {digest}")
        reports.append(report)
    return reports


def sbom_file_name(ref: str, format_name: str) -> str:
    """A file name for an image's SBOM: its reference with path-unsafe characters replaced."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in ref)
    return f"{safe}.{format_name.replace('-json', '')}.json"


def package(
    store: BlobStore,
    reports: list[PullReport],
    *,
    export_to: str | None,
    sbom_dir: Path | None,
    sbom_format: str = "spdx-json",
) -> list[dict[str, object]]:
    """The rest of a packaging build, in this process: every warmed image exported into one OCI
    layout and/or its SBOM written, so a cached build costs no process start-up per image."""
    from cache.sbom.attach import image_sbom_document
    from cache.sinks import export
    from cache.store.fsutil import write_atomic
    from cache.store.images import load_image

    done: list[dict[str, object]] = []
    if sbom_dir is not None:
        sbom_dir.mkdir(parents=True, exist_ok=True)
    for report in reports:
        image = load_image(store, report.ref)
        entry: dict[str, object] = {"ref": report.ref}
        if export_to is not None:
            entry["export"] = export(store, image, export_to, "keep").to_json()
        if sbom_dir is not None:  # an SBOM that travels with the image is written as it is, unscanned
            result = image_sbom_document(image, sbom_format)
            path = sbom_dir / sbom_file_name(report.ref, sbom_format)
            write_atomic(path, result.document)
            sbom = result.sbom
            entry["sbom"] = {"path": str(path), "packages": len(sbom.packages) if sbom else None,
                             "layers_scanned": sbom.layers_scanned if sbom else 0,
                             "layers_cached": sbom.layers_cached if sbom else 0,
                             "attached": str(result.attached) if result.attached else None}
        done.append(entry)
    return done
