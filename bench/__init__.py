"""Benchmarks of layerhoard, run as ``python -m bench NAME [options]`` (see bench/__main__.py).

Each benchmark is a module ``bench.<name>`` with ``main(argv) -> int`` that prints a markdown
report; the figures and the exact commands are kept in docs/benchmarks.md.
"""
