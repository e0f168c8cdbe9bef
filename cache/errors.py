"""The errors layerhoard raises. Each carries one line a user can act on."""

from __future__ import annotations


class LayerhoardError(Exception):
    """Base of every error the library raises on purpose; the CLI prints its message as one line."""


class InvalidDigest(LayerhoardError):
    """A digest string that is not exactly ``sha256:<64 lower-case hex>``."""


class InvalidReference(LayerhoardError):
    """An image reference or transport that cannot be parsed."""


class DigestMismatch(LayerhoardError):
    """Bytes whose sha256 is not the digest they were fetched or stored under."""


class SizeMismatch(LayerhoardError):
    """Bytes whose length is not the size the descriptor promised."""


class BlobNotFound(LayerhoardError):
    """A blob that the store does not hold."""


class ImageNotFound(LayerhoardError):
    """An image reference that the store (or a source) does not know."""


def evicted_while_read(ref: str, error: BlobNotFound) -> ImageNotFound:
    """What a reader (export, sbom) says when prune removed a blob of the image it is reading:
    docs/lifecycle.md promises this line, not the store's "not in the cache"."""
    return ImageNotFound(f"{ref} was evicted from the cache while in use; fetch it again ({error})")


class InvalidManifest(LayerhoardError):
    """A manifest, index or config that does not parse or breaks the OCI rules."""


class NotScanned(LayerhoardError):
    """An image's SBOM asked of the scan records alone (the web view), where a layer has none."""


class BadViewRequest(LayerhoardError):
    """A request to the web view that cannot be answered: an unknown page, a size that does not
    parse, an image that is not cached."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class SourceError(LayerhoardError):
    """A source (registry, daemon, layout, archive) that failed or answered badly."""


class DaemonUnavailable(SourceError):
    """No Docker (or podman) daemon answered at the address in use."""


class DirectReadRefused(SourceError):
    """A daemon's storage that cannot be read directly (not permitted, another driver, a file that
    changed, a layer that does not hash to its diff_id): the pull falls back to `docker save`."""


class InvalidTarSplit(DirectReadRefused):
    """A tar-split record that does not parse, or breaks the format's rules."""


class StreamCutOff(SourceError):
    """A `docker save` stream or archive that ended before its end."""


class NotADockerSave(SourceError):
    """A tar stream that is not what `docker save` writes (neither the legacy nor the OCI layout)."""


class DeliveryError(LayerhoardError):
    """An air-gapped delivery that cannot go on: a malformed lock file, inventory or bundle, a locked
    digest that cannot be had, or a bundle that assumes blobs the cache does not hold."""
