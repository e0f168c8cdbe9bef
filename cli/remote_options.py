"""The remote tier on the command line: --remote, --remote-read-only, --no-remote, and the config.

The options store their values in click's context (``expose_value=False``), so adding them to a
command changes none of its parameters: the command asks :func:`open_remote` for the tier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cache.errors import InvalidReference
from cache.upkeep.policy import ConfigError, load_config
from cli.output import Context

if TYPE_CHECKING:  # the tier brings the HTTP client: loaded only when a remote is in use
    from cache.remote.tier import RemoteTier

F = TypeVar("F", bound=Callable[..., Any])
_META = "layerhoard.remote"


def _keep(ctx: click.Context, param: click.Parameter, value: object) -> object:
    ctx.meta.setdefault(_META, {})[param.name] = value
    return value


def remote_options(function: F) -> F:
    """--remote REGISTRY/REPO, --remote-read-only and --no-remote (they override the config)."""
    options = [
        click.option("--remote", metavar="REGISTRY/REPO", expose_value=False, callback=_keep,
                     help="Team remote tier: look blobs up there before the origin, push new ones "
                          "(default: `layerhoard config get remote`)."),
        click.option("--remote-read-only", is_flag=True, expose_value=False, callback=_keep,
                     help="Use the remote but never push to it (CI runners)."),
        click.option("--no-remote", is_flag=True, expose_value=False, callback=_keep,
                     help="Ignore the configured remote for this command."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def open_remote(ctx: Context, *, insecure: bool = False, jobs: int = 4) -> RemoteTier | None:
    """The remote this command uses: --remote, else the config's; None with --no-remote or none set."""
    given: dict[str, Any] = click.get_current_context().meta.get(_META, {})
    if given.get("no_remote"):
        return None
    try:
        config = load_config(ctx.store.root)
    except ConfigError as error:
        if not given.get("remote"):
            from cache.remote.tier import warn_on_stderr

            warn_on_stderr(f"remote not used: {error}")  # a broken config never fails a pull
            return None
        config = {}
    text = given.get("remote") or config.get("remote")
    if not text:
        return None
    read_only = bool(given.get("remote_read_only")) or config.get("remote-mode") == "read-only"
    from cache.remote.address import parse_remote  # only with a remote: every pull and warm comes here

    try:
        spec = parse_remote(text, read_only)
    except InvalidReference as error:
        raise click.BadParameter(str(error), param_hint="--remote") from None
    from cache.remote.tier import RemoteTier

    return RemoteTier(spec, insecure=insecure, jobs=jobs)  # its one warning shows even with -q


def finish_remote(ctx: Context, tier: RemoteTier | None) -> None:
    """Wait for the background pushes (the command's result is already printed), then close."""
    if tier is None:
        return
    summary = tier.wait()
    tier.close()
    if ctx.verbose and summary.images:
        ctx.log(f"remote {tier.spec.name}: {summary.blobs_uploaded} blobs uploaded, {summary.blobs_mounted} "
                f"mounted, {summary.blobs_present} already there, {summary.manifests_put} manifests put")
