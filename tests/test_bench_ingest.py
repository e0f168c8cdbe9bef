"""The ingest benchmark still runs (at 8 MiB) and reports what docs/benchmarks.md quotes."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.test_store import REPO_ROOT


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=120)


def test_ingest_benchmark_small_run() -> None:
    result = bench("ingest", "--size", "8M", "--runs", "1", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["size"] == 8 << 20
    for key in ("sha256_seconds", "write_fdatasync_seconds", "ingest_seconds", "ratio"):
        assert figures[key] > 0
    assert figures["bound_seconds"] == max(figures["sha256_seconds"], figures["write_fdatasync_seconds"])
    assert 10 << 20 < figures["ingest_peak_rss"] < 1 << 30
    assert figures["machine"]["nproc"].isdigit()


def test_ingest_benchmark_text_report() -> None:
    result = bench("ingest", "--size", "4M", "--runs", "1")
    assert result.returncode == 0, result.stderr
    assert "| BlobStore.ingest" in result.stdout and "ratio bound/ingest:" in result.stdout


def test_bench_dispatch() -> None:
    listing = bench("--help")
    assert listing.returncode == 0 and "ingest" in listing.stdout
    unknown = bench("no-such-bench")
    assert unknown.returncode == 2 and "unknown benchmark 'no-such-bench'" in unknown.stderr
    assert bench().returncode == 2
