"""``python -m bench NAME [options]``: run one benchmark.

To add a benchmark, write ``bench/<name>.py`` with ``main(argv: list[str]) -> int`` and add one
line to BENCHMARKS. Modules are imported only when chosen, so one benchmark's dependencies (a
registry, a daemon) never stop another from running.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line description)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "ingest": ("bench.ingest", "ingest throughput of a generated stream against sha256 and fdatasync"),
    "pull": ("bench.pull", "registry pulls against skopeo, cold and cached"),
    "daemon": ("bench.daemon", "daemon images against docker save, cold and cached"),
    "sbom": ("bench.sbom", "cold and cached SBOM against plain decompression"),
    "serve": ("bench.serve", "serve against docker-registry, export against skopeo"),
    "remote": ("bench.remote", "a second machine's pull from the remote tier against one from the origin"),
    "prune": ("bench.prune", "prune of 10,000 blobs / 500 images; the policy check's cost after a write"),
    "scale": ("bench.scale", "ls, du, gc, prune, verify at 10,000 images; one more image, full cache vs empty"),
    "view": ("bench.view", "the web view's page at 2,000 images against ls + du + stats"),
    "workload": ("bench.workload", "a Big-Bang-like build end to end against skopeo/docker save (issue 8)"),
    "delivery": ("bench.delivery", "two air-gapped deliveries of 20 images: delta bundle bytes against skopeo"),
}


def usage() -> str:
    lines = ["usage: python -m bench NAME [options]   (NAME --help for its options)", "", "benchmarks:"]
    lines += [f"  {name:8} {description}" for name, (_, description) in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"python -m bench: unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[name][0])
    return int(module.main(rest))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
