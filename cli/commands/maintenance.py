"""ls, du, verify, gc: looking at the cache and keeping it sound."""

from __future__ import annotations

import datetime

import click

from cache.units import format_size, parse_duration
from cache.upkeep.documents import disk_usage, image_list
from cache.upkeep.gc import gc as run_gc
from cache.upkeep.rebuild_index import rebuild_index as rebuild_store_index
from cli.output import Context, pass_context


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


@click.command("ls")
@pass_context
def ls_command(ctx: Context) -> None:
    """List cached images: digest, size (all its blobs, shared ones included), source, last use, pin."""
    rows = image_list(ctx.store)["images"]
    lines = [f"{'REF':50} {'DIGEST':19} {'SIZE':>10} {'SOURCE':14} {'LAST USED':16} PIN"]
    for row in rows:
        source = str(row["source"] or "-").split(":", 1)[0]
        lines.append(
            f"{row['ref']:50} {str(row['digest'])[7:19]:19} {format_size(row['size']):>10} {source:14} "  # type: ignore[arg-type]
            f"{_when(row['last_used']):16} "  # type: ignore[arg-type]
            f"{'yes' if row['pinned'] else ''}"
        )
    lines += _unsettled_note(sum(row["diff_ids_unverified"] for row in rows),  # type: ignore[misc]
                             sum(row["diff_ids_mismatched"] for row in rows))  # type: ignore[misc]
    ctx.result({"images": rows}, "\n".join(lines))


def _unsettled_note(unverified: int, mismatched: int) -> list[str]:
    """What ls and du say about layers whose diff_id is not verified (cache/store/diffids.py)."""
    notes = []
    if unverified:
        notes.append(f"{unverified} layers' diff_ids not yet verified (a pull checks them in the background; "
                     "`layerhoard verify --diff-ids` checks them now)")
    if mismatched:
        notes.append(f"{mismatched} layers do not match their config's diff_id (`layerhoard verify` lists them)")
    return notes


@click.command("du")
@pass_context
def du_command(ctx: Context) -> None:
    """Disk use: total bytes, blobs, and the bytes that sharing layers saved."""
    data = disk_usage(ctx.store)
    text = (f"{format_size(data['bytes'])} in {data['blobs']} blobs for {data['images']} images "
            f"(dedup saved {format_size(data['dedup_saved_bytes'])})")
    ctx.result(data, "\n".join([text, *_unsettled_note(data["diff_ids_unverified"], data["diff_ids_mismatched"])]))


@click.command("verify")
@click.option("--fast", "mode", flag_value="fast", default=True, help="Check blake3 recorded at ingest (default).")
@click.option("--full", "mode", flag_value="full", help="Check sha256 against each blob's name.")
@click.option("--diff-ids", "mode", flag_value="diff-ids",
              help="Only check the layers' diff_ids that pulls left to check later (waits for the check a pull "
                   "started).")
@click.option("--repair", is_flag=True, help="Also forget corrupt blobs so the next pull fetches them again.")
@click.option("--background", is_flag=True, hidden=True,
              help="The check a pull starts: waits for no other check and leaves a layer another one is checking.")
@pass_context
def verify_command(ctx: Context, mode: str, repair: bool, background: bool) -> None:
    """Re-hash every blob (corrupt ones are moved aside and never served), then check every diff_id
    a pull left to check later; report the layers whose bytes do not match their config's diff_id."""
    from cache.store.diffids import settle_claims

    checked, corrupt = (0, []) if mode == "diff-ids" else ctx.store.verify(full=mode == "full", repair=repair)
    claims = settle_claims(ctx.store, wait=not background)
    data = {
        "checked": checked,
        "mode": mode,
        "corrupt": [{"digest": str(c.digest), "reason": c.reason, "moved_to": str(c.moved_to)} for c in corrupt],
        "repaired": repair,
        "diff_ids": claims.to_json(),
    }
    lines = [f"corrupt: {c.digest}: {c.reason} (moved to {c.moved_to})" for c in corrupt]
    lines += [f"diff_id mismatch: layer {c.blob} {c.found}, but its config says {c.diff_id}" for c in claims.refuted]
    if mode != "diff-ids":
        lines.append(f"checked {checked} blobs ({mode}): {len(corrupt)} corrupt")
    if mode == "diff-ids" or claims.checked or claims.pending:
        lines.append(f"checked {len(claims.checked)} diff_ids left to check by pulls: "
                     f"{len(claims.refuted)} mismatches on record, {claims.pending} still being checked")
    ctx.result(data, "\n".join(lines))
    if corrupt or claims.refuted:
        raise SystemExit(1)


@click.command("gc")
@click.option("--grace", default="1h", show_default=True, help="Keep orphans and partial writes younger than this.")
@click.option("--dry-run", is_flag=True, help="Say what would go, remove nothing.")
@click.option("--rebuild-index", is_flag=True,
              help="First rebuild the metadata index (meta/) from blobs/ and index.json: after it was lost "
                   "or damaged. The old one is moved to meta.broken-<time>/.")
@pass_context
def gc_command(ctx: Context, grace: str, dry_run: bool, rebuild_index: bool) -> None:
    """Remove orphan blobs, stale partial writes and idle lock files older than the grace period.

    Marks from every image in index.json and every pin; a blob none of them reaches goes once it
    is older than --grace (and was not used within it). With --rebuild-index the metadata index
    is first made anew from the files (blob sizes and blake3, images, diff_ids hashed here).
    """
    try:
        grace_seconds = parse_duration(grace)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--grace") from None
    rebuilt = None
    if rebuild_index:
        result_rebuild = rebuild_store_index(ctx.store)
        rebuilt = {"blobs": result_rebuild.blobs, "images": result_rebuild.images,
                   "diff_ids": result_rebuild.diff_ids, "pins": result_rebuild.pins,
                   "moved_to": str(result_rebuild.moved_to) if result_rebuild.moved_to else None}
        ctx.log(f"rebuilt the metadata index: {result_rebuild.blobs} blobs, {result_rebuild.images} images, "
                f"{result_rebuild.diff_ids} diff_ids, {result_rebuild.pins} pins")
    result = run_gc(ctx.store, grace_seconds, dry_run=dry_run)
    data = {
        "rebuilt_index": rebuilt,
        "removed_blobs": [str(d) for d in result.removed_blobs],
        "freed_bytes": result.freed_bytes,
        "removed_ingest": result.removed_ingest,
        "removed_locks": result.removed_locks,
        "dry_run": dry_run,
    }
    verb = "would remove" if dry_run else "removed"
    text = (f"{verb} {len(result.removed_blobs)} orphan blobs ({format_size(result.freed_bytes)}), "
            f"{result.removed_ingest} partial writes, {result.removed_locks} lock files")
    ctx.result(data, text)
