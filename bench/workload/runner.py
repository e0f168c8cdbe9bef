"""The Zarf-style packaging build, end to end: layerhoard against skopeo/docker, in one run.

    python -m bench workload [--scale 2G] [--apps 17] [--daemon-apps 7] [--big 20G] [--out FILE]
                             [--workdir DIR] [--keep]

The generator (generator.py) builds the image set into a private docker-registry and a private
dockerd. Then three scenarios, each done by every path on the same machine in the same run:

  cold        empty cache, new output layout
  cached      the same build again, nothing changed
  one-layer   one daemon application image rebuilt with a new top layer, then the build again

  layerhoard  `warm` every image (registry refs and docker-daemon: refs), `export SRC oci:OUT:TAG`
              per image into a new layout for each scenario, `sbom SRC -o FILE` per image
  layerhoard warm --export --sbom-dir
              the same build step in one process, on a cache of its own
  skopeo      `skopeo copy` per image into one OCI layout (docker:// and docker-daemon:), which it
              keeps across scenarios (its only reuse); then the SBOM STAND-IN (standin.py: every
              layer of every image decompressed, a lower bound for a scanner; syft is not
              installable here)
  docker save `docker save -o` per daemon image: the daemon's own export, for its read cost

Registry bytes are the response sizes in the registry's access log; daemon bytes are the save
streams the dockerd debug log shows (each `GET /images/…/get` counted at that image's `docker save`
size, measured in the same scenario). Bytes written are the whole process tree's write_bytes plus
dockerd's. The targets of issue 8 are checked and printed below the table.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shutil
import statistics
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import machine, markdown_table, print_report
from bench.workload.generator import Generator, Spec, WorkImage, Workload
from bench.workload.measure import Measured, measure
from cache.units import format_size, parse_size
from tests.services import Daemon, Registry

LAYERHOARD = [sys.executable, "-m", "cli.main"]
SCENARIOS = ("cold", "cached", "one-layer")
ONE_PROCESS = "layerhoard warm --export --sbom-dir"
_ACCESS = re.compile(r'"(GET|HEAD) (\S+) HTTP/[\d.]+" (\d{3}) (\d+|-)')


@dataclass
class PathRun:
    """One path (layerhoard, skopeo, docker save) through one scenario: its steps added up."""

    scenario: str
    path: str
    layout_seconds: float = 0.0  # images → OCI layout (warm + export, or skopeo copy, or docker save)
    sbom_seconds: float = 0.0
    peak_rss: int = 0
    written: int = 0
    registry_bytes: int = 0
    blob_gets: int = 0
    blob_bytes: int = 0
    daemon_bytes: int = 0
    saves: int = 0
    new_blobs: int = -1  # blobs added to layerhoard's cache (-1: not applicable)
    reported_fetched: int = -1  # layerhoard's own bytes_fetched (-1: not applicable)
    saved_images: list[str] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=dict)  # step → wall time of each process

    @property
    def wall(self) -> float:
        return self.layout_seconds + self.sbom_seconds

    def add(self, measured: Measured, step: str) -> Measured:
        self.steps.setdefault(step, []).append(measured.wall)
        if step in ("sbom", "stand-in"):
            self.sbom_seconds += measured.wall
        else:
            self.layout_seconds += measured.wall
        self.peak_rss = max(self.peak_rss, measured.peak_rss)
        self.written += measured.written
        return measured


class Runner:
    def __init__(self, workload: Workload, registry: Registry, daemon: Daemon, workdir: Path) -> None:
        self.workload, self.registry, self.daemon, self.work = workload, registry, daemon, workdir
        self.skopeo_layout = workdir / "skopeo-oci"
        self.env = {"DOCKER_HOST": daemon.host}
        self.save_sizes: dict[str, int] = {}  # image name or ID → its `docker save` size
        self.runs: list[PathRun] = []

    # -- the paths ----------------------------------------------------------------------

    def docker_save(self, scenario: str) -> PathRun:
        run = PathRun(scenario, "docker save")
        folder = self.work / "saves"
        folder.mkdir(exist_ok=True)
        for image in self.workload.in_daemon():
            target = folder / f"{image.tag}.tar"
            run.add(measure(["docker", "save", "-o", str(target), image.name], self.env, [self.daemon.process.pid]),
                    "docker save")
            self.remember_save_size(image, target.stat().st_size)
            target.unlink()
        return run

    def skopeo(self, scenario: str) -> PathRun:
        run = PathRun(scenario, "skopeo + SBOM stand-in")
        for image in self.workload.images:
            if image.where == "registry":
                argv = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{image.ref}"]
            else:
                argv = ["skopeo", "copy", "--quiet", "--src-daemon-host", self.daemon.host, image.ref]
            run.add(measure([*argv, f"oci:{self.skopeo_layout}:{image.tag}"], helper_pids=[self.daemon.process.pid]),
                    "skopeo copy")
        tags = [image.tag for image in self.workload.images]
        run.add(measure([sys.executable, "-m", "bench.workload.standin", str(self.skopeo_layout), *tags]), "stand-in")
        return run

    def layerhoard(self, scenario: str, one_process: bool = False) -> PathRun:
        """The build script: one `warm`, then one `export` and one `sbom` process per image.

        With ``one_process``: `warm --export oci:OUT --sbom-dir DIR`, the same build step in one
        process (layerhoard's own batch form), on a cache of its own.
        """
        name = "layerhoard-1proc" if one_process else "layerhoard"
        run = PathRun(scenario, ONE_PROCESS if one_process else "layerhoard")
        cache = self.work / f"cache-{name}"
        out, sboms = self.work / f"oci-{name}-{scenario}", self.work / f"sbom-{name}-{scenario}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(sboms, ignore_errors=True)
        sboms.mkdir(parents=True)
        blobs_before = cache_blobs(cache)
        common = ["--cache-dir", str(cache), "-q"]
        warm = [*common, "--json", "warm", *(image.ref for image in self.workload.images),
                "--docker-host", self.daemon.host]
        helpers = [self.daemon.process.pid]
        if one_process:
            warmed = run.add(measure([*LAYERHOARD, *warm, "--export", f"oci:{out}", "--sbom-dir", str(sboms)],
                                     self.env, helpers), "warm --export --sbom-dir")
        else:
            warmed = run.add(measure([*LAYERHOARD, *warm], self.env, helpers), "warm")
            for image in self.workload.images:
                run.add(measure([*LAYERHOARD, *common, "export", image.ref, f"oci:{out}:{image.tag}"],
                                self.env, helpers), "export")
            for image in self.workload.images:
                run.add(measure([*LAYERHOARD, *common, "sbom", image.ref, "-o", str(sboms / f"{image.tag}.spdx.json")],
                                self.env, helpers), "sbom")
        run.reported_fetched = int(json.loads(warmed.stdout)["bytes_fetched"])
        run.new_blobs = cache_blobs(cache) - blobs_before
        return run

    # -- what each path read ------------------------------------------------------------------

    def remember_save_size(self, image: WorkImage, size: int) -> None:
        inspect = self.daemon.docker("image", "inspect", "--format", "{{.Id}}", image.name, check=True)
        image_id = inspect.stdout.decode().strip()
        for key in (image.name, image_id, image_id.removeprefix("sha256:"), image_id.removeprefix("sha256:")[:12]):
            self.save_sizes[key] = size

    def saved_names(self, since: int) -> list[str]:
        """Which image each `GET /images/…/get` since ``since`` saved (by name or ID, as logged)."""
        names = []
        for path in self.daemon.save_calls(since):
            path = urllib.parse.unquote(path)
            match = re.search(r"[?&]names=([^&]+)", path) or re.search(r"/images/(.+)/get", path)
            names.append(match.group(1) if match else path)
        return names

    def registry_reads(self, since: int) -> tuple[int, int, int]:
        """(all response bytes, blob GETs, blob bytes) in the access log since ``since``."""
        time.sleep(0.2)  # the registry logs just after the response
        with open(self.registry.log_path, "rb") as handle:
            handle.seek(since)
            text = handle.read().decode(errors="replace")
        total = gets = blob_bytes = 0
        for method, path, _, size in _ACCESS.findall(text):
            nbytes = int(size) if size.isdigit() else 0
            total += nbytes
            if method == "GET" and "/blobs/" in path:
                gets += 1
                blob_bytes += nbytes
        return total, gets, blob_bytes

    def observed(self, scenario: str, path: str) -> PathRun:
        """Run one path, and attribute the registry's and the daemon's reads to it."""
        registry_mark, daemon_mark = self.registry.mark(), self.daemon.mark()
        paths: dict[str, Callable[[str], PathRun]] = {
            "docker save": self.docker_save, "skopeo": self.skopeo, "layerhoard": self.layerhoard,
            "layerhoard-1proc": functools.partial(self.layerhoard, one_process=True)}
        run = paths[path](scenario)
        run.registry_bytes, run.blob_gets, run.blob_bytes = self.registry_reads(registry_mark)
        run.saved_images = self.saved_names(daemon_mark)
        run.saves = len(run.saved_images)
        run.daemon_bytes = sum(self.save_sizes.get(name, 0) for name in run.saved_images)
        self.runs.append(run)
        return run

    def scenario(self, name: str) -> list[PathRun]:
        # docker save first: it measures each daemon image's save size that the others are charged with
        return [self.observed(name, path) for path in ("docker save", "skopeo", "layerhoard", "layerhoard-1proc")]


def cache_blobs(cache: Path) -> int:
    folder = cache / "blobs" / "sha256"
    return sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0


# -- the report --------------------------------------------------------------------------

def mb(size: int) -> str:
    return f"{size / 1e6:,.0f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


def table(runs: list[PathRun]) -> str:
    rows = []
    for run in runs:
        baseline = next(r for r in runs if r.scenario == run.scenario and r.path.startswith("skopeo"))
        ratio = f"{run.wall / baseline.wall:.3f}x" if run.path != "docker save" else "(daemon images only)"
        speedup = f" ({baseline.wall / run.wall:.1f}x faster)" if run.path.startswith("layerhoard") else ""
        sbom = f"{run.sbom_seconds:.2f} s" if run.sbom_seconds else "(included)" if run.path == ONE_PROCESS else "-"
        rows.append([
            run.scenario, run.path, f"{run.layout_seconds:.2f} s", sbom, f"{run.wall:.2f} s", ratio + speedup,
            f"{mb(run.registry_bytes)}, {run.blob_gets} blob GETs ({mb(run.blob_bytes)})",
            f"{mb(run.daemon_bytes)}, {run.saves} saves", mb(run.written), f"{run.peak_rss / 1e6:.0f} MB",
        ])
    return markdown_table(["scenario", "path", "→ OCI layout", "SBOM", "wall", "vs skopeo path",
                           "read from registry", "read from daemon", "written", "peak RSS"], rows)


def targets(runs: list[PathRun], changed: WorkImage) -> list[tuple[str, bool, str]]:
    """Each target of issue 8: (what, holds, the figures behind it)."""
    def get(scenario: str, path: str) -> PathRun:
        return next(r for r in runs if r.scenario == scenario and (r.path == path or r.path.startswith(f"{path} +")))

    cold, cold_base = get("cold", "layerhoard"), get("cold", "skopeo")
    cached, cached_base = get("cached", "layerhoard"), get("cached", "skopeo")
    one = get("one-layer", "layerhoard")
    speedup = cached_base.wall / cached.wall
    return [
        ("cached build ≥ 20x faster than the skopeo path", speedup >= 20,
         f"{cached.wall:.2f} s against {cached_base.wall:.2f} s: {speedup:.1f}x"),
        ("cached build reads no layer bytes from registry or daemon", cached.blob_gets == 0 and cached.saves == 0,
         f"{cached.blob_gets} blob GETs, {cached.saves} save streams, layerhoard reports "
         f"{cached.reported_fetched} bytes fetched"),
        ("one-layer change: at most that image is saved (none when dockerd's storage is read), only its new "
         "layer compressed and stored",
         one.blob_gets == 0 and one.saved_images in ([changed.name], []) and 0 <= one.new_blobs <= 3,
         f"{one.saves} save stream(s) of {', '.join(one.saved_images) or 'nothing'} (but {mb(one.daemon_bytes)} on "
         f"the wire: the Engine API saves whole images), {one.blob_gets} blob GETs, {one.new_blobs} new blobs in the "
         f"cache (layer + config + manifest), {mb(one.reported_fetched)} reported fetched"),
        ("cold build no slower than the skopeo path", cold.wall <= cold_base.wall,
         f"{cold.wall:.2f} s against {cold_base.wall:.2f} s ({cold.wall / cold_base.wall:.2f}x)"),
    ]


def report(workload: Workload, runs: list[PathRun], changed: WorkImage, generate_seconds: float,
           work: Path, load: str) -> str:
    info = machine(work)
    registry_images, daemon_images = workload.in_registry(), workload.in_daemon()
    lines = [
        f"Machine: {info['cpu']}, {info['nproc']} cores, kernel {info['kernel']}, Python {info['python']}, "
        f"{info['filesystem']}; load average {load}.",
        f"Image set: {len(workload.images)} images ({len(registry_images)} in the registry, {len(daemon_images)} "
        f"only in the daemon), {format_size(workload.total_size)} of distinct uncompressed layers, "
        f"{format_size(sum(i.size for i in workload.images))} summed over images; generated in "
        f"{generate_seconds:.0f} s. One-layer change: {changed.name} (daemon) got a new top layer.",
        "",
        table(runs),
        "",
        "Where the layerhoard (CLI) time goes, per process: "
        + "; ".join(f"{run.scenario}: {breakdown(run)}" for run in runs if run.path == "layerhoard"),
        "",
        "SBOM for the skopeo path is a STAND-IN, not a scanner: syft is not installable here, so every layer of "
        "every image is only decompressed (isal/zstandard), a lower bound on a scanner's cost.",
        "",
        "Targets (issue 8):",
        *[f"- {'HOLDS' if holds else 'MISSED'}: {what}: {why}" for what, holds, why in targets(runs, changed)],
    ]
    return "\n".join(lines)


def breakdown(run: PathRun) -> str:
    return ", ".join(f"{len(walls)} {step} {sum(walls):.1f} s (median {statistics.median(walls):.2f} s)"
                     if len(walls) > 1 else f"{step} {walls[0]:.1f} s" for step, walls in run.steps.items())


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_all(spec: Spec, workdir: Path, registry: Registry, daemon: Daemon,
            log: bool = False) -> tuple[str, dict[str, Any]]:
    """Generate the set, run every scenario; the markdown report and the figures as JSON-able data."""
    generator = Generator(spec, workdir, registry, daemon, log=log)
    started = time.perf_counter()
    workload = generator.build()
    generate_seconds = time.perf_counter() - started
    runner = Runner(workload, registry, daemon, workdir)
    loads = [load_average()]
    changed = workload.in_daemon()[0]
    for scenario in SCENARIOS:
        if scenario == "one-layer":
            generator.rebuild_top_layer(workload, changed.name, seed=9999)
        if log:
            print(f"[workload] scenario {scenario}", file=sys.stderr, flush=True)
        runner.scenario(scenario)
        loads.append(load_average())
    load = f"{loads[0]} at the start, {loads[-1]} at the end"
    text = report(workload, runner.runs, changed, generate_seconds, workdir, load)
    data = {"runs": [vars(run) | {"wall": run.wall} for run in runner.runs],
            "targets": [{"what": w, "holds": h, "figures": f} for w, h, f in targets(runner.runs, changed)]}
    return text, data


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench workload", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="2G", help="total uncompressed size aimed at (default 2G)")
    parser.add_argument("--apps", type=int, default=17, help="application images (plus 3 bases)")
    parser.add_argument("--daemon-apps", type=int, default=7, help="apps that exist only in the daemon")
    parser.add_argument("--big", default="0", help="add a single-layer daemon image of this size (e.g. 20G)")
    parser.add_argument("--out", help="also write the markdown report here")
    parser.add_argument("--json", dest="json_out", help="also write the figures as JSON here")
    parser.add_argument("--workdir", default="/tmp/layerhoard-bench-workload")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if not 1 <= args.daemon_apps <= args.apps:
        parser.error("--daemon-apps must be between 1 and --apps")
    spec = Spec(parse_size(args.scale), args.apps, args.daemon_apps, big=parse_size(args.big))
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "registry").mkdir(parents=True)
    (work / "dockerd").mkdir()
    registry, daemon = Registry(work / "registry"), Daemon(work / "dockerd")
    try:
        text, data = run_all(spec, work, registry, daemon, log=True)
    finally:
        daemon.stop()
        registry.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_report(text, args.out)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(data, indent=1) + "\n")
    return 0
