"""The workload benchmark (issue 8) at tiny sizes: the generator, the stand-in, the measuring, the runner."""

from __future__ import annotations

import gzip
import io
import json
import sys
import tarfile
import uuid
from pathlib import Path

import pytest

from bench.workload.generator import Generator, Spec, real_files
from bench.workload.measure import measure
from bench.workload.runner import ONE_PROCESS, run_all
from bench.workload.standin import scan
from tests.images import build_image, random_layer, sha256
from tests.services import Daemon, Registry, skopeo


def tiny_spec(apps: int = 3, daemon_apps: int = 1, big: int = 0) -> Spec:
    return Spec(scale=4 << 20, apps=apps, daemon_apps=daemon_apps, prefix=f"wl{uuid.uuid4().hex[:8]}", big=big)


def test_real_files_stop_at_the_cap() -> None:
    files = real_files([Path("/var/lib/dpkg")], 200_000)
    assert files and sum(map(len, files.values())) <= 200_000
    assert all(not path.startswith("/") for path in files)


def test_standin_decompresses_every_layer_of_every_image(tmp_path: Path) -> None:
    layers = [random_layer(50_000, 1), random_layer(80_000, 2, compressible=True)]
    for tag, compression in (("g", "gzip"), ("z", "zstd"), ("n", "none")):
        build_image(tmp_path, layers, tag=tag, compression=compression)
    totals = scan(tmp_path, ["g", "z"])
    assert totals["layers"] == 4  # two images, each scanned whole
    assert totals["uncompressed"] == 2 * sum(map(len, layers))
    assert scan(tmp_path, [])["layers"] == 6


def test_measure_counts_the_whole_trees_writes_and_memory(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    script = (f"import subprocess,sys; subprocess.run([sys.executable,'-c',"
              f"\"open({str(target)!r},'wb').write(b'x'*(8<<20)); print('done')\"])")
    measured = measure([sys.executable, "-c", script])
    assert measured.written >= 8 << 20  # written by a grandchild
    assert measured.peak_rss > 1 << 20
    assert measured.stdout.strip() == "done"
    with pytest.raises(RuntimeError, match="exited with 3"):
        measure([sys.executable, "-c", "import sys; sys.exit(3)"])


@pytest.mark.registry
@pytest.mark.daemon
@pytest.mark.slow
def test_generator_places_a_shared_base_set(registry: Registry, dockerd: Daemon, tmp_path: Path) -> None:
    spec = tiny_spec(big=1 << 20)
    generator = Generator(spec, tmp_path, registry, dockerd)
    workload = generator.build()
    big = workload.images.pop()  # the single-layer image of --big, `docker import`ed
    assert big.name.endswith("/big:1") and big.where == "daemon" and len(big.diff_ids) == 1
    assert workload.layer_sizes[big.diff_ids[0]] == 1 << 20
    assert len(workload.images) == 3 + spec.apps
    assert [i.where for i in workload.images].count("daemon") == spec.daemon_apps
    bases = {image.name: image for image in workload.images if not image.base}
    debian = bases[f"{spec.prefix}/base-debian:1"].diff_ids[0]
    for image in workload.images:
        assert image.diff_ids[0] == debian  # one real Debian layer under everything
        if image.base:
            assert image.diff_ids[: len(bases[image.base].diff_ids)] == bases[image.base].diff_ids
            assert len(image.diff_ids) == len(bases[image.base].diff_ids) + 2  # app layer + code layer
    for image in workload.in_registry():
        config = json.loads(skopeo("inspect", "--tls-verify=false", "--config", f"docker://{image.ref}").stdout)
        assert config["rootfs"]["diff_ids"] == image.diff_ids
    daemon_image = workload.in_daemon()[0]
    inspect = dockerd.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", daemon_image.name, check=True)
    assert json.loads(inspect.stdout) == daemon_image.diff_ids
    # the Debian layer is this machine's dpkg database, capped to the scale
    with tarfile.open(fileobj=open_layer(tmp_path / "generated", debian)) as tar:
        assert any(name.startswith("var/lib/dpkg/") for name in tar.getnames())

    before = list(daemon_image.diff_ids)
    generator.rebuild_top_layer(workload, daemon_image.name, seed=77)
    inspect = dockerd.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", daemon_image.name, check=True)
    after = json.loads(inspect.stdout)
    assert after[:-1] == before[:-1] and after[-1] != before[-1]
    assert after == daemon_image.diff_ids and after[-1] in workload.layer_sizes


def open_layer(layout: Path, diff_id: str) -> io.BytesIO:
    """The uncompressed layer ``diff_id`` from the generator's layout (daemon images keep plain tars)."""
    for path in (layout / "blobs" / "sha256").iterdir():
        data = path.read_bytes()
        if sha256(data) == diff_id:
            return io.BytesIO(data)
        if data[:2] == b"\x1f\x8b":
            plain = gzip.decompress(data)
            if sha256(plain) == diff_id:
                return io.BytesIO(plain)
    raise AssertionError(f"no layer {diff_id}")


@pytest.mark.registry
@pytest.mark.daemon
@pytest.mark.slow
def test_runner_reports_every_scenario_and_target(registry: Registry, dockerd: Daemon, tmp_path: Path) -> None:
    text, data = run_all(tiny_spec(apps=1, daemon_apps=1), tmp_path, registry, dockerd)
    runs = {(run["scenario"], run["path"]): run for run in data["runs"]}
    assert len(runs) == 12
    cold, cached, one = (runs[(s, "layerhoard")] for s in ("cold", "cached", "one-layer"))
    # daemon layers are read from dockerd's own storage (issue 17): no save stream at all
    assert cold["blob_gets"] > 0 and cold["saves"] == 0 and cold["daemon_bytes"] == 0
    assert cold["new_blobs"] > 0 and cold["written"] > 0 and cold["peak_rss"] > 10 << 20
    # nothing changed: no blob from the registry, no save from the daemon, nothing new in the cache
    assert cached["blob_gets"] == 0 and cached["saves"] == 0 and cached["new_blobs"] == 0
    assert cached["reported_fetched"] < 64 << 10  # manifests only
    # one new top layer: read from dockerd's storage, the layer, its config and manifest stored
    assert one["saves"] == 0 and one["blob_gets"] == 0 and 1 <= one["new_blobs"] <= 3
    # the same build step in one process (warm --export --sbom-dir) does the same work
    one_process = runs[("cached", ONE_PROCESS)]
    assert one_process["blob_gets"] == 0 and one_process["saves"] == 0 and one_process["new_blobs"] == 0
    assert runs[("cold", ONE_PROCESS)]["new_blobs"] == cold["new_blobs"]
    assert len(list((tmp_path / "sbom-layerhoard-1proc-cold").iterdir())) == 4
    # the baseline reads everything again every time
    assert runs[("cached", "skopeo + SBOM stand-in")]["saves"] == 1
    assert runs[("cached", "docker save")]["daemon_bytes"] > 0
    assert len(data["targets"]) == 4
    for scenario in ("cold", "cached", "one-layer"):
        assert f"| {scenario}" in text
    assert "STAND-IN" in text and "Targets (issue 8):" in text
