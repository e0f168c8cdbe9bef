"""serve: the cache as an OCI registry (read side, optional pushes and pull-through)."""

from __future__ import annotations

import socketserver
import ssl

import click

from cache.model.refs import DEFAULT_REGISTRY
from cache.server import DEFAULT_LISTEN, ServeOptions, make_server, stderr_log
from cache.server.auth import Authenticator
from cache.server.tls import server_context
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
@click.option("--allow-delete", is_flag=True,
              help="Accept DELETE of tags, manifests and blobs (needs --allow-push; 405 otherwise).")
@click.option("--upload-expiry", default="1h", show_default=True, metavar="DUR",
              help="Drop a chunked upload left idle this long (its file goes with it).")
@click.option("--max-upload-size", default="20G", show_default=True, metavar="SIZE",
              help="Refuse (413) a pushed blob larger than this.")
@click.option("--max-connections", default=4096, show_default=True, type=click.IntRange(1),
              help="Connections open at once (lowered to fit the file limit); more are answered 503.")
@click.option("--workers", default=64, show_default=True, type=click.IntRange(1),
              help="Requests served at once; idle connections take none.")
@click.option("--tls-cert", metavar="FILE", help="Serve HTTPS with this PEM certificate (chain); needs --tls-key.")
@click.option("--tls-key", metavar="FILE", help="The PEM private key of --tls-cert.")
@click.option("--tls-client-ca", metavar="FILE",
              help="Mutual TLS: require client certificates signed by this PEM CA.")
@click.option("--htpasswd", metavar="FILE",
              help="Basic auth: every user of this htpasswd file (bcrypt, `htpasswd -B`) may pull.")
@click.option("--push-users", metavar="NAME,...", default="",
              help="Users of --htpasswd who may also push (and delete); needs --allow-push.")
@click.option("--insecure-listen", is_flag=True,
              help="Listen beyond loopback without TLS and auth anyway (a warning instead of a refusal).")
@pass_context
def serve_command(ctx: Context, listen: str, default_registry: str, upstreams: tuple[str, ...],
                  allow_push: bool, allow_delete: bool, upload_expiry: str, max_upload_size: str,
                  max_connections: int, workers: int,
                  tls_cert: str | None, tls_key: str | None,
                  tls_client_ca: str | None, htpasswd: str | None, push_users: str, insecure_listen: bool) -> None:
    """Serve the cache over the OCI Distribution API until interrupted."""
    if allow_delete and not allow_push:
        raise click.UsageError("--allow-delete needs --allow-push (a delete is a push: same role, same checks)")
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
                           access_log=None if ctx.quiet else stderr_log, allow_delete=allow_delete,
                           tls=_tls(tls_cert, tls_key, tls_client_ca),
                           auth=_auth(htpasswd, push_users, allow_push), insecure_listen=insecure_listen)
    server = make_server(ctx.store, options)
    ctx.log(f"serving {ctx.cache_dir} on {server.url} (default registry {server.default_registry}"
            f"{', pushes allowed' if allow_push else ''}{', deletes allowed' if allow_delete else ''}"
            f"{', basic auth' if htpasswd else ''}"
            f"{', client certificates required' if tls_client_ca else ''}"
            f"{', upstreams ' + ', '.join(options.upstreams) if options.upstreams else ''})")
    serve_until_interrupted(server)


def serve_until_interrupted(server: socketserver.BaseServer) -> None:
    """Serve until Ctrl-C, then close the listening socket (serve and ui)."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _tls(cert: str | None, key: str | None, client_ca: str | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        if client_ca is not None:
            raise click.UsageError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise click.UsageError("--tls-cert and --tls-key go together")
    return server_context(cert, key, client_ca)


def _auth(htpasswd: str | None, push_users: str, allow_push: bool) -> Authenticator | None:
    names = [name.strip() for name in push_users.split(",") if name.strip()]
    if htpasswd is None:
        if names:
            raise click.UsageError("--push-users needs --htpasswd")
        return None
    if names and not allow_push:
        raise click.UsageError("--push-users needs --allow-push")
    if allow_push and not names:
        raise click.UsageError("with --htpasswd, --allow-push needs --push-users NAME,... (who may push)")
    auth = Authenticator(htpasswd, names, warn=stderr_log)
    unknown = sorted(set(names) - auth.users())
    if unknown:
        stderr_log(f"warning: --push-users {', '.join(unknown)}: not in {htpasswd} (yet)")
    return auth
