"""Who may use ``serve``: HTTP basic authentication from an htpasswd file, and two roles.

    auth = Authenticator("/etc/layerhoard/htpasswd", push_users=["ci"])
    user = auth.check("PUT", "/v2/team/app/manifests/1", headers.get("Authorization"))

Every user in the file may read (pull); the users named in ``push_users`` may also push (uploads,
manifest PUTs, DELETE: anything but GET and HEAD, and anything under ``/blobs/uploads/``). No or
wrong credentials raise :class:`Unauthorized` (401, with the Basic challenge); a read-only user
asking to write gets 403 DENIED. :func:`check_listen` refuses to expose serve beyond loopback
without TLS and authentication.

The file is what ``htpasswd -B`` writes: ``user:$2y$…`` lines, bcrypt only (other hash kinds are
refused by line number). It is looked at again at most once a second and re-read when its mtime,
size or inode changed; a broken new version is reported and the users read before are kept.

Costs: one bcrypt check (2 ms at ``htpasswd -B``'s cost 5, about 100 ms at cost 12) per user and
password, then none for CACHE_SECONDS: every request of a pull carries the header, so the result is
cached per (user, stored hash), as an HMAC of the password under a key made at start-up. The
plain password is never kept, and a changed hash (new password, user removed) misses the cache at
once. Unknown users are checked against a decoy hash so timing does not tell who exists.

Trusted: the htpasswd file the operator names. Not trusted: the Authorization header (parsed
strictly, bounded, compared in constant time).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable

import bcrypt

from cache.errors import LayerhoardError
from cache.server.errors import RegistryError

REALM = "layerhoard"
CHALLENGE = {"WWW-Authenticate": f'Basic realm="{REALM}"'}
CACHE_SECONDS = 300.0  # how long one bcrypt check answers for a (user, hash, password)
RELOAD_LOOK_SECONDS = 1.0  # at most one stat of the htpasswd file per this many seconds
BCRYPT_MAX_PASSWORD = 72  # bcrypt reads no further; htpasswd and Go's bcrypt cut there too
_MAX_TOKEN = 4096  # a Basic token longer than this is not a user name and password
_BCRYPT = re.compile(rb"\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}")
_READ_ONLY_METHODS = ("GET", "HEAD")


class Unauthorized(RegistryError):
    """401 UNAUTHORIZED; ``headers`` holds the challenge clients need to send credentials."""

    def __init__(self, message: str) -> None:
        super().__init__("UNAUTHORIZED", message, status=401)
        self.headers = dict(CHALLENGE)


def read_htpasswd(path: str) -> dict[str, bytes]:
    """user -> bcrypt hash; a missing file or a line that is not ``user:<bcrypt>`` is one line."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(16 << 20)
    except OSError as error:
        raise LayerhoardError(f"cannot read --htpasswd {path}: {error.strerror or error}") from None
    users: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        name, sep, stored = line.partition(b":")
        if not sep or not name or not _BCRYPT.fullmatch(stored):
            raise LayerhoardError(f"--htpasswd {path}, line {number}: not user:<bcrypt hash>; "
                                  "make entries with `htpasswd -B`")
        try:
            users[name.decode("utf-8")] = stored
        except UnicodeDecodeError:
            raise LayerhoardError(f"--htpasswd {path}, line {number}: the user name is not UTF-8") from None
    if not users:
        raise LayerhoardError(f"--htpasswd {path} names no users")
    return users


def basic_credentials(header: str | None) -> tuple[str, bytes] | None:
    """(user, password) from ``Authorization: Basic …``, or None for anything else."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "basic" or len(token) > _MAX_TOKEN:
        return None
    try:
        user, sep, password = base64.b64decode(token, validate=True).partition(b":")
        return (user.decode("utf-8"), password) if sep else None
    except (binascii.Error, UnicodeDecodeError):
        return None


def needs_push(method: str, path: str) -> bool:
    """Whether a request writes: any method but GET and HEAD, and upload sessions' status GETs."""
    return method not in _READ_ONLY_METHODS or "/blobs/uploads/" in path.partition("?")[0]


