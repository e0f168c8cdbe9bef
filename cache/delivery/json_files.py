"""The JSON files a delivery reads (lock files, inventories): read bounded, parsed, errors in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cache.errors import DeliveryError


def read_document(path: Path, what: str, limit: int) -> Any:
    """The parsed JSON of ``path``, a ``what`` (for messages) of at most ``limit`` bytes."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as error:
        raise DeliveryError(f"cannot read {what} {path}: {error.strerror}") from None
    if len(raw) > limit:
        raise DeliveryError(f"{what} {path} is more than {limit} bytes; not a {what}")
    try:
        return json.loads(raw)
    except ValueError as error:
        raise DeliveryError(f"{what} {path} is not valid JSON: {error}") from None
