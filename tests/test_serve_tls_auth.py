"""`serve` over HTTPS with basic auth (issue 16, part 2), against real clients: skopeo (--creds,
--cert-dir), the private dockerd (`docker login`, then `docker pull`, the CA in certs.d), podman and
containerd's ctr (through a mirror hosts.toml with the CA); mutual TLS; the htpasswd file re-read;
and the refusal to listen beyond loopback without TLS and auth."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import bcrypt
import pytest
import requests

from cache.errors import LayerhoardError
from cache.server import RegistryServer, ServeOptions, make_server
from cache.server.auth import RELOAD_LOOK_SECONDS, Authenticator
from cache.server.tls import server_context
from cache.store.blobstore import BlobStore
from tests.clients import Containerd, Podman, start_containerd, start_podman
from tests.images import build_image, random_layer
from tests.lifecycle_support import REPO_ROOT, run_cli
from tests.services import Daemon, free_port, in_thread, skopeo, unavailable, wait_until
from tests.test_serve import cached, errors_of

if TYPE_CHECKING:
    from tests.pki import Pki

READER, PUSHER = ("reader", "read-secret"), ("pusher", "push-secret")


def outside_address() -> str | None:
    """An address of this machine that is not loopback (a UDP connect sends nothing), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback or address == "0.0.0.0" else address


OUTSIDE = outside_address()


def htpasswd_line(user: str, password: str) -> bytes:
    """What `htpasswd -B` writes (cost 5, the $2y$ prefix), made here without apache2-utils."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(5)).replace(b"$2b$", b"$2y$", 1)
    return user.encode() + b":" + hashed + b"\n"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    try:
        from tests.pki import make_pki
    except ImportError:  # cryptography: a test dependency, not one of layerhoard's
        unavailable("the cryptography package is not installed (pip install cryptography)")
        raise
    return make_pki(tmp_path_factory.mktemp("pki"), ["127.0.0.1", "::1", *([OUTSIDE] if OUTSIDE else [])])


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_bytes(b"# users of the test registry\n" + htpasswd_line(*READER) + htpasswd_line(*PUSHER))
    return path


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    yield from start_containerd()


@pytest.fixture
def podman() -> Iterator[Podman]:
    yield from start_podman()


@contextlib.contextmanager
def secure(store: BlobStore, pki: Pki, htpasswd: Path, listen: str = "127.0.0.1:0", mutual: bool = False,
           **options: object) -> Iterator[RegistryServer]:
    """serve with TLS and basic auth (pusher may push), on a thread while in the block."""
    context = server_context(str(pki.server_cert), str(pki.server_key), str(pki.client_ca) if mutual else None)
    auth = Authenticator(str(htpasswd), [PUSHER[0]], warn=options.pop("warn", None))  # type: ignore[arg-type]
    server = make_server(store, ServeOptions(listen=listen, allow_push=True, tls=context, auth=auth,
                                             **options))  # type: ignore[arg-type]
    with in_thread(server):
        yield server


def cert_dir(tmp_path: Path, pki: Pki, client: bool = False) -> Path:
    """A containers/image cert dir: the CA, and the client's pair for mutual TLS."""
    folder = tmp_path / ("certs-client" if client else "certs")
    folder.mkdir(exist_ok=True)
    shutil.copy(pki.ca, folder / "ca.crt")
    if client:
        shutil.copy(pki.client_cert, folder / "client.cert")
        shutil.copy(pki.client_key, folder / "client.key")
    return folder


def creds(user: tuple[str, str]) -> str:
    return f"{user[0]}:{user[1]}"


