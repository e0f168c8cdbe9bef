"""Progress reporting from the library to whoever shows it (the CLI draws bars on a terminal)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def update(self, nbytes: int) -> None: ...

    def close(self) -> None: ...


class ProgressFactory(Protocol):
    def __call__(self, label: str, total: int | None) -> Progress: ...


class NoProgress:
    def update(self, nbytes: int) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(label: str, total: int | None) -> Progress:
    return NoProgress()
