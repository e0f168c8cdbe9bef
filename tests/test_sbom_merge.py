"""Merge rules on layered images: deletions, opaque folders, replaced folders, rewritten databases,
facts in other layers (os-release, copyright), distroless status.d, rpm, and layer attribution."""

from __future__ import annotations

import base64
from pathlib import Path

import zstandard
from packageurl import PackageURL

from cache.store.blobstore import BlobStore
from tests.test_sbom_support import by_name, sbom_of, tar_with

SITE = "usr/lib/python3/dist-packages"
OS_RELEASE = b'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'


def stanza(name: str, version: str, status: str = "install ok installed") -> str:
    return f"Package: {name}\nStatus: {status}\nArchitecture: amd64\nVersion: {version}\nDescription: x\n\n"


def status(*stanzas: str) -> bytes:
    return "".join(stanzas).encode()


def dist_info(name: str, version: str) -> dict[str, bytes]:
    return {f"{SITE}/{name}-{version}.dist-info/METADATA":
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nLicense: MIT\n\nreadme\n".encode()}


def test_package_removed_in_a_later_layer_is_gone_and_attribution_follows_versions(store: BlobStore,
                                                                                   tmp_path: Path) -> None:
    base = tar_with({"var/lib/dpkg/status": status(stanza("bash", "5.2-1"), stanza("curl", "7.88-1"),
                                                   stanza("zlib1g", "1.2.13-1")),
                     "usr/lib/os-release": OS_RELEASE})
    # apt-get remove curl; apt-get install --only-upgrade zlib1g; apt-get install jq: status rewritten whole
    removed = stanza("old", "1", "deinstall ok config-files")  # dpkg -l "rc": not installed
    upper = tar_with({"var/lib/dpkg/status": status(stanza("bash", "5.2-1"), stanza("zlib1g", "1.3-1"),
                                                    stanza("jq", "1.6-2"), removed)})
    untouched = tar_with({"srv/data.txt": b"unrelated"})
    sbom = sbom_of(store, tmp_path / "layout", [base, upper, untouched])
    deb = by_name(sbom, "deb")
    assert {(p.name, p.version) for p in deb.values()} == {("bash", "5.2-1"), ("zlib1g", "1.3-1"), ("jq", "1.6-2")}
    layers = [layer.diff_id for layer in sbom.layers]
    assert deb["bash"].layer == layers[0]  # unchanged since the base: the base introduced it
    assert deb["zlib1g"].layer == layers[1]  # upgraded: the upgrading layer
    assert deb["jq"].layer == layers[1]


def test_dist_info_deleted_by_whiteout(store: BlobStore, tmp_path: Path) -> None:
    base = tar_with({**dist_info("six", "1.16.0"), **dist_info("idna", "3.4")})
    delete = tar_with({"tmp/x": b""}, whiteouts=(f"{SITE}/six-1.16.0.dist-info",))
    sbom = sbom_of(store, tmp_path / "layout", [base, delete])
    assert {p.name for p in sbom.packages} == {"idna"}


def test_opaque_folder_hides_everything_below(store: BlobStore, tmp_path: Path) -> None:
    base = tar_with({**dist_info("six", "1.16.0"), **dist_info("idna", "3.4")})
    fresh = tar_with(dist_info("attrs", "23.1.0"), opaque=(SITE,))
    sbom = sbom_of(store, tmp_path / "layout", [base, fresh])
    assert {(p.name, p.layer) for p in sbom.packages} == {("attrs", sbom.layers[1].diff_id)}


def test_file_replacing_a_folder_removes_its_packages(store: BlobStore, tmp_path: Path) -> None:
    base = tar_with({**dist_info("six", "1.16.0"), **dist_info("idna", "3.4"),
                     "app/node_modules/ms/package.json": b'{"name": "ms", "version": "2.1.3"}'})
    replace = tar_with({f"{SITE}/six-1.16.0.dist-info": b"now a file", "app/node_modules": b"also a file"})
    sbom = sbom_of(store, tmp_path / "layout", [base, replace])
    assert {p.name for p in sbom.packages} == {"idna"}


def test_os_release_in_another_layer_and_doc_deleted(store: BlobStore, tmp_path: Path) -> None:
    packages = tar_with({"var/lib/dpkg/status": status(stanza("bash", "5.2-1"), stanza("libc6", "2.36-9")),
                         "usr/share/doc/bash/copyright": b"Files: *\nLicense: GPL-3+\n",
                         "usr/share/doc/libc6/copyright": b"Files: *\nLicense: LGPL-2.1+\n"})
    release = tar_with({"usr/lib/os-release": OS_RELEASE}, symlinks={"etc/os-release": "../usr/lib/os-release"})
    sbom = sbom_of(store, tmp_path / "one", [packages, release])
    deb = by_name(sbom, "deb")
    assert PackageURL.from_string(deb["bash"].purl).qualifiers["distro"] == "debian-12"
    assert deb["bash"].licenses == ["GPL-3+"] and deb["libc6"].licenses == ["LGPL-2.1+"]
    slim = tar_with({"tmp/x": b""}, whiteouts=("usr/share/doc",))  # rm -rf /usr/share/doc
    sbom = sbom_of(store, tmp_path / "two", [packages, release, slim], name="test/slim:1")
    assert [p.licenses for p in sbom.packages] == [[], []]
    assert {p.name for p in sbom.packages} == {"bash", "libc6"}


def test_no_os_release_means_no_distro_qualifier(store: BlobStore, tmp_path: Path) -> None:
    sbom = sbom_of(store, tmp_path / "layout", [tar_with({"var/lib/dpkg/status": status(stanza("bash", "5.2-1"))})])
    assert sbom.distro is None
    assert "distro" not in PackageURL.from_string(sbom.packages[0].purl).qualifiers


def test_distroless_status_d_and_symlinked_doc_folder(store: BlobStore, tmp_path: Path) -> None:
    base = tar_with({"var/lib/dpkg/status.d/base-files": status(stanza("base-files", "12.4")).rstrip(b"\n"),
                     "var/lib/dpkg/status.d/base-files.md5sums": b"d41d8cd98f00b204e9800998ecf8427e  etc/x\n",
                     "var/lib/dpkg/status.d/libssl3": status(stanza("libssl3", "3.0.11-1")),
                     "usr/share/doc/libssl3/copyright": b"License: Apache-2.0\n",
                     "etc/os-release": OS_RELEASE},
                    symlinks={"usr/share/doc/base-files": "libssl3"})
    upper = tar_with({"var/lib/dpkg/status.d/tzdata": status(stanza("tzdata", "2024a-0"))})
    sbom = sbom_of(store, tmp_path / "layout", [base, upper])
    deb = by_name(sbom, "deb")
    assert {(p.name, p.version) for p in deb.values()} == {("base-files", "12.4"), ("libssl3", "3.0.11-1"),
                                                           ("tzdata", "2024a-0")}
    assert deb["tzdata"].layer == sbom.layers[1].diff_id and deb["libssl3"].layer == sbom.layers[0].diff_id
    assert deb["base-files"].licenses == ["Apache-2.0"]  # reached through the symlinked doc folder


def test_apk_database_top_copy_wins(store: BlobStore, tmp_path: Path) -> None:
    def installed(*packages: tuple[str, str]) -> bytes:
        return "".join(f"C:Q1x=\nP:{n}\nV:{v}\nA:x86_64\nL:MIT\no:{n}\n\n" for n, v in packages).encode()

    release = b"ID=alpine\nVERSION_ID=3.20.3\n"
    base = tar_with({"lib/apk/db/installed": installed(("musl", "1.2.5-r0"), ("busybox", "1.36.1-r29")),
                     "etc/os-release": release})
    upper = tar_with({"lib/apk/db/installed": installed(("musl", "1.2.5-r0"))})  # apk del busybox
    sbom = sbom_of(store, tmp_path / "layout", [base, upper])
    assert [(p.name, p.purl) for p in sbom.packages] == [
        ("musl", "pkg:apk/alpine/musl@1.2.5-r0?arch=x86_64&distro=alpine-3.20.3")]
    assert sbom.packages[0].layer == sbom.layers[0].diff_id


# Made by rpm 4.18 itself (Debian's rpm package), not by us: two noarch packages built with
# rpmbuild from two-line specs, then `rpm --initdb --dbpath D && rpm -i --justdb --nodeps --dbpath D *.rpm`;
# `rpm -qa --dbpath D` lists "lhtest 2:1.2.3-4.el9 noarch (MIT and BSD)" and "other-pkg 0.9-1 noarch".
# The file is the database as rpm left it (WAL mode), zstd-compressed and base64-encoded.
RPMDB_ZST_B64 = """
KLUv/aAAUAMA9B4AZiWJPQDT5vxdVTkABaVAqaIAQEFBFaCFSFrOjcdJAStG6bjb8vscrbJrUiMJqrpbVVjRADG6UZmotSiAUFRC
RKZ3AHsAfQCb52y1dfO1xtWbq9h/bD+JYE94Pdhj3diLXy+dExqOv/Mv+CR5yFkoJiRR1pRZhCNaMGnMjpyTF0Y+oxzphnRS6ilV
mIBMF6efE0fZoFSAoBTs/z8ohf9fhH0OH3pcRvzE/4f+f++LJ8lXPW27rLBINNndbXMevLIbr7ZT3UbRDcIxUhxCSYmxC9lhscVw
6b9hC4PPB222Rs5f6waDrGsc4hAabLqcLWHiJwS254tZLJ3P11GGGjuQTfGxO3Tz+C3lKs/g6pYp7BDOsVMNHFd1GS6/VuUafE1x
W8gyPNmzXO4j3asu3egKwld0v/QUhY2iATn3SK0Xa63zKKGkwkIsagixRrVJSk2lkwlVbFlWunpCAUClAFT917YQi7sUSoBKIGDA
9bVBkyHxJkAge3EspvMAbRUjSCnobg8SjT0d6ohjFDqvhhp9MQymcwGEgYimswayOhDYFlfSEcMmdDZAOXi9+Dx1ZqHHVoM2D0QC
o/9X/b8O/s//b/H/P/Jf9v/lzJfky5ymPzDJ/0exXv+/e8Rgb7amvCPF6daPWoha68CpO5J2xCqymULIN+zGku62wRVjCGZg0Ca5
S0vWi1crnUOtVJS2eBXTZrlhwl7scuksWsguk2TUjawNH7ErQgeA5KgRuhERkZkUFJQyrAFwRsZoxqQDgiAehmEMCdKNTEREYkbK
KSg/lwMQFrjoRJGCYK94HsiPsoLoPpvJuac/Cyo4jBk748HzIFBZjMkrMIGr1vQAhfYinsA/I0if0snHGBX4eSJZOuCSsRl03ESY
cgbxHOmi2UE4PNHlgjoumvWQZexwyUuuO7b41zxuT5IckrujA3hz41egaEd8ZLCuXKTLj0Svh9dg4YTBbWMYSudJmIENx/ptDz+V
0wlU2ejAicmy4swlzBo/vjSDhi0i5uKRZvFK7Xbj1TY+UGKyrDhzCTO7Pr405P4tRbh0FGIsM2P25rp7EZzZLS7OZOKscWRKRupU
DEkwn3ijtOzcXmn8H3miTP7NkOyMMu/kY4ZzJY7bNx8z7Zj2hQhi6MfLPNy46KAnEFG2OuCgCXp5+cOOLmWaUtYN3XkJ6+gr19uO
EfYNJUILkWMUbI680LRALYRdIubgFvbV6uaBnPIvhBzTwyKjKxK9j/6p1NACmE0zkTH2336LOPtwEn2whq7+dVPndIY5K21gfvfZ
bvoZUH2Mn7UllaLyQlq9/MpUaqFHRD2ei1MDhCYAFjnFRuAYNWMENDJHP0eH4jKgJxoBGDEThBrMMELoGCUIy9p22/8h1f7K3tr4
IbaRCZOWCSm7e0uRy6jjg4TuZoXqSw/ylRwRIlPIAKMAqQAmz3TPbddETfYUWpzGvdrZQtkDK6dQLvJOzynnFFgnDuJmsfZKBZTC
sdEn1AuQamUKVyzTtvmEq5wKegsWQSfUxX0aT+FWsYJMPIeEBhoxKNOU+BDiQEI/hLCf//r//xi1TffWVE3cW6zd8kEdR4VPip4T
CrISFxUDlwGiklQCAImUMp7AcHJBDt0gVN5AMIOSGQ/skhhA6iwosJyIYpOEAY0ZDMaClgyKmGwEF50tGbLcI1rlZoqNFAhRGhgt
yIomFO3JFYAIC5ajddtQc7ZqjUFKxbHeDhzztd33gThWZ4YIHniHDR0yRBgUmSADIfupbOnS5d81f52+oKYV3NZWzrt6zBu0HRVD
qyn+6Ge15u5XP3Bz35f3eHWtl4r2uLu58y6XL6c/0RPrBe22eMR6BGvNWWMR53GDeGtL8zfuDH53zJgLuY3tmA9uY4vFvwXlk97i
hq86veh56qQK37PRVBHbL1TS/1MTyNEU9LyNsf71PjFj74pgHj26QY92GRRDbLtuj5obUn0Y+cBQ+sCj4Mq3JIYXQZ4Lt22r3cqo
bZXaqKluOjsdzh2b6Ht+VNtq+7RSO9e5h+dcCjmQq456hUs4zbUL+PUtPzqVG93Ji1zGChDfcHybSzjNG1zmB2B62PzPufFMqqjh
iXj0MthZEawi/kIvX7zF3XXd3Xdr7+KKNai/j1Kd8Q2zpR/29OYyDukDWePBLEge7AbJzDGf44Wk8WTy5iJJnuzacEwj8zhI2k0m
Yy6SvMmuBEcmlPkjWkwmSdcPJvSDJGOySyuaR/NF89I0DLsuKTEAR1PL/JFWgxGQNdhs0kSryeS8SLImuwowmVPmmbwUeEl7gMHI
GezlyiSaJ3ohaQ8yWbpIcia7BgzNKvND8ypJB5iEsTJvZdpb61cx14l1tCAetb5Wh1zYXVrFsbvhFsHQip7lKLcz3t72LhiA5KjR
WExGShSkjKQgGQ7hKZGqoSDSpAPCIBJmNQYZJxADiSRGJP5EAokRkSCrDSpVUQB7jaG81hBGv4KuVHyhui7lI8NQhj/gystLxX2J
nx9GBp4o9yN8AESTf0QwAAyApcw/8A0C4AC4RJt98h6AVMT9D4BU2gE4AP3BJpsuAFnpCyED4KMCV/kTAfIWzhe2AeiN+V+0EBK+
UuVmMNmqC0AtN9UnYQDSjiYP1DGwoaPL8JWTljHkmBWxAry9juUAFgyAlPuEUQBhToeKaPjUorJKR/BzxXUamtOtS/Cr3enRZlh2
RPgzwdD1Tr9QR1CAnQaMXNaLKZSGw3gYD+Nh3MEgHsZDXM3eZEtCd/N+3s+7dnuw/nlNIqRBUpeqM/QN+fQz6y9OfsFRUh68Tgyz
UD/qQwWaKov7YxHeJ51741nJ26kTZdPI4DoTfvI5AP49ywHeOYlVU9jRvyAhketlI4ar7X71H/0A60HAu3feBNlW8FFoHAcb8fx4
7/AujpcBWzvnW6UmAnprGLvJ9kQBxAF+troPFVXgGbI2Nw5MnvOJB1mYUQ5OkzwnyFjsXbMX7EUbKA+gjQFdFADEEA0ZA4gAD44P
PA6eZABcCAAHWTEhICkNC8sAGQCvAAtvCxAKYAm8CQwIpwfoB28G8wYlBZcFBgRNA9wDaAK1AkwB4AEkAK8PiA7VDmwOAA2zcy0H
FzkpAYERdXBwbGVtZW4wOSwHFykpAYItLytndC4qLSkscignUmVjb21tZW5kK28nBxc3DSo2JgcXJycBgispgQ4lBxdHNQGBLWFu
c2ZpbGV0KIELJAcXRSlLIwcXNTUBgjkmeiIHFz0rAYEZRiV3IQcXOxUkPCAHgi8iRmMfBxcAAAHoSzIGW3RhdDE1KHRibCwsKWox
RW5oYW5jZTQwMy8ydi4pMQEP5wAP5xcBBBUlE05hbWUyIDGAqahhPhlN0uyfAeGQgGCHjCaiLagDciAYAjIEFIY2iGKEjIzIiIiE
Ep+EFqTgcnZBiKr9vBsAGYC3/uPb/wEwt/wPgHQIgAaA1iUYUJRPgG6/OsFIG/vd7SYHTljJ5euNrxvKOd2UrTTCtVtp8PDDeddm
8j363DuGY2x0TlGfABtmHkrqeXfIYgGGDwcVqaMRGvlvEbwMRbQWLrSPsKiNsWCXy3Y+qpotz7P9m9t/gifhWNX63kyV+HkVJLxZ
o0ov8F7gxvHblgpC3SYTAW0oKh3orki5vt99m4CZekoDqM/MgqiZsoEIkqHh/58ajFQM8+biJ5OksQEmoE23320mv42M/iRR8/6X
VIRa8upX2LaouaGc003ZSiNcu5UGDz+cd20m38Ou/ztp4Lkp9y7oQLlp+BCq6bJLFOXL/EkTrLICl/JmkDEoZ3IC0F8l8Or/ANjT
9yu9fACAoi7ydOeiyFN4ZhF5+JrdH0+J3v8PtuE8lXx6LXh+/jNOMz0="""


def test_rpm_sqlite_database_written_by_rpm(store: BlobStore, tmp_path: Path) -> None:
    rpmdb = zstandard.ZstdDecompressor().decompress(base64.b64decode("".join(RPMDB_ZST_B64.split())),
                                                   max_output_size=1 << 22)
    layer = tar_with({"var/lib/rpm/rpmdb.sqlite": rpmdb,
                      "etc/os-release": b'ID="rhel"\nVERSION_ID="9.4"\n'})
    sbom = sbom_of(store, tmp_path / "layout", [layer])
    rpms = by_name(sbom, "rpm")
    assert {(p.name, p.version) for p in rpms.values()} == {("lhtest", "1.2.3-4.el9"), ("other-pkg", "0.9-1")}
    assert rpms["lhtest"].licenses == ["MIT and BSD"]
    purl = PackageURL.from_string(rpms["lhtest"].purl)
    assert (purl.namespace, purl.qualifiers["epoch"], purl.qualifiers["distro"]) == ("redhat", "2", "rhel-9.4")
    assert purl.qualifiers["arch"] == "noarch"
