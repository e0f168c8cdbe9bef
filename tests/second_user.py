"""A daemon pull run as a second user (the ``member`` fixture's), who cannot read the daemon's
storage: the daemon's socket relayed to a folder that user can reach, the pull in a forked child."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path

from cache.model.refs import DaemonSource
from cache.sources.daemon import pull_from_daemon
from cache.store.blobstore import BlobStore


class Relay:
    """The daemon's socket, reachable by another user: pytest's 0700 folders hide the real one.
    Forwards bytes both ways, nothing else."""

    def __init__(self, target: Path) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="lh-relay-", dir="/tmp"))
        os.chmod(self.folder, 0o755)
        self.path = self.folder / "docker.sock"
        self._target = target
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(str(self.path))
        os.chmod(self.path, 0o777)
        self._server.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(str(self._target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._server.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _pull_as(member: tuple[int, int], cache: str, host: str, name: str, out: object) -> None:
    os.setgroups([member[1]])
    os.setgid(member[1])
    os.setuid(member[0])
    store = BlobStore(Path(cache))
    try:
        report = pull_from_daemon(store, DaemonSource(name), docker_host=host)
        out.send((report.route, report.fallback))  # type: ignore[attr-defined]
    except BaseException as error:
        out.send(("error", repr(error)))  # type: ignore[attr-defined]


def pull_as_member(member: tuple[int, int], daemon_socket: Path, name: str) -> tuple[str, str]:
    """(route, fallback) of pulling ``name`` as the user ``member`` into a cache of its own, or
    ("error", what went wrong)."""
    relay = Relay(daemon_socket)
    cache = relay.folder / "cache"
    cache.mkdir()
    os.chown(cache, *member)
    fork = multiprocessing.get_context("fork")  # the child runs code already loaded (root's 0700 home)
    receive, send = fork.Pipe(duplex=False)
    try:
        child = fork.Process(target=_pull_as, args=(member, str(cache), f"unix://{relay.path}", name, send))
        child.start()
        answer: tuple[str, str] = receive.recv() if receive.poll(120) else ("error", "no answer")
        child.join(30)
        return answer
    finally:
        relay.close()
