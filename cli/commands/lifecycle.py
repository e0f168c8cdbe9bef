"""prune, pin, unpin, config, stats: keeping a (shared) cache within bounds and knowing what it saves."""

from __future__ import annotations

import datetime
from collections.abc import Callable

import click

from cache.store import pins
from cache.units import format_size, parse_duration, parse_size
from cache.upkeep.policy import KEYS, ConfigError, load_config, set_value, standing_rule, unset_value
from cache.upkeep.prune import PrunePlan, PrunePolicy, prune, resolve_ref
from cache.upkeep.stats import KINDS, stats
from cli.output import Context, pass_context


def _parse(parser: Callable[[str], float], value: str | None, option: str) -> float | None:
    if value is None:
        return None
    try:
        return parser(value)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint=option) from None


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M") if timestamp else "-"


def _plan_text(plan: PrunePlan) -> str:
    verb = "would evict" if plan.dry_run else "evicted"
    lines = [f"{verb} {image['ref']} ({format_size(image['size'])}, last used {_when(image['last_used'])})"
             for image in plan.images]
    lines += [f"kept {ref} ({why})" for ref, why in sorted(plan.protected.items())]
    lines.append(
        f"{verb} {len(plan.images)} images; {'would remove' if plan.dry_run else 'removed'} "
        f"{len(plan.blobs)} blobs, freeing {format_size(plan.freed_bytes)} "
        f"({format_size(plan.bytes_before)} -> {format_size(plan.bytes_after)})"
    )
    return "\n".join(lines)


@click.command("prune")
@click.option("--max-size", metavar="SIZE", help="Evict until the cache holds at most SIZE (like 20G).")
@click.option("--min-free-space", metavar="SIZE", help="Evict until the cache's file system has SIZE free.")
@click.option("--keep-duration", metavar="DUR", help="Never evict an image used within DUR (like 7d).")
@click.option("--keep", "keep", multiple=True, metavar="REF", help="Never evict REF (repeatable).")
@click.option("--all", "evict_all", is_flag=True, help="Evict every image that is not pinned, kept or recent.")
@click.option("--grace", default="10m", show_default=True, metavar="DUR",
              help="Never delete an orphan blob written or used within DUR (a pull in progress).")
@click.option("--policy", is_flag=True,
              help="Use the standing policy of `layerhoard config` (what the background prune runs); "
                   "returns at once if another prune is running.")
@click.option("--dry-run", is_flag=True, help="Print exactly what would be removed and what it frees; change nothing.")
@pass_context
def prune_command(ctx: Context, max_size: str | None, min_free_space: str | None, keep_duration: str | None,
                  keep: tuple[str, ...], evict_all: bool, grace: str, policy: bool, dry_run: bool) -> None:
    """Evict whole images, least recently used first, then delete the blobs no kept image needs.

    Never evicted: pinned images (`layerhoard pin`), --keep images, images used within
    --keep-duration. Never deleted: a blob a kept image needs, a blob being written, an orphan
    younger than --grace. Orphan blobs older than --grace are always deleted. Give a limit
    (--max-size, --min-free-space) or --all; --policy takes the limits from `layerhoard config`.
    """
    store = ctx.store
    rule = PrunePolicy(
        max_size=_int(_parse(parse_size, max_size, "--max-size")),
        min_free_space=_int(_parse(parse_size, min_free_space, "--min-free-space")),
        keep_duration=_parse(parse_duration, keep_duration, "--keep-duration"),
        keep=frozenset(resolve_ref(store, ref) for ref in keep),
        evict_all=evict_all,
        grace=_parse(parse_duration, grace, "--grace") or 0.0,
    )
    if policy:
        try:
            standing = standing_rule(store.root, rule)  # the policy's limits where no option gave one
        except ConfigError as error:
            raise click.UsageError(str(error)) from None
        if standing is None:
            ctx.result({"dry_run": dry_run, "images": [], "blobs": [], "freed_bytes": 0}, "no standing size policy")
            return
        rule = standing
    if not rule.has_limit:
        raise click.UsageError("give --max-size SIZE, --min-free-space SIZE, or --all to evict every "
                               "unprotected image")
    plan = prune(store, rule, dry_run=dry_run, wait=not policy)
    if plan is None:
        ctx.result({"dry_run": dry_run, "images": [], "blobs": [], "freed_bytes": 0, "skipped": True},
                   "another prune is running")
        return
    ctx.result(plan.to_json(), _plan_text(plan))


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


