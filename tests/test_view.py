"""The web view (cache/view) and /metrics, against a cache filled from the real registry.

The witness for every figure is the command line: the page is loaded by Debian's headless Chromium
(the DOM after the page's script ran), and each figure in it must equal what `ls --json`,
`du --json`, `stats --json` and `prune --dry-run --json` print for the same cache, run as their
own processes. The screenshot that test takes is docs/view.png (written there with
LAYERHOARD_WRITE_DOCS=1).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests

from cache.ingest.pull import PullOptions, pull
from cache.model.digest import sha256_of
from cache.sbom.records import record_key
from cache.server import RegistryServer, ServeOptions, make_server
from cache.server.auth import Authenticator
from cache.store.blobstore import BlobStore
from tests.images import build_image, push, random_layer
from tests.services import Registry, in_thread
from tests.test_sbom_support import files_from_host, tar_with
from tests.test_serve_tls_auth import PUSHER, READER, htpasswd_line

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
HOSTILE = "<script>window.hostile=1</script><img src=x onerror=alert(1)>"


def cli(cache: Path, *args: str) -> Any:
    """A command's --json document, from a process of its own."""
    done = subprocess.run([sys.executable, "-m", "cli.main", "--cache-dir", str(cache), "--json", *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def filled(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A cache holding three images pulled from the registry: two share a base layer of this
    machine's real files (dpkg status, os-release, /usr/bin), one was pulled twice (layer hits),
    one scanned for its SBOM, one pinned."""
    root = tmp_path_factory.mktemp("view")
    base = tar_with({**files_from_host(sorted(Path("/usr/bin").iterdir())[:40]),
                     "var/lib/dpkg/status": Path("/var/lib/dpkg/status").read_bytes(),
                     "etc/os-release": Path("/usr/lib/os-release").read_bytes()})
    images = {
        "a": build_image(root / "a", [base, random_layer(300_000, 21, compressible=True)], tag="1"),
        "b": build_image(root / "b", [base, random_layer(200_000, 22)], tag="1"),
        "c": build_image(root / "c", [random_layer(150_000, 23)], tag="1"),
    }
    refs = {key: push(image.layout, "1", registry, f"view/app-{key}:1") for key, image in images.items()}
    cache = root / "cache"
    for key in ("a", "b", "c", "a"):
        cli(cache, "pull", refs[key], "--insecure")
    sbom = cli(cache, "sbom", refs["a"], "--offline", "--format", "spdx-json", "-o", str(root / "a.spdx.json"))
    cli(cache, "pin", refs["c"])
    return {"cache": cache, "refs": refs, "sbom": sbom, "spdx": json.loads((root / "a.spdx.json").read_text()),
            "base": images["a"].layers[0].digest}


@contextlib.contextmanager
def serving(cache: Path, **options: Any) -> Iterator[RegistryServer]:
    server = make_server(BlobStore(cache), ServeOptions(listen="127.0.0.1:0", access_log=None, **options))
    with in_thread(server):
        yield server


class Dom(HTMLParser):
    """What the test reads from the page: figures, image rows, evicted images, SBOM links, scripts."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.figures: dict[str, str] = {}
        self.rows: dict[str, dict[str, str]] = {}
        self.evicted: list[str] = []
        self.sbom_links: dict[str, str] = {}
        self.scripts: list[dict[str, str | None]] = []
        self.body: dict[str, str | None] = {}
        self._row: dict[str, str] | None = None
        self.html = html
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            self.scripts.append(found)
        if tag == "body":
            self.body = found
        if tag == "tr" and found.get("data-ref") is not None:
            self._row = self.rows.setdefault(str(found["data-ref"]), {})
        if tag == "tr" and found.get("data-evicted") is not None:
            self.evicted.append(str(found["data-evicted"]))
        if found.get("data-figure") is not None:
            self.figures[str(found["data-figure"])] = str(found["data-value"])
        if found.get("data-field") is not None and self._row is not None:
            self._row[str(found["data-field"])] = str(found["data-value"])
        if tag == "a" and found.get("data-sbom") is not None:
            self.sbom_links[str(found["data-sbom"])] = str(found["href"])


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    """Debian's chromium, headless (as root it needs --no-sandbox), with a profile of its own."""
    if CHROMIUM is None:
        if os.environ.get("LAYERHOARD_REQUIRE_SERVICES"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--no-first-run", f"--user-data-dir={profile}", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=120, check=True)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_browser_shows_the_figures_of_ls_du_stats_and_prune(filled: dict[str, Any], tmp_path: Path) -> None:
    cache = filled["cache"]
    listing = cli(cache, "ls")["images"]
    usage, stats = cli(cache, "du"), cli(cache, "stats")
    limit = usage["bytes"] - 1  # one byte less than stored: the least recently used image goes
    plan = cli(cache, "prune", "--dry-run", "--max-size", str(limit))
    assert plan["images"], "the chosen size must evict something for this test to mean anything"
    with serving(cache) as server:
        url = f"{server.url}/?max_size={limit}"
        dom = Dom(chromium("--dump-dom", url, profile=tmp_path / "profile").stdout)
        shot = tmp_path / "view.png"
        chromium(f"--screenshot={shot}", "--window-size=1280,2000", url, profile=tmp_path / "profile")

    assert dom.body.get("data-ready") == "true"  # the page's script ran in the browser
    assert set(dom.rows) == {row["ref"] for row in listing}
    for row in listing:
        shown = dom.rows[row["ref"]]
        assert int(shown["size"]) == row["size"]
        assert shown["digest"] == row["digest"]
        assert shown["pinned"] == ("true" if row["pinned"] else "false")
        assert float(shown["last_used"]) == row["last_used"]
        assert shown["source"] == row["source"] and shown["platform"] == (row["platform"] or "")
    shown_du = {key[3:]: int(value) for key, value in dom.figures.items() if key.startswith("du.")}
    assert set(shown_du) >= {"bytes", "blobs", "images", "image_bytes", "dedup_saved_bytes"}
    assert shown_du == {key: usage[key] for key in shown_du}
    for kind, values in stats["sources"].items():
        for field, value in values.items():
            assert int(dom.figures[f"stats.sources.{kind}.{field}"]) == value, (kind, field)
    for field in ("hits", "misses", "bytes_fetched", "bytes_reused"):
        assert int(dom.figures[f"stats.total.{field}"]) == stats["total"][field]
    assert stats["total"]["hits"] > 0 and stats["total"]["misses"] > 0  # the second pull of a hit every layer
    assert dom.evicted == [image["ref"] for image in plan["images"]]
    for field in ("freed_bytes", "bytes_before", "bytes_after"):
        assert int(dom.figures[f"prune.{field}"]) == plan[field]
    assert int(dom.figures["prune.blobs"]) == len(plan["blobs"])
    assert int(dom.figures["shared.count"]) == 1 and filled["base"] in dom.html  # a's and b's base, drawn
    assert int(dom.rows[filled["refs"]["a"]]["packages"]) == filled["sbom"]["packages"] > 0
    assert dom.rows[filled["refs"]["b"]]["packages"] == ""  # its own layer was never scanned

    assert png_size(shot) == (1280, 2000) and shot.stat().st_size > 50_000
    if os.environ.get("LAYERHOARD_WRITE_DOCS") == "1":
        shutil.copyfile(shot, REPO_ROOT / "docs" / "view.png")


def test_the_view_writes_nothing(filled: dict[str, Any]) -> None:
    cache = filled["cache"]
    store = BlobStore(cache)

    def state() -> tuple[object, ...]:
        files = {str(path.relative_to(cache)): (path.stat().st_size, path.stat().st_mtime_ns)
                 for path in cache.rglob("*") if path.is_file() and path.parts[len(cache.parts)] not in ("meta",)}
        return files, dict(store.index.images()), store.index.counters(), store.index.keys_under("sbom/")

    before = state()
    with serving(cache) as server:
        for path in ("/", "/?max_size=1", f"/view/sbom?ref={filled['refs']['a']}", "/view/static/view.js"):
            assert requests.get(f"{server.url}{path}", timeout=60).status_code == 200, path
        sbom_c = requests.get(f"{server.url}/view/sbom", params={"ref": filled["refs"]["c"]}, timeout=60)
    assert state() == before
    assert sbom_c.status_code == 404 and "no scan record" in sbom_c.text  # never scanned here: not scanned now


def test_sbom_link_downloads_the_cached_sbom(filled: dict[str, Any]) -> None:
    with serving(filled["cache"]) as server:
        page = Dom(requests.get(f"{server.url}/", timeout=60).text)
        link = page.sbom_links[filled["refs"]["a"]]
        response = requests.get(f"{server.url}{link.replace('&amp;', '&')}", timeout=60)
        other = requests.get(f"{server.url}/view/sbom", params={"ref": filled["refs"]["a"], "format": "cyclonedx-json"},
                             timeout=60)
        bad = requests.get(f"{server.url}/view/sbom", params={"ref": filled["refs"]["a"], "format": "xml"}, timeout=60)
        unknown = requests.get(f"{server.url}/view/sbom", params={"ref": "nope:1"}, timeout=60)
    assert response.status_code == 200 and "attachment" in response.headers["Content-Disposition"]
    document = response.json()
    expected = filled["spdx"]
    assert document["spdxVersion"] == expected["spdxVersion"]
    assert sorted(p["name"] for p in document["packages"]) == sorted(p["name"] for p in expected["packages"])
    assert other.status_code == 200 and other.json()["bomFormat"] == "CycloneDX"
    assert bad.status_code == 400 and unknown.status_code == 404
    assert set(filled["refs"].values()) <= set(page.rows)


def test_prune_form_previews_any_size_and_refuses_a_bad_one(filled: dict[str, Any]) -> None:
    cache = filled["cache"]
    with serving(cache) as server:
        everything = Dom(requests.get(f"{server.url}/", params={"max_size": "0"}, timeout=60).text)
        bad = requests.get(f"{server.url}/", params={"max_size": "twenty gigs"}, timeout=60)
        none = Dom(requests.get(f"{server.url}/", params={"max_size": "1T"}, timeout=60).text)
    plan = cli(cache, "prune", "--dry-run", "--max-size", "0")
    assert everything.evicted == [image["ref"] for image in plan["images"]]
    assert filled["refs"]["c"] not in everything.evicted  # pinned
    assert int(everything.figures["prune.freed_bytes"]) == plan["freed_bytes"]
    assert bad.status_code == 400 and "max_size" in bad.text and "twenty gigs" in bad.text
    assert "du.bytes" in Dom(bad.text).figures  # the rest of the page is still there
    assert none.evicted == [] and int(none.figures["prune.freed_bytes"]) == 0


def _push_blob(url: str, repo: str, data: bytes) -> dict[str, Any]:
    digest = sha256_of(data)
    response = requests.post(f"{url}/v2/{repo}/blobs/uploads/", params={"digest": str(digest)}, data=data, timeout=30)
    assert response.status_code == 201, response.text
    return {"digest": str(digest), "size": len(data)}


def test_hostile_names_are_shown_as_text(store: BlobStore, tmp_path: Path) -> None:
    """Untrusted text reaches the page two ways: a layout's config names any platform, and a push
    into serve gives a referrer any artifactType. Both must arrive as text, never as markup."""
    layout = build_image(tmp_path / "hostile", [random_layer(2000, 31)], tag="1", platform=(HOSTILE, "amd64"))
    pull(store, f"oci:{layout.layout}:1", PullOptions(name="localhost/hostile:1"))
    with serving(store.root, allow_push=True) as server:
        config = _push_blob(server.url, "hostile", b"{}")
        referrer = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": HOSTILE,
                               "config": {"mediaType": "application/vnd.oci.empty.v1+json", **config},
                               "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", **config}],
                               "subject": {"mediaType": OCI_MANIFEST, "digest": layout.manifest_digest,
                                           "size": len(layout.manifest)}}).encode()
        put = requests.put(f"{server.url}/v2/hostile/manifests/{sha256_of(referrer)}", data=referrer,
                           headers={"Content-Type": OCI_MANIFEST}, timeout=30)
        assert put.status_code == 201, put.text
        page = requests.get(f"{server.url}/", timeout=60)
        dom = Dom(chromium("--dump-dom", f"{server.url}/", profile=tmp_path / "profile").stdout)
    assert page.status_code == 200
    assert HOSTILE not in page.text and page.text.count("&lt;script&gt;window.hostile=1&lt;/script&gt;") >= 2
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert [script.get("src") for script in dom.scripts] == ["/view/static/view.js"]  # no script of theirs
    row = dom.rows["localhost/hostile:1"]
    assert HOSTILE in row["platform"] and row["referrers"] == "1"  # shown, as text


