"""docs/architecture.md names every module of the library, the command line and the benchmarks."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def listed(module: Path, lines: list[str]) -> bool:
    """By its path, or by its file name on a line that names its folder (a row grouping a folder's
    modules); a package's __init__.py by its folder."""
    path, folder = str(module), f"{module.parent}/"
    if module.name == "__init__.py":
        return any(folder in line for line in lines)
    return any(path in line or (f"`{module.name}`" in line and folder in line) for line in lines)


def test_architecture_lists_every_module() -> None:
    lines = (ROOT / "docs" / "architecture.md").read_text().splitlines()
    modules = [path.relative_to(ROOT) for top in ("cache", "cli", "bench") for path in (ROOT / top).rglob("*.py")]
    assert len(modules) > 100
    assert [str(module) for module in sorted(modules) if not listed(module, lines)] == []
