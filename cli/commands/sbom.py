"""sbom: a software bill of materials for an image, from per-layer scans cached in the store."""

from __future__ import annotations

from pathlib import Path

import click

from cache.errors import LayerhoardError
from cache.ingest.pull import PullOptions
from cache.model.manifests import Platform
from cache.sbom import FORMATS
from cache.sbom.attach import image_sbom_document
from cache.sbom.source import image_for
from cache.store.fsutil import write_atomic
from cli.output import Context, pass_context
from cli.remote_options import finish_remote, open_remote, remote_options


@click.command("sbom")
@click.argument("source")
@click.option("--format", "format_name", type=click.Choice(list(FORMATS)), default="spdx-json", show_default=True,
              help="Document format: SPDX 2.3, CycloneDX 1.6, or layerhoard's own JSON.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write here instead of stdout.")
@click.option("--platform", help="OS/ARCH[/VARIANT] of a multi-platform image (default: this host's).")
@click.option("--refresh", is_flag=True, help="Pull SOURCE again even if a copy is cached (a moved tag).")
@click.option("--offline", is_flag=True, help="Use only what is cached; make no request.")
@click.option("--insecure", is_flag=True, help="Allow plain HTTP and unverified TLS (non-loopback).")
@click.option("--docker-host", help="Docker daemon for docker-daemon: (default: DOCKER_HOST or context).")
@click.option("--attach", is_flag=True, help="Store the SBOM as an OCI artifact beside the image (its subject), "
                                             "so serve, export oci: and push-cache carry it.")
@click.option("--rescan", is_flag=True, help="Scan even when an SBOM of this format travels with the image.")
@remote_options
@pass_context
def sbom_command(ctx: Context, source: str, format_name: str, output: str | None, platform: str | None,
                 refresh: bool, offline: bool, insecure: bool, docker_host: str | None, attach: bool,
                 rescan: bool) -> None:
    """SBOM of SOURCE (any transport); layers already scanned are not read again.

    An SBOM of the asked format that travels with the image (from its registry, or an earlier
    --attach) is returned as it is, without a scan. The scan summary (layers scanned vs served from
    the per-layer cache) goes to stderr; with --json and -o FILE it is printed on stdout as JSON instead.
    """
    try:
        wanted = Platform.parse(platform) if platform else None
    except LayerhoardError as error:
        raise click.BadParameter(str(error), param_hint="--platform") from None
    options = PullOptions(platform=wanted, insecure=insecure, offline=offline, docker_host=docker_host,
                          remote=None if offline else open_remote(ctx, insecure=insecure))
    image, pulled = image_for(ctx.store, source, options, refresh=refresh)
    finish_remote(ctx, options.remote)
    result = image_sbom_document(image, format_name, attach=attach, rescan=rescan)
    if output:
        write_atomic(Path(output), result.document)
    else:
        click.echo(result.document, nl=False)
    attached = str(result.attached) if result.attached else None
    sbom = result.sbom
    if sbom is None:  # one that travels with the image: no scan
        if ctx.json and output:
            ctx.result({"ref": image.ref, "digest": str(image.digest), "format": format_name, "output": output,
                        "attached": attached, "scanned": False, "pulled": pulled is not None})
        else:
            ctx.log(f"{image.ref}: the SBOM attached as {attached} (no scan; --rescan scans)")
        return
    summary = {
        "ref": sbom.ref, "digest": sbom.digest, "format": format_name, "output": output,
        "packages": len(sbom.packages), "layers": len(sbom.layers),
        "layers_scanned": sbom.layers_scanned, "layers_cached": sbom.layers_cached,
        "pulled": pulled is not None, "seconds": round(sbom.seconds, 3), "warnings": sbom.warnings,
        "attached": attached, "scanned": True,
    }
    for warning in sbom.warnings:  # shown even with -q: the document may be incomplete
        click.echo(f"layerhoard: warning: {warning}", err=True)
    if ctx.json and output:
        ctx.result(summary)
    else:
        ctx.log(f"{sbom.ref}: {len(sbom.packages)} packages; {len(sbom.layers)} layers: "
                f"{sbom.layers_scanned} scanned, {sbom.layers_cached} from the SBOM cache ({sbom.seconds:.2f}s)")