@click.command("pin")
@click.argument("ref")
@pass_context
def pin_command(ctx: Context, ref: str) -> None:
    """Keep REF and its blobs through every prune and gc (REF as `ls` lists it, or as pulled)."""
    name = resolve_ref(ctx.store, ref)
    pins.pin(ctx.store, name)
    ctx.result({"ref": name, "pinned": True}, f"pinned {name}")


@click.command("unpin")
@click.argument("ref")
@pass_context
def unpin_command(ctx: Context, ref: str) -> None:
    """Let prune evict REF again."""
    name = ref if ref in pins.pins(ctx.store) else resolve_ref(ctx.store, ref)
    if not pins.unpin(ctx.store, name):
        raise click.ClickException(f"{name} is not pinned")
    ctx.result({"ref": name, "pinned": False}, f"unpinned {name}")


@click.group("config")
def config_command() -> None:
    """The standing prune policy, kept in <cache>/config.json and applied after pull and warm.

    \b
    Settings:
      max-size SIZE         the cache may hold SIZE of blobs (like 50G)
      min-free-space SIZE   keep SIZE free on the cache's file system
      keep-duration DUR     never evict an image used within DUR (like 7d)
      remote REGISTRY/REPO  the team's remote tier, asked before the origin (docs/team-cache.md)
      remote-mode MODE      read-write (default) or read-only (use the remote, never fill it)

    When a pull or warm leaves the cache over a limit, a `layerhoard prune --policy` starts in the
    background; the command that wrote does not wait for it.
    """


@config_command.command("set")
@click.argument("key", type=click.Choice(list(KEYS)))
@click.argument("value")
@pass_context
def config_set(ctx: Context, key: str, value: str) -> None:
    """Set KEY to VALUE (checked: a bad size or duration is refused)."""
    try:
        set_value(ctx.store.root, key, value)
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint="VALUE") from None
    ctx.result({key: value.strip()}, f"{key} = {value.strip()}")


@config_command.command("get")
@click.argument("key", required=False, type=click.Choice(list(KEYS)))
@pass_context
def config_get(ctx: Context, key: str | None) -> None:
    """Print KEY, or every setting."""
    config = load_config(ctx.store.root)
    if key is not None:
        if key not in config:
            ctx.result({key: None}, f"{key} is not set")
            return
        config = {key: config[key]}
    ctx.result(config, "\n".join(f"{k} = {v}" for k, v in sorted(config.items())) or "no settings")


@config_command.command("unset")
@click.argument("key", type=click.Choice(list(KEYS)))
@pass_context
def config_unset(ctx: Context, key: str) -> None:
    """Remove KEY from the policy."""
    removed = unset_value(ctx.store.root, key)
    ctx.result({key: None, "removed": removed}, f"{key} unset" if removed else f"{key} was not set")


@click.command("stats")
@pass_context
def stats_command(ctx: Context) -> None:
    """Hits, misses, bytes fetched and reused per source kind, and the bytes layer sharing saves.

    hits/misses count layers a pull found stored / had to fetch; bytes_reused are the layer bytes
    not fetched again; dedup saved is what the cached images would take without shared layers,
    minus what they take.
    """
    data = stats(ctx.store)
    rows = [f"{'SOURCE':10} {'PULLS':>7} {'HITS':>7} {'MISSES':>7} {'FETCHED':>12} {'REUSED':>12}"]
    for kind in (*KINDS, "total"):
        values = data["total"] if kind == "total" else data["sources"][kind]
        rows.append(f"{kind:10} {values['pulls']:>7} {values['hits']:>7} {values['misses']:>7} "
                    f"{format_size(values['bytes_fetched']):>12} {format_size(values['bytes_reused']):>12}")
    rows.append(f"dedup saved {format_size(data['dedup_saved_bytes'])} "
                f"({format_size(data['stored_bytes'])} stored for {format_size(data['image_bytes'])} of images)")
    ctx.result(data, "\n".join(rows))
