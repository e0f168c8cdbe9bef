"""Shared fixtures: a fresh store per test, the real services (one of each per session), and a
second user for the shared-cache tests."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cache.store.blobstore import BlobStore
from tests.services import Daemon, Registry, start_daemon, start_registry

SHARED_GROUP, MEMBER_USER = "lhbuilders", "lhtester"


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


@pytest.fixture(scope="session")
def member() -> tuple[int, int]:
    """(uid, gid) of a user in the shared group (made here when missing); skips unless root."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("creating a second user needs root and useradd")
    if subprocess.run(["getent", "group", SHARED_GROUP], capture_output=True).returncode != 0:
        subprocess.run(["groupadd", SHARED_GROUP], check=True)
    if subprocess.run(["id", MEMBER_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-M", "-N", "-g", SHARED_GROUP, "-s", "/usr/sbin/nologin", MEMBER_USER], check=True)
    return pwd.getpwnam(MEMBER_USER).pw_uid, grp.getgrnam(SHARED_GROUP).gr_gid


@pytest.fixture
def shared_dir(member: tuple[int, int]) -> Iterator[Path]:
    top = Path(tempfile.mkdtemp(prefix="lh-shared-", dir="/tmp"))  # not under pytest's 0700 tmp
    os.chmod(top, 0o755)
    cache = top / "cache"
    subprocess.run(["install", "-d", "-m", "2775", "-g", SHARED_GROUP, str(cache)], check=True)
    yield cache
    shutil.rmtree(top, ignore_errors=True)
