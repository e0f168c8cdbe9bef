"""Entry point: global options, command registration, and the one-line error contract.

Exit codes: 0 success, 1 failure, 2 usage error. An error is one line on stderr naming what was
wrong; the traceback appears only with -v.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

import click

from cache.errors import LayerhoardError
from cli.commands import export, maintenance, pull, sbom, serve
from cli.output import Context, resolve_cache_dir


class LayerhoardGroup(click.Group):
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


maintenance.register(main)
export.register(main)
serve.register(main)
pull.register(main)
sbom.register(main)

if __name__ == "__main__":  # pragma: no cover
    main()
