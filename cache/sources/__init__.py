"""Where images come from: registries, the Docker daemon, OCI layouts, docker-archive tarballs.

Each source is one module here, registered by one row of :data:`TRANSPORTS`: the prefix users
write before a reference, and the module, which has

    parse(rest: str) -> Source                                   the reference after the prefix
    pull(store, source, options: PullOptions) -> PullReport      bring it in, ending in cache.ingest.commit

A reference with no registered prefix is a registry reference (``docker://`` is the default, as
for skopeo). Modules are imported when their transport is used: `pull oci:` never loads the
registry client, `export` of a cached image loads no source at all.
"""

from __future__ import annotations

from typing import NamedTuple

DEFAULT_JOBS = 4  # blobs in flight: enough to fill a link to a registry; more adds contention on 2 cores


class Transport(NamedTuple):
    prefix: str  # as users write it, e.g. "docker-daemon:"
    kind: str  # the ``kind`` of the sources it parses (stats counts per kind)
    module: str  # the source's module (parse and pull)


TRANSPORTS = (
    Transport("docker://", "registry", "cache.sources.registry"),
    Transport("docker-daemon:", "daemon", "cache.sources.daemon"),
    Transport("oci:", "oci", "cache.sources.layout"),
    Transport("docker-archive:", "archive", "cache.sources.archive"),
    Transport("containerd:", "containerd", "cache.sources.containerd"),
)
REGISTRY = TRANSPORTS[0]


def source_module(kind: str) -> str:
    """The module of the sources of ``kind``."""
    for transport in TRANSPORTS:
        if transport.kind == kind:
            return transport.module
    raise ValueError(f"no source of kind {kind!r}")
