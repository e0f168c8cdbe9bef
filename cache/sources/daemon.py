"""``docker-daemon:NAME``: an image from a Docker (or podman) daemon, streaming only new layers.

1. Inspect the image (its ID is the config's sha256, RootFS.Layers its diff_ids).
2. If the config and a blob for every diff_id are stored (an earlier daemon pull, or registry
   pulls whose diff_ids we verified), record the image from the store: no `docker save` at all.
3. Otherwise stream ``GET /images/{name}/get`` once through :class:`SaveReader`: new layers are
   compressed with our fixed zstd while their diff_id is computed, stored ones only hashed; the
   config is kept byte for byte and checked against the image ID; an OCI manifest is written.
   If a guess about which legacy folder holds which layer was wrong, one more, exact pass follows.

The daemon is found as the docker CLI finds it: ``docker_host`` (``--docker-host``), else
DOCKER_HOST (and DOCKER_TLS_VERIFY / DOCKER_CERT_PATH), else the current docker context, else
the default socket. The image is recorded under its full normalised name
(``app:1`` → ``docker.io/library/app:1``), its source as ``docker-daemon:app:1``.
"""

from __future__ import annotations

import http.client
import os
import re
import time
from typing import Any

import docker
import docker.errors
import requests

from cache.digest import Digest, parse_digest
from cache.errors import (
    DaemonUnavailable,
    ImageNotFound,
    InvalidDigest,
    InvalidManifest,
    InvalidReference,
    SourceError,
    StreamCutOff,
)
from cache.model import parse_config
from cache.progress import ProgressFactory
from cache.refs import DaemonSource, ImageRef
from cache.report import PullReport
from cache.sources.dockersave import LayerChooser, SaveContents, SaveReader
from cache.sources.saveimage import MissingLayers, commit, find_entries, pick_entry, prepare, record_stored
from cache.store import BlobStore

API_TIMEOUT = 120  # inspect and history; the save stream itself has no timeout (docker-py#2097)
HINT = "start it, or point at one with DOCKER_HOST=unix:///path/to/docker.sock or --docker-host"


def pull_from_daemon(
    store: BlobStore,
    source: DaemonSource,
    *,
    docker_host: str | None = None,
    progress: ProgressFactory | None = None,
) -> PullReport:
    """Bring the daemon's image ``source.name`` into ``store``; see the module text for how."""
    started = time.monotonic()
    client, host = connect(docker_host)
    try:
        info = _inspect(client, host, source.name)
        image_id = _digest(info.get("Id"), "image ID")
        diff_ids = [_digest(d, "layer diff_id") for d in (info.get("RootFS") or {}).get("Layers") or []]
        ref = record_name(source.name, info)
        if store.has(image_id):
            config_raw = store.read_bytes(image_id)
            if list(parse_config(config_raw).diff_ids) == diff_ids:
                stored = record_stored(store, config_raw, [ref], str(source), started)
                if stored is not None:
                    return stored
        sizes = _layer_sizes(client, source.name, len(diff_ids))
        learned: dict[str, Digest] = {}
        for attempt in (1, 2):
            chooser = LayerChooser(store, diff_ids, sizes, learned)
            contents = _stream_save(client, host, source.name, chooser, store, progress, info.get("Size"))
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
        client.close()


def connect(docker_host: str | None = None) -> tuple[Any, str]:
    """An API client for the daemon the docker CLI would use (or ``docker_host``), and its address."""
    try:
        kwargs: dict[str, Any] = docker.utils.kwargs_from_env()
    except docker.errors.DockerException as error:
        raise DaemonUnavailable(f"bad Docker settings in the environment: {error}") from None
    if docker_host:
        kwargs["base_url"] = docker_host
    elif not kwargs.get("base_url"):
        context_host = _context_host()
        if context_host:
            kwargs["base_url"] = context_host
    host = str(kwargs.get("base_url") or "unix:///var/run/docker.sock")
    try:
        client = docker.APIClient(version="auto", timeout=API_TIMEOUT, **kwargs)
    except docker.errors.DockerException as error:
        raise DaemonUnavailable(f"no Docker daemon reachable at {host} ({_reason(error)}); {HINT}") from None
    return client, host


