"""What every benchmark needs: timing, a child process's peak memory, the machine, markdown tables."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parent.parent


def timed(work: Callable[[], T]) -> tuple[T, float]:
    """Run ``work`` once; return its result and the wall time in seconds."""
    start = time.perf_counter()
    result = work()
    return result, time.perf_counter() - start


def best_of(runs: int, work: Callable[[], float]) -> float:
    """The fastest of ``runs`` timings: the one least disturbed by the rest of the machine."""
    return min(work() for _ in range(max(1, runs)))


@dataclass(frozen=True)
class ChildRun:
    """A finished child process: what it printed (one JSON document) and its peak resident memory."""

    output: dict[str, Any]
    wall_seconds: float
    peak_rss: int  # bytes, from the kernel's accounting of that one child (wait4)


def run_child(argv: Sequence[str], *, env: dict[str, str] | None = None) -> ChildRun:
    """Run ``argv`` (which prints one JSON document on stdout) and measure its peak RSS.

    os.wait4 gives the rusage of exactly this child; RUSAGE_CHILDREN would report the largest of
    all children waited for so far, so an earlier, bigger child would hide this one.
    """
    start = time.perf_counter()
    process = subprocess.Popen(list(argv), stdout=subprocess.PIPE, cwd=REPO_ROOT,
                               env={**os.environ, **(env or {})})
    assert process.stdout is not None
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so tell Popen
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {process.returncode}")
    return ChildRun(json.loads(stdout), wall, usage.ru_maxrss * 1024)


def python_child(module: str, *args: str) -> list[str]:
    """argv running ``python -m <module> <args>`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def installed_layerhoard(venv: Path) -> list[str]:
    """argv of ``layerhoard`` as a user runs it: the console script of a fresh venv holding this
    checkout, installed with pip (not in editable mode).

    A cached pull is mostly process start-up, so where the interpreter comes from matters: a
    development interpreter may load .pth files on every start (an editable install's finder, site
    hooks of the machine) that a user's venv does not have.
    """
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    str(REPO_ROOT)], check=True, capture_output=True)
    return [str(venv / "bin" / "layerhoard")]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def filesystem_of(path: Path) -> str:
    """The file system type that holds ``path`` (the longest matching mount point)."""
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


def machine(path: Path | None = None) -> dict[str, str]:
    info = {
        "cpu": cpu_model(),
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    if path is not None:
        info["filesystem"] = filesystem_of(path)
    return info


def rate(size: int, seconds: float) -> str:
    """``1.23 GB/s`` (decimal GB, as the design's table of rates)."""
    return f"{size / seconds / 1e9:.2f} GB/s" if seconds > 0 else "-"


def mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"

    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])


def print_report(text: str, out: str | None) -> None:
    """A benchmark's markdown report on stdout, and into ``out`` when one is given (``--out``)."""
    print(text)
    if out:
        Path(out).write_text(text + "\n")
