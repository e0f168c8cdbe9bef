"""ui: the cache's web view on a free loopback port, without the registry side of serve."""

from __future__ import annotations

import webbrowser

import click

from cache.view.standalone import make_view_server
from cli.commands.serve import serve_until_interrupted
from cli.output import Context, pass_context


@click.command("ui")
@click.option("--listen", default="127.0.0.1:0", show_default=True,
              help="HOST:PORT on loopback; port 0 picks a free one.")
@click.option("--open", "open_browser", is_flag=True, help="Open the view in the default browser.")
@pass_context
def ui_command(ctx: Context, listen: str, open_browser: bool) -> None:
    """Show the cache in a browser (read-only): images, shared layers, disk use, prune preview, stats.

    Prints the view's URL and serves until interrupted. `layerhoard serve` answers the same view
    at / beside the registry API.
    """
    server = make_view_server(ctx.store, listen)
    ctx.result({"url": server.url}, server.url)
    if open_browser:
        webbrowser.open(server.url)
    serve_until_interrupted(server)
