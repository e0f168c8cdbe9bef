"""Real services for the tests: a docker-registry and a private dockerd, started and stopped here.

Both are Debian packages (docker-registry, docker.io). When one is missing the tests that need it
are skipped, unless LAYERHOARD_REQUIRE_SERVICES=1 (set by .ci/run), which turns that into a failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

REQUIRE = os.environ.get("LAYERHOARD_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> None:
    """Skip, or fail when the run requires every service."""
    if REQUIRE:
        pytest.fail(f"required service unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s")


@contextlib.contextmanager
def in_thread(server: socketserver.BaseServer) -> Iterator[None]:
    """Serve an in-process server (ours, or a small misbehaving one) on a thread while in the block."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


_ACCESS = re.compile(r'"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d{3})')


@dataclass
class Request:
    method: str
    path: str
    status: int


class Registry:
    """A running docker-registry (distribution 2.8) on 127.0.0.1 with plain HTTP."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.log_path = workdir / "registry.log"
        config = workdir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'storage'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
        )
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=self._log, stderr=subprocess.STDOUT
        )
        wait_until(lambda: requests.get(f"{self.url}/v2/", timeout=1).status_code == 200, 30, "docker-registry")

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()

    def mark(self) -> int:
        """A position in the access log; pass it to requests() to see only what came after."""
        self._log.flush()
        time.sleep(0.2)  # the registry writes its access log line just after the response
        return self.log_path.stat().st_size

    def requests(self, since: int = 0) -> list[Request]:
        time.sleep(0.2)
        with open(self.log_path, "rb") as handle:
            handle.seek(since)
            text = handle.read().decode(errors="replace")
        return [Request(m.group(1), m.group(2), int(m.group(3))) for m in _ACCESS.finditer(text)]

    def blob_requests(self, since: int = 0) -> list[Request]:
        return [r for r in self.requests(since) if "/blobs/" in r.path and r.method == "GET"]


class Daemon:
    """A private dockerd with its own data root and socket, logging every API call (--debug)."""

    def __init__(self, workdir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.socket = workdir / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.log_path = workdir / "dockerd.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                "dockerd", "--data-root", str(workdir / "data"), "--exec-root", str(workdir / "exec"),
                "--host", self.host, "--pidfile", str(workdir / "pid"), "--iptables=false",
                "--bridge=none", "--ip-masq=false", "--debug", *extra_args,
            ],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self._ping, 60, "dockerd")
        except RuntimeError:
            self.stop()
            raise

    def _ping(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"dockerd exited with {self.process.returncode}; see {self.log_path}")
        return self.docker("version", "--format", "{{.Server.Version}}").returncode == 0

    def docker(self, *args: str, check: bool = False, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run the docker CLI against this daemon."""
        env = {**os.environ, "DOCKER_HOST": self.host}
        return subprocess.run(["docker", *args], env=env, capture_output=True, check=check, input=input)

    def client(self):  # type: ignore[no-untyped-def]
        import docker

        return docker.DockerClient(base_url=self.host, version="auto", timeout=600)

    def mark(self) -> int:
        time.sleep(0.2)
        return self.log_path.stat().st_size

    def api_calls(self, since: int = 0) -> list[tuple[str, str]]:
        """(method, path) of every API call the daemon logged after ``since``."""
        time.sleep(0.2)
        with open(self.log_path, "rb") as handle:
            handle.seek(since)
            text = handle.read().decode(errors="replace")
        return re.findall(r'msg="Calling (\w+) ([^"\s]+)"', text)

    def save_calls(self, since: int = 0) -> list[str]:
        return [path for method, path in self.api_calls(since) if method == "GET" and re.search(r"/images/.*get", path)]

    def stop(self) -> None:
        stop_process(self.process, timeout=30)
        self._log.close()
        subprocess.run(["umount", "-R", str(self.workdir / "data")], capture_output=True)
        shutil.rmtree(self.workdir / "data", ignore_errors=True)


def start_registry(workdir: Path) -> Iterator[Registry]:
    if shutil.which("docker-registry") is None:
        unavailable("docker-registry is not installed (apt-get install docker-registry)")
    registry = Registry(workdir)
    try:
        yield registry
    finally:
        registry.stop()


def start_daemon(workdir: Path, extra_args: tuple[str, ...] = ()) -> Iterator[Daemon]:
    """A private dockerd; ``extra_args`` go to dockerd (``--storage-driver vfs``, say)."""
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        unavailable("dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        unavailable("a private dockerd needs root")
    try:
        daemon = Daemon(workdir, extra_args)
    except RuntimeError as error:
        unavailable(str(error))
        raise
    try:
        yield daemon
    finally:
        daemon.stop()


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    """Run skopeo (the independent client); raise with its stderr on failure."""
    if shutil.which("skopeo") is None:
        unavailable("skopeo is not installed (apt-get install skopeo)")
    result = subprocess.run(["skopeo", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed: {result.stderr.strip()}")
    return result
