"""Shared fixtures: a fresh store per test, and the real services (one of each per session)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cache.store import BlobStore
from tests.services import Daemon, Registry, start_daemon, start_registry


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BlobStore]:
    blob_store = BlobStore(tmp_path / "cache")
    yield blob_store
    blob_store.close()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from start_registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from start_daemon(tmp_path_factory.mktemp("dockerd"))