def fails(*command: str) -> str:
    """Run a client that must fail; its stderr."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, f"{' '.join(command)} succeeded"
    return result.stderr


# -- the protocol, with requests ---------------------------------------------------------------
def test_basic_auth_statuses(store: BlobStore, tmp_path: Path, pki: Pki, htpasswd: Path) -> None:
    image = cached(store, tmp_path, "docker.io/team/statuses:1")
    with secure(store, pki, htpasswd) as server:
        base, ca = f"{server.url}/v2", str(pki.ca)
        assert server.url.startswith("https://")
        for method in ("GET", "HEAD"):
            anonymous = requests.request(method, f"{base}/", verify=ca)
            assert anonymous.status_code == 401, method
            assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="layerhoard"'
        assert errors_of(requests.get(f"{base}/", verify=ca)) == ["UNAUTHORIZED"]
        for bad in [("reader", "wrong"), ("nobody", "read-secret"), ("reader", "")]:
            response = requests.get(f"{base}/team/statuses/tags/list", auth=bad, verify=ca)
            assert response.status_code == 401 and errors_of(response) == ["UNAUTHORIZED"], bad
        for header in ("Basic !!!", "Bearer abc", "Basic " + "A" * 5000):
            response = requests.get(f"{base}/", headers={"Authorization": header}, verify=ca)
            assert response.status_code == 401, header[:20]

        assert requests.get(f"{base}/", auth=READER, verify=ca).status_code == 200
        tags = requests.get(f"{base}/team/statuses/tags/list", auth=READER, verify=ca)
        assert tags.json()["tags"] == ["1"] and "WWW-Authenticate" not in tags.headers
        writes = [requests.post(f"{base}/team/statuses/blobs/uploads/", auth=READER, verify=ca),
                  requests.delete(f"{base}/team/statuses/manifests/{image.manifest_digest}", auth=READER, verify=ca)]
        for response in writes:
            assert response.status_code == 403 and errors_of(response) == ["DENIED"]
        upload = requests.post(f"{base}/team/statuses/blobs/uploads/", auth=PUSHER, verify=ca)
        assert upload.status_code == 202
        status = requests.get(server.url + upload.headers["Location"], auth=READER, verify=ca)
        assert status.status_code == 403  # an upload session is the pusher's business

        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{base}/", auth=READER)  # the system's CAs do not know ours
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://{server.host}/v2/", auth=READER, timeout=5)  # no plain HTTP on the TLS port

        cache = server.auth._verified  # type: ignore[union-attr]
        assert {user for user, _ in cache} == {"reader", "pusher"}
        assert all(b"secret" not in tag for tag, _ in cache.values())  # an HMAC, never the password


def test_htpasswd_reread_when_it_changes(store: BlobStore, tmp_path: Path, pki: Pki, htpasswd: Path) -> None:
    warnings: list[str] = []
    with secure(store, pki, htpasswd, warn=warnings.append) as server:
        url, ca = f"{server.url}/v2/", str(pki.ca)
        assert requests.get(url, auth=READER, verify=ca).status_code == 200  # cached from here on
        replacement = tmp_path / "htpasswd.new"
        replacement.write_bytes(htpasswd_line("late", "late-secret") + htpasswd_line(*PUSHER))
        replacement.replace(htpasswd)  # as editors and `htpasswd` do: a new file under the name
        time.sleep(RELOAD_LOOK_SECONDS + 0.2)
        assert requests.get(url, auth=READER, verify=ca).status_code == 401  # removed: the cache does not keep it
        assert requests.get(url, auth=("late", "late-secret"), verify=ca).status_code == 200

        htpasswd.write_text("late:{SHA}not-bcrypt\n")
        time.sleep(RELOAD_LOOK_SECONDS + 0.2)
        assert requests.get(url, auth=("late", "late-secret"), verify=ca).status_code == 200  # kept
        assert any("line 1: not user:<bcrypt hash>" in line and "keeping the 2 users" in line for line in warnings)


def test_lines_of_the_htpasswd_tool(store: BlobStore, tmp_path: Path, pki: Pki) -> None:
    if shutil.which("htpasswd") is None:
        unavailable("htpasswd is not installed (apt-get install apache2-utils)")
    path = tmp_path / "htpasswd"
    subprocess.run(["htpasswd", "-cbB", str(path), "tool", "tool secret"], check=True, capture_output=True)
    subprocess.run(["htpasswd", "-bB", "-C", "10", str(path), "slow", "x" * 80], check=True, capture_output=True)
    with secure(store, pki, path) as server:
        url, ca = f"{server.url}/v2/", str(pki.ca)
        assert requests.get(url, auth=("tool", "tool secret"), verify=ca).status_code == 200
        assert requests.get(url, auth=("slow", "x" * 80), verify=ca).status_code == 200  # past bcrypt's 72 bytes
        assert requests.get(url, auth=("tool", "tool secreT"), verify=ca).status_code == 401


# -- real clients -----------------------------------------------------------------------------
def test_skopeo_pulls_and_pushes_with_roles(store: BlobStore, tmp_path: Path, pki: Pki, htpasswd: Path) -> None:
    image = cached(store, tmp_path, "docker.io/team/skopeo:1")
    certs = cert_dir(tmp_path, pki)
    with secure(store, pki, htpasswd) as server:
        source = f"docker://{server.host}/team/skopeo:1"
        out = tmp_path / "out"
        skopeo("copy", "--quiet", "--src-creds", creds(READER), "--src-cert-dir", str(certs), source, f"oci:{out}:x")
        assert json.loads(skopeo("inspect", f"oci:{out}:x").stdout)["Digest"] == image.manifest_digest

        wrong = fails("skopeo", "copy", "--src-creds", "reader:wrong", "--src-cert-dir", str(certs), source,
                      f"oci:{tmp_path / 'no'}:x")
        assert "401" in wrong or "unauthorized" in wrong.lower()
        untrusted = fails("skopeo", "copy", "--src-creds", creds(READER), source, f"oci:{tmp_path / 'no'}:x")
        assert "x509" in untrusted or "certificate" in untrusted

        pushed = build_image(tmp_path / "push", [random_layer(4000, 41), random_layer(20_000, 42)], tag="t")
        target = f"docker://{server.host}/team/pushed:1"
        denied = fails("skopeo", "copy", "--dest-creds", creds(READER), "--dest-cert-dir", str(certs),
                       f"oci:{pushed.layout}:t", target)
        assert "denied" in denied.lower() or "403" in denied
        assert store.image_descriptor("push:docker.io/team/pushed:1") is None
        skopeo("copy", "--quiet", "--dest-creds", creds(PUSHER), "--dest-cert-dir", str(certs),
               f"oci:{pushed.layout}:t", target)
        assert store.image_descriptor("push:docker.io/team/pushed:1")["digest"] == pushed.manifest_digest  # type: ignore[index]


def test_mutual_tls(store: BlobStore, tmp_path: Path, pki: Pki, htpasswd: Path) -> None:
    image = cached(store, tmp_path, "docker.io/team/mtls:1")
    with secure(store, pki, htpasswd, mutual=True) as server:
        source = f"docker://{server.host}/team/mtls:1"
        refused = fails("skopeo", "copy", "--src-creds", creds(READER), "--src-cert-dir", str(cert_dir(tmp_path, pki)),
                        source, f"oci:{tmp_path / 'no'}:x")
        assert "certificate" in refused or "tls" in refused.lower()
        with pytest.raises((ssl.SSLError, ConnectionError)):  # our own client, without a certificate
            context = ssl.create_default_context(cafile=str(pki.ca))
            with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
                if not tls.recv(100):  # TLS 1.3: the refusal arrives with the first read
                    raise ConnectionError("closed")
        out = tmp_path / "out"
        skopeo("copy", "--quiet", "--src-creds", creds(READER), "--src-cert-dir",
               str(cert_dir(tmp_path, pki, client=True)), source, f"oci:{out}:x")
        assert json.loads(skopeo("inspect", f"oci:{out}:x").stdout)["Digest"] == image.manifest_digest


@contextlib.contextmanager
def docker_trusts(host: str, pki: Pki) -> Iterator[None]:
    """The CA where dockerd looks for a registry's: /etc/docker/certs.d/<host:port>/ca.crt (removed after)."""
    top = Path("/etc/docker/certs.d")
    made_top = not top.exists()
    folder = top / host
    folder.mkdir(parents=True)
    shutil.copy(pki.ca, folder / "ca.crt")
    try:
        yield
    finally:
        shutil.rmtree(top if made_top else folder, ignore_errors=True)


