"""What a pull did, for the API and for `pull --json`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LayerReport:
    digest: str
    diff_id: str | None
    size: int
    media_type: str
    reused: bool
    diff_id_verified: bool = True  # False: a claim the background check settles (cache/store/diffids.py)


@dataclass
class ReferrerReport:
    """One referrer or cosign-tag manifest a pull looked at: ``via`` is ``referrers-api``,
    ``tag-schema`` or ``cosign:<suffix>``; ``reused`` when it was stored already (nothing fetched)."""

    subject: str
    digest: str
    artifact_type: str
    via: str
    size: int  # the manifest and its blobs
    reused: bool


@dataclass
class PullReport:
    """One image pulled into the store. ``bytes_fetched`` counts bytes that came from a registry or
    the daemon in this run; ``bytes_reused`` the layer bytes that were already stored."""

    ref: str
    digest: str
    platform: str | None
    source: str
    layers: list[LayerReport] = field(default_factory=list)
    bytes_fetched: int = 0
    bytes_reused: int = 0
    seconds: float = 0.0
    requests: int = 0
    bytes_from_remote: int = 0  # the part of bytes_fetched the team's remote tier served (cache/remote/tier.py)
    # How a daemon image's layers were read ("store", "overlay2", "docker save"), and why the direct
    # read of the daemon's storage was not used when it fell back (docs/daemon.md).
    route: str | None = None
    fallback: str | None = None
    referrers: list[ReferrerReport] = field(default_factory=list)  # signatures, SBOMs... (cache/ingest/referrers.py)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
