"""More real clients of a registry for the serve tests: podman and containerd (with ctr), each kept
in temporary folders so nothing touches the machine's own image stores.

podman runs with ``--root``/``--runroot`` in a temporary folder and the vfs storage driver (no
mounts). containerd is started here with a config of its own (root, state, sockets and the opt
plugin's folder all temporary; the CRI plugin off) and driven with ctr; images unpack with the
native snapshotter (plain copies, no mounts). Both need root, like the private dockerd; a missing
binary or no root skips, unless LAYERHOARD_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.services import stop_process, unavailable, wait_until


class Podman:
    """podman with its own image store in ``workdir`` (short: podman refuses a runroot past 50 bytes)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The result as it came: check returncode."""
        return subprocess.run(["podman", "--root", str(self.workdir / "root"), "--runroot", str(self.workdir / "run"),
                               "--storage-driver", "vfs", "--events-backend", "file", *args],
                              capture_output=True, text=True, timeout=120)


def start_podman() -> Iterator[Podman]:
    if shutil.which("podman") is None:
        unavailable("podman is not installed (apt-get install podman)")
    if os.geteuid() != 0:
        unavailable("podman with a private store in a temporary folder needs root here")
    workdir = Path(tempfile.mkdtemp(prefix="lh-pm-", dir="/tmp"))
    try:
        yield Podman(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class Containerd:
    """A private containerd; ``ctr(...)`` talks to it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.socket = workdir / "containerd.sock"
        config = workdir / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{workdir / "root"}"\nstate = "{workdir / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",'
            ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",'
            ' "io.containerd.snapshotter.v1.aufs"]\n'
            f'[grpc]\n  address = "{self.socket}"\n[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
            '[debug]\n  address = ""\n[metrics]\n  address = ""\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{workdir / "opt"}"\n'
        )
        self.log_path = workdir / "containerd.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(["containerd", "--config", str(config)], stdout=self._log,
                                        stderr=subprocess.STDOUT)

    def answers(self) -> bool:
        """Whether ctr reaches it yet; a containerd that exited is an error, not a wait."""
        if self.process.poll() is not None:
            raise RuntimeError(f"containerd exited with {self.process.returncode}; see {self.log_path}")
        return self.ctr("version").returncode == 0

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "--address", str(self.socket), *args], capture_output=True, text=True,
                              timeout=120)

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_containerd() -> Iterator[Containerd]:
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        unavailable("containerd is not installed (apt-get install containerd)")
    if os.geteuid() != 0:
        unavailable("a private containerd needs root")
    workdir = Path(tempfile.mkdtemp(prefix="lh-ctd-", dir="/tmp"))  # short: socket paths stop at 108 bytes
    daemon = Containerd(workdir)
    try:  # stopped however this ends: skipped, failed or done
        try:
            wait_until(daemon.answers, 30, "containerd")
        except RuntimeError as error:
            unavailable(str(error))
        yield daemon
    finally:
        daemon.stop()