@pytest.mark.daemon
def test_dockerd_login_and_pull(store: BlobStore, tmp_path: Path, pki: Pki, htpasswd: Path, dockerd: Daemon) -> None:
    """Off loopback when the machine has another address: dockerd skips TLS checks for 127.0.0.0/8
    (an insecure registry by default), so only there does its trust in certs.d's CA show."""
    image = cached(store, tmp_path, "docker.io/team/dockerauth:1", seed=51)
    env = {**os.environ, "DOCKER_HOST": dockerd.host, "DOCKER_CONFIG": str(tmp_path / "docker-config")}

    def docker(*args: str, password: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], env=env, input=password, capture_output=True, text=True,
                              timeout=120)

    with secure(store, pki, htpasswd, listen=f"{OUTSIDE or '127.0.0.1'}:0") as server:
        if OUTSIDE:
            untrusted = docker("login", server.host, "-u", READER[0], "--password-stdin", password=READER[1])
            assert untrusted.returncode != 0 and "certificate" in untrusted.stderr, untrusted.stderr
        with docker_trusts(server.host, pki):
            login_and_pull(docker, server.host, image.diff_ids, dockerd)


def login_and_pull(docker: Callable[..., subprocess.CompletedProcess[str]], host: str, diff_ids: list[str],
                   dockerd: Daemon) -> None:
    """docker login (a wrong password first), then a pull, as the private dockerd sees it."""
    name = f"{host}/team/dockerauth:1"
    anonymous = docker("pull", name)
    assert anonymous.returncode != 0 and ("no basic auth credentials" in anonymous.stderr
                                          or "unauthorized" in anonymous.stderr.lower()), anonymous.stderr
    assert docker("login", host, "-u", "reader", "--password-stdin", password="wrong").returncode != 0
    login = docker("login", host, "-u", READER[0], "--password-stdin", password=READER[1])
    assert login.returncode == 0, login.stderr
    try:
        pulled = docker("pull", name)
        assert pulled.returncode == 0, pulled.stderr
        inspect = dockerd.client().api.inspect_image(name)
        assert inspect["RootFS"]["Layers"] == diff_ids
    finally:
        docker("rmi", "-f", name)