def _context_host() -> str | None:
    """The current docker context's endpoint (``docker context use``), when it is not the default."""
    if os.environ.get("DOCKER_CONTEXT") is None and not os.path.exists(os.path.expanduser("~/.docker/config.json")):
        return None
    try:
        from docker.context import ContextAPI

        context = ContextAPI.get_current_context()
    except Exception:  # a broken context store must not stop a pull that needs no context
        return None
    host = getattr(context, "Host", None) if context is not None else None
    return host if isinstance(host, str) and host else None


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    match = re.search(r"(\[Errno [^\]]+\][^')\"]*)", text)
    return match.group(1).strip() if match else text[:200]


def _inspect(client: Any, host: str, name: str) -> dict[str, Any]:
    try:
        info = client.inspect_image(name)
    except docker.errors.ImageNotFound:
        raise ImageNotFound(
            f"image {name!r} is not in the Docker daemon at {host}; docker pull, build or load it first"
        ) from None
    except docker.errors.APIError as error:
        raise SourceError(f"the Docker daemon at {host} refused to inspect {name!r}: {error.explanation}") from None
    except requests.exceptions.RequestException as error:
        raise DaemonUnavailable(f"no Docker daemon reachable at {host} ({_reason(error)}); {HINT}") from None
    if not isinstance(info, dict):
        raise SourceError(f"the Docker daemon at {host} answered the inspect of {name!r} with no image")
    return info


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


def _layer_sizes(client: Any, name: str, count: int) -> list[int | None]:
    """Each layer's content size from the daemon's history (a hint for the size guess), or Nones."""
    try:
        history = client.history(name)
    except (docker.errors.APIError, requests.exceptions.RequestException):
        return [None] * count
    sizes = [entry.get("Size") for entry in reversed(history) if isinstance(entry, dict)]
    if len(sizes) != count:  # empty_layer entries (ENV, LABEL) report 0: drop them when that fits
        sizes = [s for s in sizes if isinstance(s, int) and s > 0]
    if len(sizes) != count or not all(isinstance(s, int) for s in sizes):
        return [None] * count
    return list(sizes)


def _body(response: Any) -> Any:
    """The save stream's body as something with ``readinto``, reading as directly as it can.

    urllib3's ``read`` re-buffers and joins every read; http.client's own ``readinto`` decodes
    the chunked transfer encoding straight into our buffers. Used only when urllib3 has nothing
    buffered and nothing to decode (the daemon sends a plain tar); else urllib3's response.
    """
    raw = response.raw
    inner = getattr(raw, "_fp", None)
    plain = (raw.headers.get("Content-Encoding") or "identity").lower() == "identity"
    untouched = not getattr(raw, "_decoded_buffer", None) and not getattr(raw, "_fp_bytes_read", 0)
    if isinstance(inner, http.client.HTTPResponse) and plain and untouched:
        return inner
    return raw


def _stream_save(
    client: Any,
    host: str,
    name: str,
    chooser: LayerChooser,
    store: BlobStore,
    progress: ProgressFactory | None,
    total: object,
) -> SaveContents:
    what = f"docker save of {name}"
    try:
        response = client._get(client._url("/images/{0}/get", name), stream=True, timeout=None)
        client._raise_for_status(response)
    except docker.errors.NotFound:
        raise ImageNotFound(f"image {name!r} disappeared from the Docker daemon at {host} before the save") from None
    except docker.errors.APIError as error:
        raise SourceError(f"the Docker daemon at {host} refused to save {name!r}: {error.explanation}") from None
    except requests.exceptions.RequestException as error:
        raise DaemonUnavailable(f"no Docker daemon reachable at {host} ({_reason(error)}); {HINT}") from None
    bar = progress(f"docker save {name}", total if isinstance(total, int) else None) if progress else None
    try:
        reader = SaveReader(store, chooser, what=what, progress=bar)
        return reader.read(_body(response))
    except (InvalidManifest, StreamCutOff):
        raise
    finally:
        if bar is not None:
            bar.close()
        response.close()
