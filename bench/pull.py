"""Registry pulls, side by side with skopeo, in one run against one local docker-registry.

    python -m bench pull [--size 1G] [--layers 4] [--runs 3]

Two images (bench/pull_images.py): ``real``, what users pull (two layers of real files from
/usr/lib and /usr/share, two of half-random data, gzip level 6), and ``synthetic`` (one file per
layer, random or highly compressible, gzip level 1). On each, in every run:
  skopeo copy docker://… oci:NEW          (what a user does today, cold)
  skopeo copy docker://… oci:EXISTING     (the same again into the layout it wrote)
  layerhoard pull, empty cache            (cold)
  layerhoard pull, cached                 (warm; the registry's access log counts blob requests)
Each figure is the median of --runs runs, wall time and CPU time (user + system, from wait4) of the
command. A cold pull leaves its layers' diff_id checks to a detached process once it has printed
its result (cache/store/diffids.py); the bench is the subreaper of that process, so it also
reports when the last check ended and the CPU of the checks. Targets (issue 19): cold at most 1.0x
skopeo's wall time; cached at most 2x skopeo into an existing layout, with zero blob bytes.

layerhoard runs as a user runs it: the `layerhoard` script of a fresh venv that this checkout is
pip-installed into (--in-place runs `python -m cli.main` with this interpreter instead). The
interpreter's own start-up (`python -c pass` in that venv) is reported beside it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from bench.common import installed_layerhoard
from bench.pull_images import build_layout
from cache.units import format_size, parse_size
from tests.services import Registry, skopeo

LAYERHOARD = [sys.executable, "-m", "cli.main"]
KINDS = ("real", "synthetic")
PR_SET_CHILD_SUBREAPER = 36


class Measured(NamedTuple):
    wall: float  # until the command exited
    cpu: float  # the command's user + system time
    settled_wall: float  # until the last process it left behind exited
    settled_cpu: float  # the command's and those processes' CPU


def _cpu(usage: object) -> float:
    return float(usage.ru_utime + usage.ru_stime)  # type: ignore[attr-defined]


def _orphans(keep: set[int]) -> list[int]:
    """Our children that we did not start: processes a command left behind, reparented to us."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in keep:
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                found.append(int(entry))
    return found


