"""The view's pictures as inline SVG, drawn on the server: no script and no library draws them,
so the page is whole without JavaScript and works offline.

Every text that comes from the cache (image names, digests) goes through markupsafe's escape
before it is placed in the picture, in element text and in attributes alike; numbers are
formatted here. Colours are presentation attributes, not style attributes, so the page's Content
Security Policy (no inline styles) leaves them alone. Each mark carries a ``<title>``: the exact
figure on hover.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from cache.units import format_size

ROW = 16  # px per row or column of a matrix
LABEL = 300  # px for row labels


@dataclass(frozen=True)
class Bar:
    label: str
    total: int
    part: int  # drawn darker inside the bar (an image's own bytes; a day's hits)


def _text(x: float, y: float, body: str, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{escape(body)}</text>'


def _clip(label: str, limit: int = 46) -> str:
    return label if len(label) <= limit else f"{label[:limit - 1]}…"


def _svg(width: float, height: float, body: list[str], label: str) -> Markup:
    return Markup(f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width:.0f}" '
                  f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
                  f'aria-label="{escape(label)}">{"".join(body)}</svg>')


def sharing_matrix(images: Sequence[str], columns: Sequence[tuple[str, int, Sequence[int]]]) -> Markup:
    """Rows are images, columns shared blobs (digest, size, the rows that reach it): a filled
    cell is an image holding that blob. Columns come sorted by the bytes sharing them saves."""
    height = 90 + ROW * len(images)
    width = LABEL + ROW * len(columns) + 60  # room for the last column's slanted label
    body = []
    for row, name in enumerate(images):
        y = 90 + ROW * row
        body.append(f"<g><title>{escape(name)}</title>{_text(LABEL - 6, y + 12, _clip(name), 'end')}</g>")
        if row % 2 == 0:
            body.append(f'<rect x="{LABEL}" y="{y}" width="{ROW * len(columns)}" height="{ROW}" fill="#f4f6f8"/>')
    for column, (digest, size, members) in enumerate(columns):
        x = LABEL + ROW * column
        saved = size * (len(members) - 1)
        body.append(f'<g><title>{escape(digest)}: {escape(format_size(size))}, in {len(members)} images, '
                    f'saves {escape(format_size(saved))}</title>'
                    + _text(x + 11, 84, digest[7:19], extra=f' transform="rotate(-60 {x + 11} 84)" class="mono"')
                    + "</g>")
        for row in members:
            if row < len(images):
                body.append(f'<rect x="{x + 2}" y="{90 + ROW * row + 2}" width="{ROW - 4}" height="{ROW - 4}" '
                            f'rx="2" fill="#2f6fb5"><title>{escape(images[row])} holds {escape(digest[:19])}'
                            f"</title></rect>")
    return _svg(width, height, body, "layers shared between images")


def horizontal_bars(bars: Sequence[Bar], part_name: str, rest_name: str, width: int = 900) -> Markup:
    """One bar per entry, its length the total, the darker part inside it (both on hover)."""
    span = width - LABEL - 90
    top = max((bar.total for bar in bars), default=0) or 1
    body = []
    for row, bar in enumerate(bars):
        y = ROW * row + 4
        full = span * bar.total / top
        inner = span * min(bar.part, bar.total) / top
        body.append(
            f"<g><title>{escape(bar.label)}: {escape(format_size(bar.total))} "
            f"({escape(part_name)} {escape(format_size(bar.part))}, {escape(rest_name)} "
            f"{escape(format_size(bar.total - bar.part))})</title>"
            f"{_text(LABEL - 6, y + 11, _clip(bar.label), 'end')}"
            f'<rect x="{LABEL}" y="{y}" width="{full:.1f}" height="{ROW - 4}" fill="#9cc3e6"/>'
            f'<rect x="{LABEL}" y="{y}" width="{inner:.1f}" height="{ROW - 4}" fill="#2f6fb5"/>'
            f"{_text(LABEL + full + 4, y + 11, format_size(bar.total))}</g>")
    return _svg(width, ROW * len(bars) + 8, body, f"bytes by image ({part_name} darker)")


def day_columns(days: Sequence[Bar], part_name: str, rest_name: str, *, sizes: bool = False,
                height: int = 160) -> Markup:
    """One column per day (its label the day), the part at the bottom, the rest above it."""
    column = 34
    width = max(260, 60 + column * len(days))
    top = max((day.total for day in days), default=0) or 1
    show = format_size if sizes else str
    body = [f'<line x1="50" y1="{height - 20}" x2="{width - 4}" y2="{height - 20}" stroke="#888"/>',
            _text(46, 14, show(top), "end"), _text(46, height - 22, "0", "end")]
    span = height - 40
    for n, day in enumerate(days):
        x = 56 + column * n
        full = span * day.total / top
        inner = span * min(day.part, day.total) / top
        base = height - 20
        body.append(
            f"<g><title>{escape(day.label)}: {escape(part_name)} {escape(show(day.part))}, "
            f"{escape(rest_name)} {escape(show(day.total - day.part))}</title>"
            f'<rect x="{x}" y="{base - full:.1f}" width="{column - 8}" height="{full - inner:.1f}" fill="#f0a35e"/>'
            f'<rect x="{x}" y="{base - inner:.1f}" width="{column - 8}" height="{inner:.1f}" fill="#3f9c5a"/>'
            f"{_text(x + (column - 8) / 2, height - 6, day.label[5:], 'middle')}</g>")
    return _svg(width, height, body, f"{part_name} and {rest_name} per day")
