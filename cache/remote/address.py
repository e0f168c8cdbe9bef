"""The remote tier's address and naming: which registry repository, and what an image is called there.

    layerhoard config set remote registry.example.com/team/layerhoard-cache
    layerhoard config set remote-mode read-only      # CI runners: use the remote, never fill it

The remote is one repository of an ordinary OCI registry. It holds every blob (by digest, as any
repository does) and every image's manifest, pushed under its digest and tagged by a name derived
from the image, so a second machine can resolve a name through the remote without the origin:

    docker.io/library/alpine:3.20 (linux/amd64)  ->  docker.io_library_alpine_3.20--linux_amd64--1b2c3d4e5f60
    docker-daemon: docker.io/library/app:dev     ->  daemon--docker.io_library_app_dev--linux_amd64--0a9f...

Tags can hold only ``[A-Za-z0-9_.-]`` and 128 characters, so the name is sanitised and cut for
readability, and the last 12 hex digits of sha256("<kind>:<name>#<platform>") keep distinct names
apart (``a/b`` and ``a_b`` sanitise alike). The kind keeps a daemon's ``app:dev`` (one developer's
build) apart from a registry's ``docker.io/library/app:dev``; the platform keeps an arm64 runner's
pull from taking an amd64 teammate's manifest. Pulls by digest need no tag at all.

This module is light on purpose: ``config set`` checks values with it, without loading the client.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cache.errors import InvalidReference
from cache.model.manifests import Platform
from cache.model.refs import ImageRef

MODES = ("read-write", "read-only")
INDEX_KEY = "index"  # the platform part of the tag of a whole multi-platform index (--all-platforms)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class RemoteSpec:
    registry: str
    repository: str
    read_only: bool = False

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"


def parse_remote(text: str, read_only: bool = False) -> RemoteSpec:
    """``REGISTRY/REPO`` (a registry host is required: a remote on Docker Hub is spelt docker.io/...)."""
    text = text.strip()
    try:
        ref = ImageRef.parse(text)
    except InvalidReference as error:
        raise InvalidReference(f"invalid remote {text!r}: {error}") from None
    if ref.digest is not None or ":" in text.rsplit("/", 1)[-1] or "/" not in text or ref.registry not in text:
        raise InvalidReference(f"invalid remote {text!r}: give REGISTRY/REPO, like registry.example.com/team/cache")
    return RemoteSpec(ref.registry, ref.repository, read_only)


def check_remote(text: str) -> str:
    """The config check for ``remote`` (ValueError with the reason)."""
    try:
        return parse_remote(text).name
    except InvalidReference as error:
        raise ValueError(str(error)) from None


def check_mode(text: str) -> str:
    """The config check for ``remote-mode``."""
    if text.strip() not in MODES:
        raise ValueError(f"expected one of {', '.join(MODES)}, not {text!r}")
    return text.strip()


def platform_key(platform: Platform | None) -> str:
    """The platform part of a tag: os/arch, with the variant only for 32-bit arm (where it matters;
    arm64's v8 is sometimes written and sometimes not, and must not split one image in two)."""
    if platform is None:
        return INDEX_KEY
    parts = [platform.os, platform.architecture]
    if platform.architecture == "arm" and platform.variant:
        parts.append(platform.variant)
    return "/".join(parts)


def remote_tag(kind: str, name: str, platform: str) -> str:
    """The tag of image ``name`` (as index.json names it) for ``platform`` (a :func:`platform_key`).

    ``kind`` is "docker" for registry images and "daemon" for images from a Docker daemon."""
    key = f"{kind}:{name}#{platform}"
    suffix = hashlib.sha256(key.encode()).hexdigest()[:12]
    tail = f"--{_UNSAFE.sub('_', platform)}--{suffix}"
    head = ("daemon--" if kind == "daemon" else "") + _UNSAFE.sub("_", name)
    return (head[: 128 - len(tail)] + tail).lstrip(".-") or suffix
