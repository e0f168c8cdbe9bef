"""The workload of issue 8: a Big-Bang-like image set built end to end, layerhoard against skopeo/docker.

``python -m bench workload [--scale 3G] [--out FILE]``: generator.py builds the set, runner.py runs
the scenarios and writes the table, standin.py is the baseline's stand-in for an SBOM scanner.
"""

from bench.workload.runner import main

__all__ = ["main"]
