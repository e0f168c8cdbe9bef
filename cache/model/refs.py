"""Image references and transports, with Docker's normalisation rules.

    docker://REF             a registry image; the default when no transport is given
    docker-daemon:NAME[:TAG] an image in the local Docker daemon (or sha256:<id>)
    oci:DIR[:REF]            an OCI image layout on disk
    docker-archive:FILE      a `docker save` tarball

``alpine`` normalises to ``docker.io/library/alpine:latest``, as Docker does.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Protocol

from cache.errors import InvalidDigest, InvalidReference
from cache.model.digest import Digest, parse_digest

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")


class ImageRef(NamedTuple):
    """A normalised registry reference: registry, repository, and a tag and/or a digest."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str, default_registry: str = DEFAULT_REGISTRY) -> ImageRef:
        original = text
        if not text or len(text) > 4096 or any(c.isspace() for c in text):
            raise InvalidReference(f"invalid image reference {original[:100]!r}")
        digest = None
        if "@" in text:
            text, digest_text = text.split("@", 1)
            try:
                digest = parse_digest(digest_text)
            except InvalidDigest as error:
                raise InvalidReference(f"invalid image reference {original!r}: {error}") from None
        tag = None
        slash = text.rfind("/")
        colon = text.rfind(":")
        if colon > slash:
            text, tag = text[:colon], text[colon + 1:]
            if not _TAG.fullmatch(tag):
                raise InvalidReference(f"invalid tag {tag!r} in {original!r}")
        first, _, rest = text.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
            registry, path = first, rest
            if not _DOMAIN.fullmatch(registry):
                raise InvalidReference(f"invalid registry {registry!r} in {original!r}")
        else:
            registry, path = default_registry, text
        if registry in ("index.docker.io", "registry-1.docker.io"):
            registry = DEFAULT_REGISTRY
        if registry == DEFAULT_REGISTRY and "/" not in path:
            path = f"library/{path}"
        if not _PATH.fullmatch(path):
            raise InvalidReference(
                f"invalid repository {path!r} in {original!r}: use lower-case letters, digits and . _ - /"
            )
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(registry, path, tag, digest)

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes after /manifests/ in a registry URL: the digest when pinned, else the tag."""
        return str(self.digest) if self.digest else (self.tag or DEFAULT_TAG)

    def with_digest(self, digest: Digest) -> ImageRef:
        return ImageRef(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


class RegistrySource(NamedTuple):
    ref: ImageRef

    @property
    def kind(self) -> str:
        return "registry"

    def __str__(self) -> str:
        return f"docker://{self.ref}"


DAEMON_NAMES = "docker-daemon:"


def daemon_image_name(ref: str) -> str:
    """The index.json name of a daemon image: its normalised reference after ``docker-daemon:``, so
    an image from the daemon and one pulled from a registry under the same name are two records
    that never overwrite each other (skopeo reads it as ``oci:<cache>:docker-daemon:<ref>``)."""
    return f"{DAEMON_NAMES}{ref}"


ARCHIVE_NAMES = "docker-archive:"
PUSHED_NAMES = "push:"
SERVED_KINDS = (PUSHED_NAMES, "", DAEMON_NAMES, ARCHIVE_NAMES)  # serve answers a name with the first stored


def archive_image_name(ref: str) -> str:
    """The index.json name of an image imported from a `docker save` tarball under one of its
    RepoTags: ``docker-archive:`` and the reference, apart from the registry's image of that name."""
    return f"{ARCHIVE_NAMES}{ref}"


def pushed_image_name(ref: str) -> str:
    """The index.json name of an image pushed into ``serve``: ``push:`` and its reference, apart
    from the registry image the cache mirrors under the same reference."""
    return f"{PUSHED_NAMES}{ref}"


def served_name(name: str) -> str:
    """A stored name without its kind (``push:``, ``docker-daemon:``): the reference serve answers."""
    for prefix in SERVED_KINDS:
        if prefix and name.startswith(prefix):
            return name[len(prefix):]
    return name


class DaemonSource(NamedTuple):
    name: str  # as the daemon knows it: NAME:TAG, or an image ID

    @property
    def kind(self) -> str:
        return "daemon"

    def __str__(self) -> str:
        return f"docker-daemon:{self.name}"


class LayoutSource(NamedTuple):
    path: str
    ref: str | None

    @property
    def kind(self) -> str:
        return "oci"

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.ref}" if self.ref else "")


class ArchiveSource(NamedTuple):
    path: str

    @property
    def kind(self) -> str:
        return "archive"

    def __str__(self) -> str:
        return f"docker-archive:{self.path}"


class Source(Protocol):
    """What a user named as a source: ``str()`` gives it back as written, ``kind`` says which
    source (``stats`` counts per kind)."""

    @property
    def kind(self) -> str: ...


def parse_source(text: str) -> Source:
    """Parse ``[TRANSPORT:]REF`` as skopeo does; ``docker://`` is the default transport. Each
    transport's own module parses what follows its prefix (cache/sources/__init__.py)."""
    import importlib

    from cache.sources import REGISTRY, TRANSPORTS

    for transport in TRANSPORTS:
        if text.startswith(transport.prefix):
            parsed: Source = importlib.import_module(transport.module).parse(text[len(transport.prefix):])
            return parsed
    scheme = text.split(":", 1)[0]
    if re.fullmatch(r"[a-z-]+", scheme) and "://" not in text and scheme in (
        "dir", "containers-storage", "oci-archive", "docker-save",
    ):
        known = ", ".join(transport.prefix for transport in TRANSPORTS)
        raise InvalidReference(f"unsupported transport {scheme!r}: use {known}")
    return importlib.import_module(REGISTRY.module).parse(text)  # type: ignore[no-any-return]