def test_podman_pulls(store: BlobStore, tmp_path: Path, pki: Pki, htpasswd: Path, podman: Podman) -> None:
    image = cached(store, tmp_path, "docker.io/team/podman:1", seed=61)
    certs = cert_dir(tmp_path, pki)
    with secure(store, pki, htpasswd) as server:
        name = f"{server.host}/team/podman:1"
        wrong = podman("pull", "--creds", "reader:wrong", "--cert-dir", str(certs), name)
        assert wrong.returncode != 0 and ("401" in wrong.stderr or "unauthorized" in wrong.stderr.lower())
        pulled = podman("pull", "--creds", creds(READER), "--cert-dir", str(certs), name)
        assert pulled.returncode == 0, pulled.stderr
        inspect = json.loads(podman("image", "inspect", name).stdout)
        assert inspect[0]["RootFS"]["Layers"] == image.diff_ids


def test_containerd_pulls_through_a_mirror(store: BlobStore, tmp_path: Path, pki: Pki, htpasswd: Path,
                                            containerd: Containerd) -> None:
    """The hosts.toml an operator writes: serve as docker.io's mirror, with our CA and (mutual TLS) the
    client's pair; ctr adds ?ns=docker.io, and --user goes to the mirror."""
    image = cached(store, tmp_path, "docker.io/team/ctrpull:1", seed=71)
    with secure(store, pki, htpasswd, mutual=True) as server:
        hosts = tmp_path / "hosts"
        (hosts / "docker.io").mkdir(parents=True)
        (hosts / "docker.io" / "hosts.toml").write_text(
            'server = "https://registry-1.docker.io"\n'
            f'[host."https://{server.host}"]\n  capabilities = ["pull", "resolve"]\n  ca = "{pki.ca}"\n'
            f'  client = [["{pki.client_cert}", "{pki.client_key}"]]\n')

        def pull(user: tuple[str, str]) -> subprocess.CompletedProcess[str]:
            return containerd.ctr("images", "pull", "--snapshotter", "native", "--hosts-dir", str(hosts),
                                  "--user", creds(user), "docker.io/team/ctrpull:1")

        assert pull(("reader", "wrong")).returncode != 0
        pulled = pull(READER)
        assert pulled.returncode == 0, pulled.stderr
        listed = containerd.ctr("images", "ls").stdout
        assert f"docker.io/team/ctrpull:1 application/vnd.oci.image.manifest.v1+json {image.manifest_digest}" \
            in " ".join(listed.split())
        containerd.ctr("images", "rm", "docker.io/team/ctrpull:1")


