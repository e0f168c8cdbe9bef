"""Run several layerhoard commands in one interpreter: the same CLI code, without a start-up per image.

    python -m bench.workload.oneprocess '[["--cache-dir", "C", "-q", "export", "SRC", "oci:DIR:TAG"], ...]'

The workload's layerhoard path starts one process per image and command, as a build script
does; about 85% of a cached `export` or `sbom` process is interpreter start-up and imports
(profiled: docker-py with requests, urllib3, the SBOM formats, click). This variant shows what
the same commands cost once that is paid once. Each command goes through click exactly as on the
command line; any failure stops the run with its exit code.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    from cli.main import main as layerhoard

    for args in json.loads(argv[0]):
        try:
            layerhoard.main(args, prog_name="layerhoard", standalone_mode=False)
        except SystemExit as stop:  # the CLI's own failure path (one line on stderr, then exit 1)
            if stop.code:
                return int(stop.code) if isinstance(stop.code, int) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
