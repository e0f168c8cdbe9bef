"""Digests: strict parsing before any path is built, hashing, and the size/digest check."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import blake3
import pytest

from cache.errors import DigestMismatch, InvalidDigest, SizeMismatch
from cache.model.digest import Digest, Hasher, check, hash_file, iter_chunks, parse_digest, sha256_of
from cache.store.blobstore import BlobStore

HEX = hashlib.sha256(b"hello").hexdigest()

MALFORMED: list[Any] = [
    "sha256:../x",
    f"sha256:../../{HEX[:58]}",
    f"sha256:{HEX.upper()}",
    f"SHA256:{HEX}",
    f"sha256:{HEX[:63]}",
    f"sha256:{HEX}0",
    f"sha256:{HEX[:62]}/x",
    f"sha512:{hashlib.sha512(b'hello').hexdigest()}",
    f"md5:{hashlib.md5(b'hello').hexdigest()}",
    f"sha256+b64:{HEX}",
    HEX,
    "",
    "sha256:",
    " ",
    f" sha256:{HEX}",
    f"sha256:{HEX} ",
    f"sha256:{HEX}\n",
    f"sha256: {HEX[1:]}",
    f"sha256:{HEX[:32]}\x00{HEX[33:]}",
    None,
    42,
    b"sha256:" + HEX.encode(),
    ["sha256:" + HEX],
]


def test_parses_a_valid_digest() -> None:
    digest = parse_digest(f"sha256:{HEX}")
    assert digest.hex == HEX
    assert str(digest) == f"sha256:{HEX}"
    assert digest.short == HEX[:12]
    assert digest == sha256_of(b"hello")


@pytest.mark.parametrize("text", MALFORMED, ids=repr)
def test_rejects_malformed_digest(text: Any) -> None:
    with pytest.raises(InvalidDigest) as caught:
        parse_digest(text)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 200


@pytest.mark.parametrize("hex_text", ["../" + "a" * 61, HEX.upper(), HEX[:63], "", "g" * 64, 7, None], ids=repr)
def test_digest_object_itself_checks_its_hex(hex_text: Any) -> None:
    """A Digest is the only way to a blob path, so it re-checks its hex even when built directly."""
    with pytest.raises(InvalidDigest):
        Digest(hex_text)


@pytest.mark.parametrize("text", ["sha256:../x", f"sha256:{HEX.upper()}", f"sha512:{HEX}{HEX}"])
def test_malformed_digest_never_reaches_the_store(store: BlobStore, text: str) -> None:
    before = sorted(p.relative_to(store.root) for p in store.root.rglob("*"))
    with pytest.raises(InvalidDigest):
        store.ingest(parse_digest(text), [b"hello"])
    assert sorted(p.relative_to(store.root) for p in store.root.rglob("*")) == before


def test_hasher_gives_sha256_blake3_and_size() -> None:
    data = bytes(range(256)) * 5000
    hasher = Hasher()
    for chunk in iter_chunks(io.BytesIO(data), chunk_size=4096):
        hasher.update(chunk)
    hasher.update(memoryview(b""))
    assert hasher.size == len(data)
    assert hasher.digest == sha256_of(data)
    assert hasher.blake3 == blake3.blake3(data).hexdigest()


def test_iter_chunks_passes_iterables_and_skips_empty_chunks() -> None:
    assert list(iter_chunks([b"a", b"", b"bc"])) == [b"a", b"bc"]
    assert list(iter_chunks(io.BytesIO(b"abcde"), chunk_size=2)) == [b"ab", b"cd", b"e"]


def test_hash_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"hello" * 1000)
    assert hash_file(str(path)) == hashlib.sha256(b"hello" * 1000).hexdigest()
    assert hash_file(str(path), use_blake3=True) == blake3.blake3(b"hello" * 1000).hexdigest()


def test_check_names_what_was_wrong() -> None:
    good, bad = sha256_of(b"a"), sha256_of(b"b")
    check(good, good, 1, 1, "blob x")
    check(good, good, None, 5, "blob x")
    with pytest.raises(SizeMismatch, match=r"blob x: expected 2 bytes, got 1"):
        check(good, good, 2, 1, "blob x")
    with pytest.raises(DigestMismatch, match=f"blob x: content has digest {bad}, expected {good}"):
        check(good, bad, 1, 1, "blob x")
