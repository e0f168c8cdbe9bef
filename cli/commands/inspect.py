"""inspect: what travels with a cached image (signatures, SBOMs, attestations)."""

from __future__ import annotations

import click

from cache.store.attachments import image_attachments
from cache.units import format_size
from cli.output import Context, pass_context


@click.command("inspect")
@click.argument("name")
@pass_context
def inspect_command(ctx: Context, name: str) -> None:
    """Show NAME (as `ls` lists it) and what travels with it: its referrers and cosign tags."""
    data = image_attachments(ctx.store, name)
    lines = [f"{data['ref']} {data['digest']}: {len(data['manifests'])} manifest(s), "
             f"{len(data['attached'])} attached"]
    lines += [f"  {row['via']:12} {row['artifact_type'] or '-':50} {row['digest'][:19]} {format_size(row['size']):>9}"
              f"  (of {row['subject'][:19]})" for row in data["attached"]]
    ctx.result(data, "\n".join(lines))
