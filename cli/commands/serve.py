"""serve: the cache as an OCI registry (read side, optional pushes and pull-through)."""

from __future__ import annotations

import click

from cache.refs import DEFAULT_REGISTRY
from cache.server import DEFAULT_LISTEN, ServeOptions, make_server, stderr_log
from cache.server.upstream import parse_upstreams
from cache.units import parse_duration, parse_size
from cli.output import Context, pass_context


@click.command("serve")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True,
              help="HOST:PORT to listen on; loopback unless you say otherwise.")
@click.option("--default-registry", default=DEFAULT_REGISTRY, show_default=True,
              help="The registry a request's repository belongs to (containerd's ?ns= names another).")
@click.option("--upstream", "upstreams", multiple=True, metavar="NAME=URL",
              help="Fetch misses of registry NAME from URL (pull-through); repeatable.")
@click.option("--allow-push", is_flag=True, help="Accept pushes (blob uploads, manifests) into the cache.")
@click.option("--upload-expiry", default="1h", show_default=True, metavar="DUR",
              help="Drop a chunked upload left idle this long (its file goes with it).")
@click.option("--max-upload-size", default="20G", show_default=True, metavar="SIZE",
              help="Refuse (413) a pushed blob larger than this.")
@click.option("--max-connections", default=4096, show_default=True, type=click.IntRange(1),
              help="Connections open at once (lowered to fit the file limit); more are answered 503.")
@click.option("--workers", default=64, show_default=True, type=click.IntRange(1),
              help="Requests served at once; idle connections take none.")
@pass_context
def serve_command(ctx: Context, listen: str, default_registry: str, upstreams: tuple[str, ...],
                  allow_push: bool, upload_expiry: str, max_upload_size: str,
                  max_connections: int, workers: int) -> None:
    """Serve the cache over the OCI Distribution API until interrupted."""
    try:
        expiry = parse_duration(upload_expiry)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--upload-expiry") from None
    try:
        max_size = parse_size(max_upload_size)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--max-upload-size") from None
    options = ServeOptions(listen, default_registry, parse_upstreams(list(upstreams)), allow_push,
                           log=stderr_log if ctx.verbose else None, warn=stderr_log, upload_expiry=expiry,
                           max_upload_size=max_size, max_connections=max_connections, workers=workers,
                           access_log=None if ctx.quiet else stderr_log)
    server = make_server(ctx.store, options)
    ctx.log(f"serving {ctx.cache_dir} on {server.url} (default registry {server.default_registry}"
            f"{', pushes allowed' if allow_push else ''}"
            f"{', upstreams ' + ', '.join(options.upstreams) if options.upstreams else ''})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