# -- where serve may listen -------------------------------------------------------------------
def test_beyond_loopback_needs_tls_and_auth(store: BlobStore, pki: Pki, htpasswd: Path) -> None:
    context = server_context(str(pki.server_cert), str(pki.server_key))
    auth = Authenticator(str(htpasswd), [PUSHER[0]])

    def serve(**options: object) -> list[str]:
        warnings: list[str] = []
        make_server(store, ServeOptions(listen="0.0.0.0:0", warn=warnings.append,
                                        **options)).server_close()  # type: ignore[arg-type]
        return warnings

    pushes_anonymously = {"allow_push": True, "tls": context, "insecure_listen": True}
    for refused in [{}, {"tls": context}, {"auth": auth}, pushes_anonymously]:
        with pytest.raises(LayerhoardError, match="refusing"):
            serve(**refused)
    assert serve(tls=context, auth=auth, allow_push=True) == []
    warned = serve(insecure_listen=True)
    assert len(warned) == 1 and "without TLS (--tls-cert, --tls-key) and authentication" in warned[0]
    assert serve(auth=auth, insecure_listen=True, allow_push=True) == [
        "warning: listening on 0.0.0.0:0 without TLS (--tls-cert, --tls-key) (--insecure-listen)"]
    make_server(store, ServeOptions(listen="localhost:0", allow_push=True)).server_close()  # loopback: as before


def test_cli(store: BlobStore, tmp_path: Path, pki: Pki, htpasswd: Path) -> None:
    cached(store, tmp_path, "docker.io/team/cli:1")
    refused = run_cli(store.root, "serve", "--listen", "0.0.0.0:0")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "--insecure-listen" in refused.stderr
    pushes = run_cli(store.root, "serve", "--listen", "0.0.0.0:0", "--allow-push", "--insecure-listen")
    assert pushes.returncode == 1 and "refusing --allow-push" in pushes.stderr
    missing = run_cli(store.root, "serve", "--tls-cert", str(tmp_path / "nope.crt"), "--tls-key", str(pki.server_key))
    assert missing.returncode == 1 and missing.stderr.strip().endswith("nope.crt: No such file or directory")
    mismatch = run_cli(store.root, "serve", "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.client_key))
    assert mismatch.returncode == 1 and "the key does not belong to the certificate" in mismatch.stderr
    unsaid = run_cli(store.root, "serve", "--htpasswd", str(htpasswd), "--allow-push")
    assert unsaid.returncode == 2 and "--push-users" in unsaid.stderr

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "--cache-dir", str(store.root), "serve",
                                "--listen", f"0.0.0.0:{port}", "--tls-cert", str(pki.server_cert),
                                "--tls-key", str(pki.server_key), "--htpasswd", str(htpasswd), "--allow-push",
                                "--push-users", "pusher"], stderr=subprocess.PIPE, cwd=REPO_ROOT)
    try:
        url = f"https://127.0.0.1:{port}/v2"
        wait_until(lambda: requests.get(f"{url}/", verify=str(pki.ca), timeout=1).status_code == 401, 20, "serve")
        assert requests.get(f"{url}/team/cli/tags/list", auth=READER, verify=str(pki.ca)).json()["tags"] == ["1"]
        assert requests.post(f"{url}/team/cli/blobs/uploads/", auth=READER, verify=str(pki.ca)).status_code == 403
        assert requests.post(f"{url}/team/cli/blobs/uploads/", auth=PUSHER, verify=str(pki.ca)).status_code == 202
    finally:
        process.terminate()
        stderr = process.communicate(timeout=10)[1].decode()
    assert f"on https://0.0.0.0:{port}" in stderr and "basic auth" in stderr and "warning" not in stderr
