"""The view's requests and their answers, apart from any server: ``serve`` (cache/server/handler.py)
and ``layerhoard ui`` (standalone.py) both call :func:`answer` and send what it returns.

    /                                   the page (``?max_size=20G`` adds the prune preview)
    /view/static/view.css, view.js      the page's own style and script, from this package
    /view/sbom?ref=NAME&format=FORMAT   a cached image's SBOM, from its scan records (never a scan)

Only GET and HEAD reach here, and nothing here writes to the cache. Every answer carries a Content
Security Policy that allows this origin's style and script and nothing else (no inline script, no
other host): a name that slipped past escaping still could not run.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from cache.errors import BadViewRequest, ImageNotFound, LayerhoardError, NotScanned
from cache.sbom import FORMATS, render
from cache.sbom.stored import stored_sbom
from cache.store.blobstore import BlobStore
from cache.view.facts import gather
from cache.view.render import PREFIX, render_error_page, render_page

ASSETS = {"view.css": "text/css; charset=utf-8", "view.js": "text/javascript; charset=utf-8"}
SECURITY = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
HTML = "text/html; charset=utf-8"
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def all_headers(self) -> dict[str, str]:
        return {**SECURITY, "Content-Type": self.content_type, **self.headers}


def is_view_path(path: str) -> bool:
    return path == "/" or path.startswith(f"{PREFIX}/")


def answer(store: BlobStore, path: str, query: Mapping[str, str], *, metrics: bool = False) -> Response:
    """The answer to a GET of ``path`` (query already parsed: one value per name)."""
    try:
        if path == "/":
            return _page(store, query.get("max_size", ""), metrics)
        if path.startswith(f"{PREFIX}/static/"):
            return _asset(path[len(f"{PREFIX}/static/"):])
        if path == f"{PREFIX}/sbom":
            return _sbom(store, query.get("ref", ""), query.get("format", "spdx-json"))
        raise BadViewRequest(f"no such page: {path[:200]}", status=404)
    except BadViewRequest as error:
        return Response(error.status, HTML, render_error_page(str(error)).encode(), {"Cache-Control": "no-store"})


def _page(store: BlobStore, max_size: str, metrics: bool) -> Response:
    try:
        facts, error, status = gather(store, max_size), None, 200
    except BadViewRequest as problem:  # the size asked for: the page still shows the rest
        facts, error, status = gather(store), str(problem), 400
    body = render_page(facts, error=error, metrics=metrics).encode()
    return Response(status, HTML, body, {"Cache-Control": "no-store"})


def _asset(name: str) -> Response:
    if name not in ASSETS:
        raise BadViewRequest(f"no such file: {name[:100]}", status=404)
    body = importlib.resources.files("cache.view").joinpath("static").joinpath(name).read_bytes()
    return Response(200, ASSETS[name], body, {"Cache-Control": "max-age=300"})


def _sbom(store: BlobStore, ref: str, format_name: str) -> Response:
    if format_name not in FORMATS:
        raise BadViewRequest(f"format must be one of {', '.join(FORMATS)}")
    if not ref:
        raise BadViewRequest("ref: name an image as `ls` lists it")
    try:
        sbom = stored_sbom(store, ref)
    except (ImageNotFound, NotScanned) as error:
        raise BadViewRequest(str(error), status=404) from None
    except LayerhoardError as error:  # an artifact, a damaged manifest
        raise BadViewRequest(str(error), status=409) from None
    filename = _UNSAFE_FILENAME.sub("_", ref)[:120] or "image"
    return Response(200, "application/json", render(sbom, format_name).encode(),
                    {"Content-Disposition": f'attachment; filename="{filename}.{format_name}.json"',
                     "Cache-Control": "no-store"})
