"""Ground truth from real data written by dpkg, pip, npm, the Go toolchain and Debian's Java
packages: what the scan finds must be exactly what those tools report."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packageurl import PackageURL

from cache.store.blobstore import BlobStore
from tests.test_sbom_support import by_name, files_from_host, sbom_of, tar_with, tree_of


def _dpkg_installed() -> dict[str, tuple[str, str]]:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${Architecture}\t${db:Status-Status}\n"],
                         check=True, capture_output=True, text=True).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    return {name: (version, arch) for name, version, arch, status in rows if status == "installed"}


def _os_release() -> dict[str, str]:
    fields = {}
    for line in Path("/usr/lib/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        fields[key] = value.strip('"')
    return fields


def test_dpkg_layer_of_this_machine_matches_dpkg_query(store: BlobStore, tmp_path: Path) -> None:
    files = files_from_host([Path("/var/lib/dpkg/status"), Path("/usr/lib/os-release"),
                             *Path("/usr/share/doc").glob("*/copyright")])
    layer = tar_with(files, symlinks={"etc/os-release": "../usr/lib/os-release"})
    sbom = sbom_of(store, tmp_path / "layout", [layer])
    found = {p.name: (p.version, p.metadata.get("arch")) for p in sbom.packages if p.type == "deb"}
    assert found == _dpkg_installed()
    release = _os_release()
    assert sbom.distro is not None
    assert (sbom.distro.id, sbom.distro.version_id) == (release["ID"], release["VERSION_ID"])
    for package in sbom.packages:
        purl = PackageURL.from_string(package.purl)
        assert (purl.type, purl.namespace, purl.name, purl.version) == ("deb", release["ID"], package.name,
                                                                        package.version)
        assert purl.qualifiers["distro"] == f"{release['ID']}-{release['VERSION_ID']}"
    # licences come from each package's own copyright file, and only from there
    licence_line = re.compile(r"\nLicense:[ \t]*\S")
    with_licence_lines = {path.parent.name for path in Path("/usr/share/doc").glob("*/copyright")
                          if not path.parent.is_symlink() and licence_line.search(path.read_text(errors="replace"))}
    deb = by_name(sbom, "deb")
    assert with_licence_lines & deb.keys()
    for name in with_licence_lines & deb.keys():
        assert deb[name].licenses, name
    assert "GPL-3+" in deb["bash"].licenses


@pytest.fixture(scope="module")
def pip_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("pip") / "site-packages"
    result = subprocess.run(["python", "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check",
                             "--target", str(target), "six", "idna", "packaging"], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"pip could not install the test packages: {result.stderr[-300:]}")
    return target


def test_pip_target_layer_matches_pip_list(store: BlobStore, tmp_path: Path, pip_target: Path) -> None:
    listed = json.loads(subprocess.run(["python", "-m", "pip", "list", "--disable-pip-version-check", "--path",
                                        str(pip_target), "--format", "json"],
                                       check=True, capture_output=True, text=True).stdout)
    layer = tar_with(tree_of(pip_target, "usr/local/lib/python3.11/site-packages/"))
    sbom = sbom_of(store, tmp_path / "layout", [layer])
    assert {(p.name, p.version) for p in sbom.packages} == {(e["name"], e["version"]) for e in listed}
    assert len(listed) == 3
    for package in sbom.packages:
        purl = PackageURL.from_string(package.purl)
        assert (purl.type, purl.version) == ("pypi", package.version)
        assert package.locations[0].endswith(".dist-info/METADATA")


@pytest.fixture(scope="module")
def npm_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    project = tmp_path_factory.mktemp("npm")
    (project / "package.json").write_text('{"name": "sbom-test-app", "version": "1.0.0", "private": true}')
    result = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--silent",
                             "debug@4", "is-number@7", "@sindresorhus/is@4"], cwd=project, capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"npm could not install the test packages: {result.stderr[-300:]}")
    return project


def _npm_tree(node: dict[str, object], out: set[tuple[str, str]]) -> set[tuple[str, str]]:
    for name, child in (node.get("dependencies") or {}).items():  # type: ignore[attr-defined]
        out.add((name, child["version"]))
        _npm_tree(child, out)
    return out


def test_npm_layer_matches_npm_ls(store: BlobStore, tmp_path: Path, npm_project: Path) -> None:
    listed = json.loads(subprocess.run(["npm", "ls", "--all", "--json"], cwd=npm_project, check=True,
                                       capture_output=True, text=True).stdout)
    expected = _npm_tree(listed, set())
    layer = tar_with(tree_of(npm_project, "app/"))  # the app's own package.json is not an installed package
    sbom = sbom_of(store, tmp_path / "layout", [layer])
    assert {(p.name, p.version) for p in sbom.packages} == expected
    assert ("@sindresorhus/is", "4.6.0") in expected
    scoped = by_name(sbom, "npm")["@sindresorhus/is"]
    purl = PackageURL.from_string(scoped.purl)
    assert (purl.type, purl.namespace, purl.name) == ("npm", "@sindresorhus", "is")
    assert by_name(sbom, "npm")["debug"].licenses == ["MIT"]


def _built_using_go(package: str) -> str | None:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Built-Using}", package], capture_output=True, text=True).stdout
    for item in out.split(","):
        name, _, version = item.strip().partition(" (= ")
        if name.startswith("golang-1."):
            return version.rstrip(")").split("-")[0]
    return None


@pytest.mark.parametrize("binary,package", [("/usr/bin/skopeo", "skopeo"), ("/usr/bin/docker-registry",
                                                                            "docker-registry")])
def test_go_binary_stdlib_is_debians_go(store: BlobStore, tmp_path: Path, binary: str, package: str) -> None:
    go = _built_using_go(package)
    if not Path(binary).is_file() or go is None:
        pytest.skip(f"{binary} from Debian is not installed")
    sbom = sbom_of(store, tmp_path / "layout", [tar_with({binary.lstrip("/"): Path(binary).read_bytes()},
                                                                   executable=(binary.lstrip("/"),))])
    go_packages = by_name(sbom, "go-module")
    assert go_packages["stdlib"].version == go  # Debian's Built-Using names the Go it was built with
    assert PackageURL.from_string(go_packages["stdlib"].purl).to_dict()["name"] == "stdlib"


def test_java_archives_match_their_debian_packages(store: BlobStore, tmp_path: Path) -> None:
    owners: dict[str, str] = {}
    for jar in sorted(Path("/usr/share/java").glob("*.jar"))[:60]:
        if jar.is_symlink():
            continue
        owner = subprocess.run(["dpkg-query", "-S", str(jar)], capture_output=True, text=True).stdout
        if owner:
            owners[jar.name] = owner.split(":")[0]
    if not owners:
        pytest.skip("no Debian Java packages installed")
    layer = tar_with({f"usr/share/java/{name}": (Path("/usr/share/java") / name).read_bytes() for name in owners})
    sbom = sbom_of(store, tmp_path / "layout", [layer])
    installed = _dpkg_installed()
    checked = 0
    for package in sbom.packages:
        jar = package.locations[0].rsplit("/", 1)[-1].split(":")[0]
        upstream = installed[owners[jar]][0].split(":")[-1].rsplit("-", 1)[0]
        if package.metadata.get("group_id") and jar.removesuffix(".jar") == package.name:  # not a shaded one
            assert upstream.startswith(package.version) or package.version.startswith(upstream), (jar, package)
            purl = PackageURL.from_string(package.purl)
            assert (purl.type, purl.namespace, purl.name) == ("maven", package.metadata["group_id"], package.name)
            checked += 1
    assert checked >= 1
