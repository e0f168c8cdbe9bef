"""Two air-gapped deliveries of the 20-image workload (issue 20): the bytes each bundle weighs.

``python -m bench delivery [--scale 1G] [--out FILE]``: bench/workload's generator pushes the 20
images (3 bases, 17 apps, shared base layers) into a docker-registry. Delivery one is a full
bundle, imported at the site; the site writes its inventory. Then two apps get a new top layer
(their tags move) and delivery two is bundled against that inventory, and imported.

Side by side with what a user ships without a delta: the same images copied by skopeo from the
registry into one OCI layout (shared blobs once), as an oci-archive would carry them, and our own
full bundle of delivery two. Every command is the installed CLI in a child process, timed whole.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import machine, markdown_table, print_report, python_child
from bench.workload.generator import Generator, Spec
from cache.units import parse_size
from tests.services import Registry, skopeo


def layerhoard(cache: Path, *args: str) -> float:
    """Run one command of the CLI against ``cache``; its wall time."""
    started = time.perf_counter()
    subprocess.run(python_child("cli.main", "--cache-dir", str(cache), "-q", *args), check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def mb(size: float) -> str:
    return f"{size / 1e6:.2f} MB"


def folder_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def skopeo_layout(refs: list[str], target: Path) -> tuple[int, float]:
    """The baseline: every image copied by skopeo into one OCI layout; its bytes and wall time."""
    started = time.perf_counter()
    for ref in refs:
        skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{target}:{ref}")
    return folder_bytes(target), time.perf_counter() - started


def run(spec: Spec, work: Path, registry: Registry) -> tuple[str, dict[str, float]]:
    generator = Generator(spec, work / "generated", registry, None)
    workload = generator.build()
    refs = [image.ref for image in workload.images]
    (work / "images.txt").write_text("\n".join(refs) + "\n")
    source, site = work / "source", work / "site"
    figures: dict[str, float] = {}

    figures["warm_one_s"] = layerhoard(source, "warm", "-f", str(work / "images.txt"), "--lock",
                                       str(work / "one.lock"))
    figures["export_one_s"] = layerhoard(source, "export", "--locked", str(work / "one.lock"),
                                         f"oci-archive:{work / 'one.tar'}")
    figures["import_one_s"] = layerhoard(site, "import", f"oci-archive:{work / 'one.tar'}")
    layerhoard(site, "inventory", "-o", str(work / "site.json"))
    figures["bundle_one"] = (work / "one.tar").stat().st_size
    figures["skopeo_one"], figures["skopeo_one_s"] = skopeo_layout(refs, work / "skopeo-one")

    apps = [image for image in workload.images if image.base][:2]  # two apps: one new top layer each
    for seed, image in enumerate(apps):
        generator.rebuild_top_layer(workload, image.name, seed=9000 + seed)
    layerhoard(source, "warm", "-f", str(work / "images.txt"), "--lock", str(work / "two.lock"))
    figures["export_two_s"] = layerhoard(source, "export", "--locked", str(work / "two.lock"), "--exclude-from",
                                         str(work / "site.json"), f"oci-archive:{work / 'two.tar'}")
    figures["import_two_s"] = layerhoard(site, "import", f"oci-archive:{work / 'two.tar'}")
    layerhoard(source, "export", "--locked", str(work / "two.lock"), f"oci-archive:{work / 'two-full.tar'}")
    figures["bundle_two"] = (work / "two.tar").stat().st_size
    figures["full_two"] = (work / "two-full.tar").stat().st_size
    figures["skopeo_two"], figures["skopeo_two_s"] = skopeo_layout(refs, work / "skopeo-two")
    changed = sum(workload.layer_sizes[image.diff_ids[-1]] for image in apps)
    same = json.loads((source / "index.json").read_text()) == json.loads((site / "index.json").read_text())

    rows = [
        ["one (20 images, full)", mb(figures["bundle_one"]), mb(figures["skopeo_one"]), "-",
         f"{figures['export_one_s']:.2f} s / {figures['import_one_s']:.2f} s"],
        ["two (2 top layers changed)", mb(figures["bundle_two"]), mb(figures["skopeo_two"]),
         f"{figures['bundle_two'] / figures['skopeo_two']:.4f}x",
         f"{figures['export_two_s']:.2f} s / {figures['import_two_s']:.2f} s"],
    ]
    text = "\n".join([
        f"Workload: {len(refs)} images, {workload.total_size / 1e6:.0f} MB of distinct layers (uncompressed); "
        f"the two changed top layers: {changed / 1e6:.2f} MB uncompressed.",
        "",
        markdown_table(["delivery", "layerhoard bundle", "skopeo to one OCI layout", "bundle / skopeo",
                        "export / import"], rows),
        "",
        f"Delivery two shipped whole (our bundle without --exclude-from): {mb(figures['full_two'])}. "
        f"Site's index.json identical to the source's after both imports: {same}.",
        "",
        f"For scale, the same checks from the registry: `warm` of the 20 images into the empty source cache "
        f"{figures['warm_one_s']:.2f} s; skopeo's copy of them into one OCI layout {figures['skopeo_one_s']:.2f} s.",
        "",
        f"Machine: {json.dumps(machine(work))}",
    ])
    return text, figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench delivery", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="1G", help="total uncompressed size aimed at (default 1G)")
    parser.add_argument("--out", help="also write the markdown report here")
    parser.add_argument("--workdir", default="/tmp/layerhoard-bench-delivery")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "registry").mkdir(parents=True)
    registry = Registry(work / "registry")
    try:
        text, _ = run(Spec(parse_size(args.scale), apps=17, daemon_apps=0), work, registry)
    finally:
        registry.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_report(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