def test_the_view_asks_for_the_credentials_of_a_pull(filled: dict[str, Any], tmp_path: Path) -> None:
    """With --htpasswd every user may read the view; nobody without credentials."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_bytes(htpasswd_line(*READER) + htpasswd_line(*PUSHER))
    with serving(filled["cache"], allow_push=True, auth=Authenticator(str(htpasswd), [PUSHER[0]])) as server:
        anonymous = requests.get(f"{server.url}/", timeout=60)
        asset = requests.get(f"{server.url}/view/static/view.css", timeout=60)
        reader = requests.get(f"{server.url}/", auth=READER, timeout=60)
        post = requests.post(f"{server.url}/", auth=READER, timeout=60)
    assert anonymous.status_code == 401 and "Basic" in anonymous.headers["WWW-Authenticate"]
    assert asset.status_code == 401
    assert reader.status_code == 200 and set(filled["refs"].values()) <= set(Dom(reader.text).rows)
    assert post.status_code == 403  # a read-only user: refused before any route


def _metrics(url: str) -> dict[str, float]:
    values = {}
    for line in requests.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_hold_the_figures_of_du_and_stats(filled: dict[str, Any]) -> None:
    cache = filled["cache"]
    usage, stats = cli(cache, "du"), cli(cache, "stats")
    with serving(cache) as server:
        values = _metrics(server.url)
    assert values["layerhoard_cache_bytes"] == usage["bytes"]
    assert values["layerhoard_cache_blobs"] == usage["blobs"]
    assert values["layerhoard_cache_images"] == usage["images"]
    names = {"pulls": "pulls_total", "hits": "layer_hits_total", "misses": "layer_misses_total",
             "bytes_fetched": "fetched_bytes_total", "bytes_reused": "reused_bytes_total"}
    for kind, counts in stats["sources"].items():
        for field, metric in names.items():
            assert values[f'layerhoard_{metric}{{source="{kind}"}}'] == counts[field], (kind, field)
    assert values['layerhoard_pulls_total{source="registry"}'] == 4


def test_stats_per_day_add_up_to_the_totals(filled: dict[str, Any]) -> None:
    from cache.upkeep.stats import timeline

    store = BlobStore(filled["cache"])
    days, totals = timeline(store), cli(filled["cache"], "stats")["total"]
    assert days and all(sum(day[field] for day in days) == totals[field] for field in totals)
    assert store.index.keys_under(record_key(""))  # the sbom run left its records (what the page counts)


def test_ui_serves_the_view_alone_on_loopback(filled: dict[str, Any]) -> None:
    command = [sys.executable, "-m", "cli.main", "--cache-dir", str(filled["cache"]), "ui"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        page = requests.get(url, timeout=60)
        post = requests.post(url, timeout=60)
        v2 = requests.get(f"{url}v2/", timeout=60)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert page.status_code == 200 and "data-figure=\"du.bytes\"" in page.text
    assert post.status_code == 405 and v2.status_code == 404  # read-only, and no registry side
    refused = subprocess.run([*command, "--listen", "0.0.0.0:0"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "loopback only" in refused.stderr
