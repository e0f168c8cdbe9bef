"""push-cache: fill the team's remote tier with cached images explicitly."""

from __future__ import annotations

import click

from cache.remote.tier import PushSummary, push_cached
from cache.sources import DEFAULT_JOBS
from cache.store.blobstore import BlobStore
from cache.upkeep.prune import resolve_ref
from cli.output import Context, pass_context
from cli.remote_options import open_remote, remote_options


@click.command("push-cache")
@click.argument("refs", nargs=-1, metavar="[REF]...")
@click.option("--jobs", type=click.IntRange(1, 64), default=DEFAULT_JOBS, show_default=True,
              help="Blobs uploaded in parallel.")
@click.option("--insecure", is_flag=True, help="Allow plain HTTP and unverified TLS (non-loopback).")
@remote_options
@pass_context
def push_cache_command(ctx: Context, refs: tuple[str, ...], jobs: int, insecure: bool) -> None:
    """Push cached images (every one when no REF is given) to the remote tier.

    Blobs the remote has are skipped (HEAD first), blobs whose origin is the remote's own registry
    are mounted from the origin's repository, and each image is tagged by its name (see
    docs/team-cache.md), so teammates resolve the same name through the remote.
    """
    tier = open_remote(ctx, insecure=insecure, jobs=jobs)
    if tier is None:
        raise click.UsageError("no remote: give --remote REGISTRY/REPO or `layerhoard config set remote REGISTRY/REPO`")
    if tier.spec.read_only:
        raise click.UsageError("the remote is read-only here (--remote-read-only or remote-mode read-only)")
    store = ctx.store
    names = [resolve_ref(store, ref) for ref in refs] or _cached_names(store)
    total = PushSummary()
    try:
        for name in names:
            if not tier.writable:
                break
            total.add(push_cached(store, tier, name))
    finally:
        tier.close()
    data = {
        "remote": tier.spec.name, "images": names, "blobs_uploaded": total.blobs_uploaded,
        "blobs_mounted": total.blobs_mounted, "blobs_present": total.blobs_present,
        "bytes_uploaded": total.bytes_uploaded, "manifests_put": total.manifests_put, "errors": total.errors,
    }
    ctx.result(data, f"pushed {len(names)} images to {tier.spec.name}: {total.blobs_uploaded} blobs uploaded "
                     f"({total.bytes_uploaded} bytes), {total.blobs_mounted} mounted, {total.blobs_present} "
                     f"already there, {total.manifests_put} manifests put")
    if total.errors or not tier.writable:
        raise SystemExit(1)


def _cached_names(store: BlobStore) -> list[str]:
    return sorted({entry.name for entry in store.index_entries() if entry.name})