class Authenticator:
    """The users of one htpasswd file, the push role, and the cache of verified passwords."""

    def __init__(self, path: str, push_users: Iterable[str] = (), warn: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.push_users = frozenset(push_users)
        self._warn = warn
        self._key = secrets.token_bytes(32)  # per process: cached HMACs mean nothing elsewhere
        self._lock = threading.Lock()
        self._stamp = _stamp(path)
        self._users = read_htpasswd(path)
        self._next_look = time.monotonic() + RELOAD_LOOK_SECONDS
        self._verified: dict[tuple[str, bytes], tuple[bytes, float]] = {}  # (user, hash) -> (HMAC, until)

    def users(self) -> frozenset[str]:
        return frozenset(self._current_users())

    def check(self, method: str, path: str, authorization: str | None) -> str:
        """The user a request comes from, when that user may do what it asks; else raise."""
        user = self.authenticate(authorization)
        if needs_push(method, path) and user not in self.push_users:
            raise RegistryError("DENIED", "this user may only pull; pushes need a user named in --push-users")
        return user

    def authenticate(self, authorization: str | None) -> str:
        credentials = basic_credentials(authorization)
        if credentials is None:
            raise Unauthorized("authentication required")
        user, password = credentials
        users = self._current_users()
        stored = users.get(user)
        if stored is None:
            bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], next(iter(users.values())))  # decoy: same cost
            raise Unauthorized("wrong user name or password")
        if not self._verify(user, password, stored):
            raise Unauthorized("wrong user name or password")
        return user

    def _verify(self, user: str, password: bytes, stored: bytes) -> bool:
        tag = hmac.new(self._key, password, "sha256").digest()
        now = time.monotonic()
        with self._lock:
            cached = self._verified.get((user, stored))
        if cached is not None and cached[1] > now and hmac.compare_digest(cached[0], tag):
            return True
        if not bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], stored):  # constant time inside bcrypt
            return False
        with self._lock:
            self._verified = {key: entry for key, entry in self._verified.items() if entry[1] > now}
            self._verified[(user, stored)] = (tag, now + CACHE_SECONDS)
        return True

    def _current_users(self) -> dict[str, bytes]:
        """The users, re-read when the file changed (looked at no more than once a second)."""
        now = time.monotonic()
        if now < self._next_look:
            return self._users
        with self._lock:
            if now >= self._next_look:
                self._next_look = now + RELOAD_LOOK_SECONDS
                self._reload_if_changed()
            return self._users

    def _reload_if_changed(self) -> None:
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return
        self._stamp = stamp  # a broken version is reported once, not every second
        try:
            self._users = read_htpasswd(self.path)
        except LayerhoardError as error:
            self._say(f"warning: {error}; keeping the {len(self._users)} users read before")
            return
        self._say(f"--htpasswd {self.path} re-read: {len(self._users)} users")

    def _say(self, message: str) -> None:
        if self._warn is not None:
            self._warn(message)


def _stamp(path: str) -> tuple[int, int, int, int] | None:
    """What tells a changed file: editors and `htpasswd` replace it (new inode) or rewrite it."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino, info.st_dev


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) reaches this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(str(address)).is_loopback for address in addresses)


def check_listen(listen: str, host: str, *, tls: bool, auth: bool, allow_push: bool, insecure: bool) -> str | None:
    """Refuse to serve beyond loopback without TLS and authentication (LayerhoardError), unless
    ``insecure``; then the warning line to print. Pushes from beyond loopback always need auth."""
    if is_loopback(host):
        return None
    if allow_push and not auth:
        raise LayerhoardError(f"refusing --allow-push on {listen}, which is not loopback, without --htpasswd: "
                              "anyone who reaches it could replace the images it serves")
    missing = " and ".join(what for what, there in (("TLS (--tls-cert, --tls-key)", tls),
                                                    ("authentication (--htpasswd)", auth)) if not there)
    if not missing:
        return None
    if not insecure:
        raise LayerhoardError(f"refusing to listen on {listen}, which is not loopback, without {missing}; "
                              "--insecure-listen to do it anyway")
    return f"warning: listening on {listen} without {missing} (--insecure-listen)"
