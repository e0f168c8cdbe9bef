"""Which layer a legacy `docker save` folder holds, known from its ``<id>/json`` before its layer.tar.

dockerd before 25 names each layer folder by a "v1 ID": the sha256 of the folder's json with the
``id`` removed and the layer's chain ID added (moby image/v1 ``CreateID``, a Go map marshalled with
sorted keys). The json arrives just before the folder's layer.tar (``VERSION`` < ``json`` <
``layer.tar``), so recomputing the ID for each candidate position names the layer before a byte
of it is read. Anything that does not match (another producer, another Go version) just stays
unknown and the caller falls back to sizes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from cache.model.digest import Digest

_DECODER = json.JSONDecoder()


def chain_ids(diff_ids: Sequence[Digest]) -> list[str]:
    """OCI chain IDs: ChainID(n) = sha256(ChainID(n-1) + " " + DiffID(n))."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(str(diff_id))
        else:
            chains.append("sha256:" + hashlib.sha256(f"{chains[-1]} {diff_id}".encode()).hexdigest())
    return chains


def raw_members(text: str) -> list[tuple[str, str]] | None:
    """The members of a compact JSON object as (key, exact value text), or None if it is not one."""
    if not text.startswith("{"):
        return None
    members: list[tuple[str, str]] = []
    index = 1
    try:
        while text[index] != "}":
            key, index = _DECODER.raw_decode(text, index)
            if not isinstance(key, str) or text[index] != ":":
                return None
            start = index + 1
            _, index = _DECODER.raw_decode(text, start)
            members.append((key, text[start:index]))
            if text[index] == ",":
                index += 1
        return members if index == len(text) - 1 else None
    except (ValueError, IndexError):
        return None


def _create_id(members: list[tuple[str, str]], chain_id: str, parent: str | None) -> str:
    fields = dict(members)
    fields["layer_id"] = json.dumps(chain_id)
    if parent:
        fields["parent"] = json.dumps(parent)
    body = ",".join(f"{json.dumps(key)}:{fields[key]}" for key in sorted(fields))
    return hashlib.sha256(("{" + body + "}").encode()).hexdigest()


def layer_position(folder: str, json_bytes: bytes, chains: Sequence[str]) -> int | None:
    """The index of the layer that folder ``folder`` (a v1 ID) holds, or None when it cannot be told."""
    try:
        members = raw_members(json_bytes.decode())
    except UnicodeDecodeError:
        return None
    if not members:
        return None
    fields = dict(members)
    try:
        parent_hex = json.loads(fields["parent"]) if "parent" in fields else None
    except ValueError:
        return None
    parent = f"sha256:{parent_hex}" if isinstance(parent_hex, str) and parent_hex else None
    # At CreateID time the struct had no id and no parent; a lower layer had no os either (set after).
    base = [(k, v) for k, v in members if k not in ("id", "parent")]
    without_os = [(k, v) for k, v in base if k != "os"]
    for position, chain_id in enumerate(chains):
        for variant in (without_os, base):
            if _create_id(variant, chain_id, parent) == folder:
                return position
    return None
