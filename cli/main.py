"""Entry point: global options, command registration, and the one-line error contract.

Exit codes: 0 success, 1 failure, 2 usage error. An error is one line on stderr naming what was
wrong; the traceback appears only with -v.
"""

from __future__ import annotations

import gc
import importlib
import sys
from typing import Any

import click

from cache.errors import LayerhoardError
from cli.output import Context, resolve_cache_dir

# name -> "module:attribute". A command's module (and its heavy imports: requests, docker-py,
# the SBOM catalogers) loads only when that command runs, so `layerhoard pull` starts fast.
COMMANDS = {
    "pull": "cli.commands.pull:pull_command",
    "warm": "cli.commands.pull:warm_command",
    "sbom": "cli.commands.sbom:sbom_command",
    "export": "cli.commands.export:export_command",
    "serve": "cli.commands.serve:serve_command",
    "ui": "cli.commands.ui:ui_command",
    "ls": "cli.commands.maintenance:ls_command",
    "inspect": "cli.commands.inspect:inspect_command",
    "du": "cli.commands.maintenance:du_command",
    "verify": "cli.commands.maintenance:verify_command",
    "gc": "cli.commands.maintenance:gc_command",
    "prune": "cli.commands.lifecycle:prune_command",
    "pin": "cli.commands.lifecycle:pin_command",
    "unpin": "cli.commands.lifecycle:unpin_command",
    "config": "cli.commands.lifecycle:config_command",
    "stats": "cli.commands.lifecycle:stats_command",
    "push-cache": "cli.commands.push_cache:push_cache_command",
    "inventory": "cli.commands.delivery:inventory_command",
    "import": "cli.commands.delivery:import_command",
}


class LayerhoardGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not gc.isenabled():  # cli.entry loads modules with the collector off
            gc.freeze()  # what loading made is never garbage: keep the collector's passes off it
            gc.enable()  # the command's own work may make cycles
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except LayerhoardError as error:
            _fail(ctx, str(error))
        except KeyboardInterrupt:
            _fail(ctx, "interrupted")
        except OSError as error:
            where = f" ({error.filename})" if error.filename else ""
            _fail(ctx, f"{error.strerror or error}{where}")
        except Exception as error:
            _fail(ctx, f"internal error: {type(error).__name__}: {error}")


def _fail(ctx: click.Context, message: str) -> None:
    obj = ctx.find_object(Context)
    if obj is not None and obj.verbose:
        import traceback  # only with -v: keeps every command's start-up shorter

        traceback.print_exc()
    click.echo(f"layerhoard: error: {message}", err=True)
    sys.exit(1)


@click.group(cls=LayerhoardGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cache-dir", type=click.Path(file_okay=False), envvar=None,
              help="Cache folder (default $LAYERHOARD_CACHE_DIR, else $XDG_CACHE_HOME/layerhoard).")
@click.option("--json", "json_output", is_flag=True, help="Print one JSON document on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print only results, no progress or logs.")
@click.option("-v", "--verbose", is_flag=True, help="More logs; tracebacks on errors.")
@click.version_option(package_name="layerhoard")
@click.pass_context
def main(ctx: click.Context, cache_dir: str | None, json_output: bool, quiet: bool, verbose: bool) -> None:
    """layerhoard: a content-addressed cache for container image layers."""
    ctx.obj = Context(resolve_cache_dir(cache_dir), json=json_output, quiet=quiet, verbose=verbose)


if __name__ == "__main__":  # pragma: no cover
    from cli.entry import run

    run()
