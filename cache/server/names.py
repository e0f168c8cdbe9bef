"""How a request's repository name maps to an image name in the store, as a mirror does.

``/v2/<path>/...`` means ``<default-registry>/<path>`` (``library/`` added for one-word Docker Hub
names); containerd's ``?ns=<registry>`` names another registry. The path is checked against the
distribution grammar before anything else sees it, so ``..``, ``%2e`` or empty components never
reach a lookup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cache.errors import InvalidReference
from cache.model.refs import DEFAULT_REGISTRY, ImageRef
from cache.server.errors import RegistryError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
MAX_NAME = 255
_HUB_ALIASES = (DEFAULT_REGISTRY, "index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class Repository:
    registry: str
    path: str  # as stored: library/alpine for Docker Hub's alpine

    @property
    def full(self) -> str:
        return f"{self.registry}/{self.path}"


def normalise_registry(name: str) -> str:
    """The registry as index.json names it (``docker.io`` for Docker Hub's aliases); anything but an
    ASCII host name (with an optional port) is NAME_INVALID, so a value checked here is safe to echo."""
    if not (name.isascii() and name.isprintable()) or len(name) > MAX_NAME:
        raise RegistryError("NAME_INVALID", f"invalid registry {name[:100]!r}")
    try:
        registry = ImageRef.parse(f"{name}/x").registry
    except InvalidReference:
        registry = None
    if registry is None or (registry == DEFAULT_REGISTRY and name not in _HUB_ALIASES):
        raise RegistryError("NAME_INVALID", f"invalid registry {name[:100]!r}")
    return registry


def resolve(path: str, registry: str) -> Repository:
    """The stored repository ``path`` names in ``registry`` (normalised already); raises NAME_INVALID
    for anything off-grammar."""
    if len(path) > MAX_NAME or not _PATH.fullmatch(path):
        raise RegistryError("NAME_INVALID", "invalid repository name", {"name": path[:MAX_NAME]})
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    return Repository(registry, path)
