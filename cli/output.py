"""How commands talk: one JSON document on stdout with --json, text otherwise; logs on stderr."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from cache.store.blobstore import BlobStore, default_cache_dir


@dataclass
class Context:
    cache_dir: Path
    json: bool = False
    quiet: bool = False
    verbose: bool = False
    _store: BlobStore | None = field(default=None, repr=False)

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            self._store = BlobStore(self.cache_dir)
        return self._store

    def result(self, data: Any, text: str | None = None) -> None:
        """Print a command's result: ``data`` as JSON with --json, else ``text``."""
        if self.json:
            # indented for a person at a terminal; one line for a program, which json's C encoder
            # writes several times faster (a dry-run prune of 10,000 images lists 100,000 blobs)
            indent = 2 if sys.stdout.isatty() else None
            click.echo(json.dumps(data, indent=indent, sort_keys=True, default=str))
        elif text is not None and not self.quiet:
            click.echo(text)

    def log(self, message: str) -> None:
        if not self.quiet:
            click.echo(message, err=True)

    def progress_enabled(self) -> bool:
        return not self.quiet and sys.stderr.isatty()


def resolve_cache_dir(option: str | None) -> Path:
    return Path(option) if option else default_cache_dir()


pass_context = click.make_pass_decorator(Context)