def measured(command: list[str], keep: set[int]) -> Measured:
    """Run ``command``; wall and CPU until it exits, and until what it left running exits too."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.stderr is not None
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {process.stderr.read().decode().strip()}")
    process.stderr.close()
    cpu = settled_cpu = _cpu(usage)
    while orphans := _orphans(keep):
        for pid in orphans:
            settled_cpu += _cpu(os.wait4(pid, 0)[2])
    return Measured(wall, cpu, time.perf_counter() - started, settled_cpu)


def counted(command: list[str]) -> int | None:
    """Instructions one run of ``command`` executes (valgrind's callgrind), or None without valgrind.

    Wall times of a 0.1 s process swing with whatever else the 2 cores run; this count does not.
    """
    if shutil.which("valgrind") is None:
        return None
    result = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
                            capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", result.stderr)
    return int(found.group(1)) if found else None


def _millions(count: int | None) -> str:
    return "n/a (no valgrind)" if count is None else f"{count / 1e6:.0f} M"


def _median(runs: list[Measured]) -> Measured:
    return Measured(*(statistics.median(values) for values in zip(*runs, strict=True)))


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _table(kind: str, sizes: tuple[int, int], jobs: dict[str, list[Measured]], args: argparse.Namespace) -> list[str]:
    m = {job: _median(runs) for job, runs in jobs.items()}
    cold, warm, new, existing = m["cold"], m["warm"], m["skopeo_cold"], m["skopeo_existing"]
    rows = [
        ("skopeo copy → new oci: layout", new.wall, 1.0, new.cpu, 1.0),
        ("layerhoard pull, empty cache", cold.wall, cold.wall / new.wall, cold.cpu, cold.cpu / new.cpu),
        ("… and its background diff_id checks", cold.settled_wall, cold.settled_wall / new.wall,
         cold.settled_cpu, cold.settled_cpu / new.cpu),
        ("skopeo copy → existing oci: layout", existing.wall, 1.0, existing.cpu, 1.0),
        ("layerhoard pull, cached", warm.wall, warm.wall / existing.wall, warm.cpu, warm.cpu / existing.cpu),
    ]
    return [
        f"Image `{kind}`: {args.layers} gzip layers, {format_size(sizes[0])} of tar, {format_size(sizes[1])} "
        f"compressed; median of {args.runs} runs ({args.runs * args.warm_runs} for the cached pull).",
        "",
        "| job | wall (s) | ratio | CPU (s) | ratio |",
        "|---|---|---|---|---|",
        *[f"| {name} | {wall:.3f} | {wall_ratio:.2f} | {cpu:.3f} | {cpu_ratio:.2f} |"
          for name, wall, wall_ratio, cpu, cpu_ratio in rows],
        "",
    ]


def run(args: argparse.Namespace) -> str:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "registry").mkdir(parents=True)
    registry = Registry(work / "registry")
    keep = {registry.process.pid}
    loads = [_load()]
    try:
        refs: dict[str, str] = {}
        sizes: dict[str, tuple[int, int]] = {}
        for kind in args.kinds:
            sizes[kind] = build_layout(work / kind, kind, parse_size(args.size), args.layers)
            refs[kind] = f"{registry.host}/bench/{kind}:1"
            skopeo("copy", "--quiet", "--dest-tls-verify=false", f"oci:{work / kind}:bench", f"docker://{refs[kind]}")
            shutil.rmtree(work / kind)
        layerhoard = LAYERHOARD if args.in_place else installed_layerhoard(work / "venv")
        python = sys.executable if args.in_place else str(work / "venv" / "bin" / "python")
        names = ("skopeo_cold", "skopeo_existing", "cold", "warm")
        jobs: dict[str, dict[str, list[Measured]]] = {kind: {job: [] for job in names} for kind in args.kinds}
        startup: list[Measured] = []
        warm_blob_requests = []
        loads.append(_load())
        for _ in range(args.runs):
            for kind, ref in refs.items():
                skopeo_copy = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}",
                               f"oci:{work / 'skopeo-out'}:bench"]
                pull = [*layerhoard, "--cache-dir", str(work / "cache"), "-q", "pull", ref]
                shutil.rmtree(work / "skopeo-out", ignore_errors=True)
                os.sync()
                jobs[kind]["skopeo_cold"].append(measured(skopeo_copy, keep))
                jobs[kind]["skopeo_existing"].append(measured(skopeo_copy, keep))
                shutil.rmtree(work / "cache", ignore_errors=True)
                os.sync()  # the last job's writeback must not land in this one's fsyncs
                jobs[kind]["cold"].append(measured(pull, keep))
                os.sync()
                for _ in range(args.warm_runs):  # short runs: more samples for a steady median
                    mark = registry.mark()
                    jobs[kind]["warm"].append(measured(pull, keep))
                    warm_blob_requests.append(len(registry.blob_requests(mark)))
                    startup.append(measured([python, "-c", "pass"], keep))
        loads.append(_load())
        warm = [*layerhoard, "--cache-dir", str(work / "cache"), "-q", "pull", refs[args.kinds[-1]]]
        instructions = {"warm": counted(warm), "python": counted([python, "-c", "pass"])}
    finally:
        registry.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    lines = [f"{os.cpu_count()} cores; load average (1, 5, 15 min) before building the images {loads[0]}, "
             f"before the runs {loads[1]}, after them {loads[2]}.", ""]
    for kind in args.kinds:
        lines += _table(kind, sizes[kind], jobs[kind], args)
    lines += [
        f"Blob requests during the cached pulls: {sum(warm_blob_requests)} in {len(warm_blob_requests)} pulls "
        f"(target 0). Interpreter start-up alone (`python -c pass`): {_median(startup).wall:.3f} s; layerhoard ran "
        f"{'in place (python -m cli.main)' if args.in_place else 'from a fresh venv install'}.",
        f"Instructions (callgrind, the same whatever else the machine runs): cached pull "
        f"{_millions(instructions['warm'])}, `python -c pass` {_millions(instructions['python'])}.",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench pull", description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="uncompressed image size (default 1G)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warm-runs", type=int, default=5, help="cached pulls per run (default 5)")
    parser.add_argument("--kinds", default=",".join(KINDS), type=lambda value: value.split(","),
                        help=f"images to pull, of {', '.join(KINDS)} (default: both)")
    parser.add_argument("--workdir", default="/tmp/layerhoard-bench-pull")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--in-place", action="store_true",
                        help="run `python -m cli.main` with this interpreter instead of a fresh venv install")
    print(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
