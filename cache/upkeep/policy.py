"""The standing prune policy: ``<cache>/config.json``, applied after writes in the background.

    layerhoard config set max-size 50G        # the store may hold 50 GiB of blobs
    layerhoard config set min-free-space 10G  # keep 10 GiB free on its file system
    layerhoard config set keep-duration 7d    # never evict an image used in the last 7 days

After a command that wrote to the store (pull, warm), :func:`apply_after_write` makes a cheap
check (nothing at all without a policy; no blob is looked at when the command fetched nothing;
one statvfs for min-free-space) and, only when a limit is exceeded, starts a detached
``layerhoard prune --policy`` process, so the write that triggered it is not slowed down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cache.errors import LayerhoardError
from cache.store.blobstore import BlobStore
from cache.store.fsutil import file_lock, write_atomic
from cache.units import parse_duration, parse_size

if TYPE_CHECKING:
    from cache.upkeep.prune import PrunePolicy

CONFIG_FILE = "config.json"


def _check_remote(value: str) -> str:
    from cache.remote.address import check_remote  # here, not at the top: every pull loads this module

    return check_remote(value)


def _check_remote_mode(value: str) -> str:
    from cache.remote.address import check_mode

    return check_mode(value)


KEYS: dict[str, Callable[[str], float | str]] = {
    "max-size": parse_size,
    "min-free-space": parse_size,
    "keep-duration": parse_duration,
    # the team's remote tier (cache/remote/address.py): read by the commands that pull, not by prune
    "remote": _check_remote,
    "remote-mode": _check_remote_mode,
}


class ConfigError(LayerhoardError):
    """An unknown key, a bad value, or a config.json that is not ours."""


def config_path(root: Path) -> Path:
    return root / CONFIG_FILE


def load_config(root: Path) -> dict[str, str]:
    """The settings as written by ``config set`` (values as the user wrote them)."""
    path = config_path(root)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except ValueError as error:
        raise ConfigError(f"{path} is not valid JSON ({error}); fix it or remove it") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"{path} is not a layerhoard config (an object of strings)")
    for key, value in data.items():
        validate(key, value)
    return dict(data)


def validate(key: str, value: str) -> float | str:
    """The parsed value; ConfigError naming the problem for an unknown key or a bad value."""
    parser = KEYS.get(key)
    if parser is None:
        raise ConfigError(f"unknown setting {key!r}: use one of {', '.join(KEYS)}")
    try:
        return parser(value)
    except ValueError as error:
        raise ConfigError(f"{key}: {error}") from None


def set_value(root: Path, key: str, value: str) -> None:
    validate(key, value)
    _update(root, lambda config: config.__setitem__(key, value.strip()))


def unset_value(root: Path, key: str) -> bool:
    if key not in KEYS:
        validate(key, "")
    removed: list[bool] = []
    _update(root, lambda config: removed.append(config.pop(key, None) is not None))
    return bool(removed and removed[0])


def _update(root: Path, change: Callable[[dict[str, str]], object]) -> None:
    """Read, change, and atomically replace config.json under its lock (concurrent sets both land)."""
    with file_lock(root / "locks" / "config.lock"):
        config = load_config(root)
        change(config)
        write_atomic(config_path(root), json.dumps(config, indent=2, sort_keys=True).encode() + b"\n")


def policy_limits(config: dict[str, str]) -> dict[str, float]:
    values = {key: validate(key, value) for key, value in config.items()}
    return {key: value for key, value in values.items() if not isinstance(value, str)}


def standing_rule(root: Path, rule: PrunePolicy) -> PrunePolicy | None:
    """``rule`` with the limits it leaves unset taken from the standing policy (``prune --policy``,
    what the background prune runs); None when the policy sets no size limit (nothing to do)."""
    limits = policy_limits(load_config(root))
    if not {"max-size", "min-free-space"} & set(limits):
        return None

    def limit(given: int | None, key: str) -> int | None:
        return given if given is not None else (int(limits[key]) if key in limits else None)

    keep_duration = rule.keep_duration if rule.keep_duration is not None else limits.get("keep-duration")
    return dataclasses.replace(rule, max_size=limit(rule.max_size, "max-size"),
                               min_free_space=limit(rule.min_free_space, "min-free-space"),
                               keep_duration=keep_duration)


# -- applying after writes ------------------------------------------------------------------------
def over_limit(store: BlobStore, wrote_bytes: int) -> bool:
    """Whether the standing policy wants a prune now. Cheap: reads config.json; sums blob sizes only
    when there is a max-size and this command wrote something (a cached pull cannot grow the store)."""
    try:
        limits = policy_limits(load_config(store.root))
    except ConfigError:
        return False  # a broken config never fails a pull; `config get` reports it
    if "min-free-space" in limits:
        stat = os.statvfs(store.root)
        if stat.f_bavail * stat.f_frsize < limits["min-free-space"]:
            return True
    if "max-size" in limits and wrote_bytes > 0:
        from cache.upkeep.prune import blob_sizes

        return sum(blob_sizes(store).values()) > limits["max-size"]
    return False


def apply_after_write(store: BlobStore, wrote_bytes: int) -> bool:
    """Start a background ``layerhoard prune --policy`` when the policy is exceeded. True if started."""
    if not config_path(store.root).exists() or not over_limit(store, wrote_bytes):
        return False
    with store.locks_folder.lock("prune.lock", blocking=False) as idle:
        if not idle:
            return False  # a prune is running: it will see this write's bytes too
    command = [sys.executable, "-m", "cli.main", "--cache-dir", str(store.root), "-q", "prune", "--policy"]
    with contextlib.suppress(OSError):
        import subprocess  # only when a prune must start: keeps every pull's start-up shorter

        subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True)
        return True
    return False
