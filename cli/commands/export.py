"""export: write a cached image as an OCI layout, a `docker load` tarball, or into the daemon."""

from __future__ import annotations

import json

import click

from cache.ingest.pull import cached_or_pulled
from cache.model.manifests import Platform
from cache.sinks import export, parse_destination
from cache.sinks.transcode import COMPRESSIONS
from cli.output import Context, pass_context
from cli.remote_options import finish_remote, open_remote, remote_options


@click.command("export")
@click.argument("src")
@click.argument("dst")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="keep", show_default=True,
              help="Layer compression of the output; transcoded layers are kept in the cache for next time.")
@click.option("--platform", help="OS/ARCH[/VARIANT] to export from a multi-platform image (default: this host).")
@remote_options
@pass_context
def export_command(ctx: Context, src: str, dst: str, compression: str, platform: str | None) -> None:
    """Write SRC (pulled through the cache if missing) to DST.

    DST is oci:DIR[:TAG], docker-archive:FILE[:NAME:TAG], docker-archive:- (stdout), or
    docker-daemon:NAME:TAG.
    """
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
