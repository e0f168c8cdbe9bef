"""Measuring one command and its whole process tree: wall time, peak RSS, bytes written, stdout.

- Peak RSS: VmHWM of every process in the tree, polled every 20 ms (bench.daemon's reason: a
  forked child's ru_maxrss starts at the parent's size, so wait4 would report this script).
- Bytes written: /proc/self/io write_bytes before and after. Linux adds a reaped child's I/O
  counters (and those of the children it reaped) to its parent's, so the delta is the whole tree's.
  A daemon that does work on the tree's behalf (dockerd writes a `docker save` to a temporary
  folder first) is sampled the same way through its pid.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.daemon import _hwm


def write_bytes(pid: int | str = "self") -> int:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc/<pid>/task/<tid>/children."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                queue += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return found


@dataclass
class Measured:
    wall: float
    peak_rss: int
    written: int
    stdout: str


def measure(argv: Sequence[str], env: dict[str, str] | None = None, helper_pids: Sequence[int] = ()) -> Measured:
    """Run ``argv`` to completion (raising with its stderr on failure) and measure it."""
    before = write_bytes() + sum(write_bytes(pid) for pid in helper_pids)
    start = time.perf_counter()
    process = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, **(env or {})})
    outputs: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda n=n, s=s: outputs.__setitem__(n, s.read()))
               for n, s in (("out", process.stdout), ("err", process.stderr))]
    for reader in readers:
        reader.start()
    peak = 0
    while process.poll() is None:
        peak = max([peak, *(_hwm(pid) for pid in descendants(process.pid))])
        time.sleep(0.02)
    wall = time.perf_counter() - start
    for reader in readers:
        reader.join()
    written = write_bytes() + sum(write_bytes(pid) for pid in helper_pids) - before
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {process.returncode}: "
                           f"{outputs.get('err', b'').decode(errors='replace')[-800:]}")
    return Measured(wall, peak, written, outputs.get("out", b"").decode())
