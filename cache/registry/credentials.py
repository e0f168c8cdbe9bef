"""Registry credentials as Docker keeps them: ~/.docker/config.json, credsStore, credHelpers.

Lookup order for a registry host, as the docker CLI does it: credHelpers[host], then auths[host]
(inline base64 ``user:password``), then the credsStore helper. Docker Hub's key is
``https://index.docker.io/v1/``.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cache.errors import SourceError

DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str  # a password or an identity token

    def __repr__(self) -> str:  # never print a secret
        return f"Credentials(username={self.username!r}, password=***)"


def _config_path() -> Path:
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"


def _load_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise SourceError(f"cannot read Docker credentials {path}: {error}") from None
    return data if isinstance(data, dict) else {}


def _keys_for(host: str) -> tuple[str, ...]:
    if host in DOCKER_HUB_KEYS:
        return DOCKER_HUB_KEYS
    return (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/")


def _from_helper(helper: str, host: str) -> Credentials | None:
    import subprocess  # only for a helper named in config.json: keeps every pull's start-up shorter

    program = f"docker-credential-{helper}"
    try:
        result = subprocess.run([program, "get"], input=host.encode(), capture_output=True, timeout=30)
    except FileNotFoundError:
        raise SourceError(f"credential helper {program} is not installed (named in Docker's config.json)") from None
    except subprocess.TimeoutExpired:
        raise SourceError(f"credential helper {program} did not answer within 30 s") from None
    if result.returncode != 0:
        return None  # "credentials not found": anonymous access may still work
    try:
        data = json.loads(result.stdout)
    except ValueError:
        raise SourceError(f"credential helper {program} printed something that is not JSON") from None
    username, secret = data.get("Username"), data.get("Secret")
    if not isinstance(username, str) or not isinstance(secret, str) or not secret:
        return None
    return Credentials(username, secret)


def _from_auth_entry(entry: Any) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("identitytoken"):
        return Credentials("<token>", str(entry["identitytoken"]))
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            username, _, password = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return Credentials(username, password)
    if entry.get("username") and entry.get("password"):
        return Credentials(str(entry["username"]), str(entry["password"]))
    return None


def lookup(host: str, config_path: Path | None = None) -> Credentials | None:
    """Credentials for ``host`` (like ``ghcr.io`` or ``127.0.0.1:5000``), or None for anonymous."""
    config = _load_config(config_path or _config_path())
    keys = _keys_for(host)
    helpers = config.get("credHelpers") or {}
    for key in keys:
        if isinstance(helpers, dict) and isinstance(helpers.get(key), str):
            return _from_helper(helpers[key], keys[0])
    auths = config.get("auths") or {}
    for key in keys:
        if isinstance(auths, dict) and key in auths:
            found = _from_auth_entry(auths[key])
            if found:
                return found
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        return _from_helper(store, keys[0])
    return None
