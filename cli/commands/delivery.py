"""inventory and import: the two ends of an air-gapped delivery (docs/airgap.md)."""

from __future__ import annotations

from pathlib import Path

import click

from cache.units import format_size
from cli.commands.pull import progress_factory
from cli.output import Context, pass_context


@click.command("inventory")
@click.argument("target", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the inventory to FILE (default: stdout).")
@click.option("--insecure", is_flag=True, help="Allow plain HTTP and unverified TLS (non-loopback registries).")
@pass_context
def inventory_command(ctx: Context, target: str | None, output: Path | None, insecure: bool) -> None:
    """List, as JSON, the digests TARGET holds: the cache (default), oci:DIR or docker://REGISTRY/REPO.

    Give it to `export --locked --exclude-from` on the other side, so a delivery leaves those out.
    """
    from cache.delivery.inventory import inventory_of

    inventory = inventory_of(ctx.store, target, insecure=insecure)
    if output is None:
        click.echo(inventory.encode().decode(), nl=False)
        return
    inventory.write(output)
    ctx.result({"target": inventory.target, "blobs": len(inventory.blobs), "bytes": sum(inventory.blobs.values()),
                "output": str(output)},
                f"{inventory.target}: {len(inventory.blobs)} blobs ({format_size(sum(inventory.blobs.values()))}) "
                f"listed in {output}")


@click.command("import")
@click.argument("bundle")
@click.option("--jobs", type=click.IntRange(1, 64), default=4, show_default=True, help="Blobs stored in parallel.")
@pass_context
def import_command(ctx: Context, bundle: str, jobs: int) -> None:
    """Bring every image of a delivery bundle (oci:DIR or oci-archive:FILE) into the cache.

    Each image is rebuilt from the bundle plus what the cache holds; a bundle that assumes a blob
    the cache lacks is refused, and nothing is stored.
    """
    from cache.delivery.import_bundle import import_bundle

    report = import_bundle(ctx.store, bundle, jobs=jobs, progress=progress_factory(ctx))
    ctx.result(report.to_json(),
               "\n".join([*(f"{name} {digest}" for name, digest in report.images.items()),
                          f"imported {len(report.images)} images from {bundle}: {report.blobs_imported} blobs "
                          f"({format_size(report.bytes_imported)}) from the bundle, {report.blobs_reused} "
                          f"already cached ({report.assumed} assumed), {report.referrers} referrers "
                          f"in {report.seconds:.2f}s"]))
