"""export: write a cached image as an OCI layout, a `docker load` tarball, or into the daemon."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cache.ingest.pull import cached_or_pulled
from cache.model.manifests import Platform
from cache.sinks import export, parse_destination
from cache.sinks.transcode import COMPRESSIONS
from cache.units import format_size
from cli.output import Context, pass_context
from cli.remote_options import finish_remote, open_remote, remote_options


@click.command("export")
@click.argument("src")
@click.argument("dst", required=False)
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="keep", show_default=True,
              help="Layer compression of the output; transcoded layers are kept in the cache for next time.")
@click.option("--platform", help="OS/ARCH[/VARIANT] to export from a multi-platform image (default: this host).")
@click.option("--locked", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every image of this lock file into one bundle: export --locked FILE DST.")
@click.option("--exclude-from", metavar="INVENTORY|oci:DIR|docker://REGISTRY/REPO",
              help="With --locked: leave out the blobs the other side holds (an inventory file, or a target).")
@click.option("--insecure", is_flag=True, help="Allow plain HTTP to a non-loopback --exclude-from registry.")
@remote_options
@pass_context
def export_command(ctx: Context, src: str, dst: str | None, compression: str, platform: str | None,
                   locked: Path | None, exclude_from: str | None, insecure: bool) -> None:
    """Write SRC (pulled through the cache if missing) to DST.

    DST is oci:DIR[:TAG], docker-archive:FILE[:NAME:TAG], docker-archive:- (stdout), or
    docker-daemon:NAME:TAG. With --locked the one argument is the bundle: oci:DIR,
    oci-archive:FILE or - (stdout).
    """
    if locked is not None or exclude_from is not None:
        if locked is None or dst is not None or compression != "keep" or platform is not None:
            raise click.UsageError("a bundle is `export --locked FILE [--exclude-from X] DST`: "
                                   "one DST, no SRC, --compression or --platform")
        _export_bundle(ctx, locked, exclude_from, src, insecure)
        return
    if dst is None:
        raise click.UsageError("give SRC and DST (or --locked FILE DST)")
    destination = parse_destination(dst)  # a bad DST fails before any pull
    remote = open_remote(ctx)
    image = cached_or_pulled(ctx.store, src, Platform.parse(platform) if platform else None, remote)
    finish_remote(ctx, remote)  # the pull's pushes to the remote end before the export writes
    report = export(ctx.store, image, dst, compression)
    data = report.to_json()
    transcoded = sum(1 for layer in report.layers if layer["transcoded"])
    text = (f"exported {report.ref} ({report.digest[:19]}) to {dst}: {len(report.layers)} layers, "
            f"{transcoded} transcoded, {report.linked} linked, {report.copied} copied"
            + ("" if report.changed else " (already there)"))
    if destination.path == "-" and destination.kind == "docker-archive":
        # stdout carries the tarball: the result goes to stderr
        click.echo(json.dumps(data, indent=2, sort_keys=True) if ctx.json else text, err=True)
        return
    ctx.result(data, text)


def _export_bundle(ctx: Context, locked: Path, exclude_from: str | None, dst: str, insecure: bool) -> None:
    from cache.delivery.bundle import plan_bundle, write_bundle
    from cache.delivery.inventory import exclusion_from
    from cache.delivery.lock import read_lock
    from cli.commands.pull import progress_factory

    lock = read_lock(locked)
    exclude = exclusion_from(ctx.store, exclude_from, insecure=insecure) if exclude_from else None
    report = write_bundle(ctx.store, plan_bundle(ctx.store, lock, exclude), dst, progress_factory(ctx))
    text = (f"bundled {report.images} images into {dst}: {report.blobs_written} blobs, "
            f"{format_size(report.bytes_written)}; {report.blobs_assumed} blobs "
            f"({format_size(report.bytes_assumed)}) left out as held by the other side")
    if dst == "-":  # stdout carries the tar: the result goes to stderr
        click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True) if ctx.json else text, err=True)
        return
    ctx.result(report.to_json(), text)
