"""The page as HTML, rendered on the server with Jinja2 from :class:`~cache.view.facts.ViewFacts`.

Jinja2 escapes every value put into the page (autoescape on, for every template), so an image
name or a source pushed with ``<script>`` in it reaches the browser as text; the pictures come
from svg.py, which escapes the same way and hands back Markup. The figures carry their raw values
in ``data-value`` attributes (what the browser test compares with the commands' JSON, and what
the table sorting in view.js reads).
"""

from __future__ import annotations

import datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from cache.units import format_size
from cache.upkeep.stats import FIELDS
from cache.view import svg
from cache.view.facts import SHARED_IMAGES_SHOWN, ViewFacts

PREFIX = "/view"  # the view's own paths (assets, SBOM downloads): apart from /v2/ and /metrics


def _when(timestamp: object) -> str:
    if not isinstance(timestamp, (int, float)) or not timestamp:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _short(digest: object) -> str:
    text = str(digest or "")
    return text[7:19] if text.startswith("sha256:") else text[:12]


def _size(value: object) -> str:
    return format_size(int(value)) if isinstance(value, (int, float)) else "-"


ENVIRONMENT = Environment(loader=PackageLoader("cache.view", "templates"), autoescape=True,
                          undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
ENVIRONMENT.filters.update(size=_size, when=_when, short=_short)


def render_page(facts: ViewFacts, *, error: str | None = None, metrics: bool = False) -> str:
    """The whole page; ``error`` is shown on top (a size that did not parse)."""
    names = [image.row["ref"] for image in facts.images]
    rows = sorted({row for blob in facts.shared for row in blob.images})[:SHARED_IMAGES_SHOWN]
    place = {row: n for n, row in enumerate(rows)}
    matrix = svg.sharing_matrix([names[row] for row in rows], [
        (str(blob.digest), blob.size, [place[row] for row in blob.images if row in place]) for blob in facts.shared])
    disk = svg.horizontal_bars([svg.Bar(image.row["ref"], int(image.row["size"]), image.own_bytes)
                                for image in facts.biggest], "its own", "shared")
    layers = svg.day_columns([svg.Bar(day["day"], day["hits"] + day["misses"], day["hits"]) for day in facts.days],
                             "hits", "misses")
    moved = svg.day_columns([svg.Bar(day["day"], day["bytes_reused"] + day["bytes_fetched"], day["bytes_reused"])
                             for day in facts.days], "not fetched again", "fetched", sizes=True)
    context: dict[str, Any] = {
        "facts": facts, "du": facts.du, "stats": facts.stats, "prune": facts.prune, "fields": FIELDS,
        "error": error, "metrics": metrics, "prefix": PREFIX, "matrix": matrix, "matrix_rows": rows,
        "matrix_rows_cut": len(rows) < len({row for blob in facts.shared for row in blob.images}),
        "disk": disk, "layers_chart": layers, "bytes_chart": moved,
    }
    return ENVIRONMENT.get_template("page.html").render(context)


def render_error_page(message: str) -> str:
    """A page that says only what went wrong (the cache could not be read)."""
    return ENVIRONMENT.from_string(
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>layerhoard: error</title>'
        '<link rel="stylesheet" href="{{ prefix }}/static/view.css"></head>'
        '<body><p class="error" role="alert">{{ message }}</p><p><a href="/">back</a></p></body></html>'
    ).render(message=message, prefix=PREFIX)
