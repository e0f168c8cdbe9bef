"""Package URLs (github.com/package-url/purl-spec), built with the spec's percent-encoding."""

from __future__ import annotations

from urllib.parse import quote


def _enc(text: str) -> str:
    return quote(text, safe="")


def purl(kind: str, name: str, version: str | None, namespace: str | None = None,
         qualifiers: dict[str, str | None] | None = None) -> str:
    out = f"pkg:{kind}/"
    if namespace:
        out += "/".join(_enc(segment) for segment in namespace.split("/") if segment) + "/"
    out += _enc(name)
    if version:
        out += "@" + _enc(version)
    pairs = sorted((k, v) for k, v in (qualifiers or {}).items() if v)
    if pairs:
        out += "?" + "&".join(f"{k}={_enc(str(v))}" for k, v in pairs)
    return out


def pypi_name(name: str) -> str:
    """The purl spec's pypi name: lower case, ``_`` as ``-``."""
    return name.lower().replace("_", "-")
