"""Export into a Docker daemon through its load API (``docker-daemon:NAME:TAG``), streamed.

The tarball of cache.sinks.archive is written by a thread into a pipe and the request body is
read from the other end, so a 20 GB image costs a pipe's worth of memory, not 20 GB (the OOM that
zarf's ADR 0012 reports came from buffering exactly this stream).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

from cache.errors import LayerhoardError
from cache.model.manifests import Manifest
from cache.sinks.archive import write_archive
from cache.store.blobstore import BlobStore

PIPE_READ = 1 << 20


def load_into_daemon(store: BlobStore, manifest: Manifest, name: str, docker_host: str | None = None) -> int:
    """Load ``manifest`` as ``name`` (NAME:TAG) into the daemon; returns the tarball's size."""
    import docker  # imported here: only this sink needs it, and it is slow to import

    try:
        client = docker.APIClient(base_url=docker_host, version="auto", timeout=3600) if docker_host \
            else docker.from_env(version="auto", timeout=3600).api
    except docker.errors.DockerException as error:
        raise LayerhoardError(f"cannot reach the Docker daemon: {error}") from None
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []
    written: list[int] = []

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb") as out:
                written.append(write_archive(store, manifest, [name], out).bytes_written)
        except BaseException as error:  # reported after the request: the daemon sees a cut tar
            failure.append(error)

    producer = threading.Thread(target=produce, name="layerhoard-load", daemon=True)
    producer.start()
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            messages = client.load_image(_chunks(pipe), quiet=True)
            errors = [_error_of(m) for m in messages if _error_of(m)]
    except docker.errors.APIError as error:
        raise LayerhoardError(f"the Docker daemon refused the image: {error.explanation or error}") from None
    finally:
        producer.join()
        client.close()
    if failure:
        raise failure[0]
    if errors:
        raise LayerhoardError(f"the Docker daemon refused the image: {errors[0]}")
    return written[0]


def _chunks(pipe: Any) -> Iterator[bytes]:
    while chunk := pipe.read1(PIPE_READ):
        yield chunk


def _error_of(message: Any) -> str | None:
    if isinstance(message, dict) and message.get("error"):
        return str(message.get("errorDetail", {}).get("message") or message["error"])
    return None
