"""pull and warm: bring images into the cache."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cache.errors import LayerhoardError
from cache.ingest.pull import PullOptions, pull
from cache.ingest.report import PullReport
from cache.model.manifests import Platform
from cache.progress import NoProgress, Progress, ProgressFactory
from cache.sources import DEFAULT_JOBS
from cache.units import format_size
from cache.upkeep.policy import apply_after_write
from cli.output import Context, pass_context
from cli.remote_options import finish_remote, open_remote, remote_options

if TYPE_CHECKING:
    from cache.ingest.pull import ReferrerOptions
    from cache.registry.http import SpeedFloor

F = TypeVar("F", bound=Callable[..., Any])


def progress_factory(ctx: Context) -> ProgressFactory:
    """tqdm bars on stderr, one per transfer, only on a terminal."""
    if not ctx.progress_enabled():
        return lambda label, total: NoProgress()
    from tqdm import tqdm

    def factory(label: str, total: int | None) -> Progress:
        return tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, leave=False)  # type: ignore[no-any-return]

    return factory


def _parse_platform(value: str | None) -> Platform | None:
    if value is None:
        return None
    try:
        return Platform.parse(value)
    except LayerhoardError as error:
        raise click.BadParameter(str(error), param_hint="--platform") from None


def _parse_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """--min-speed as bytes/s, --min-speed-time as seconds (parsed here: a bad one is a usage error)."""
    if value is None:
        return None
    from cache.registry.client import parse_window  # the registry client loads only when a floor is given
    from cache.units import parse_size

    try:
        return parse_size(value) if param.name == "min_speed" else parse_window(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _floor(min_speed: int | None, min_speed_time: float | None) -> SpeedFloor | None:
    """The speed floor the options set (what they leave out from the environment); None: no option."""
    if min_speed is None and min_speed_time is None:
        return None  # the registry client reads the environment itself, and only when it is used
    from cache.registry.client import speed_floor

    return speed_floor(min_speed, min_speed_time)


def pull_options(function: F) -> F:
    """The options pull and warm share."""
    options = [
        click.option("--platform", help="OS/ARCH[/VARIANT] of a multi-platform image (default: this host's)."),
        click.option("--all-platforms", is_flag=True, help="Pull every platform of a multi-platform image."),
        click.option("--jobs", type=click.IntRange(1, 64), default=DEFAULT_JOBS, show_default=True,
                     help="Blobs downloaded in parallel."),
        click.option("--insecure", is_flag=True, help="Allow plain HTTP and unverified TLS (non-loopback)."),
        click.option("--offline", is_flag=True, help="Use only what is cached; make no request."),
        click.option("--docker-host", help="Docker daemon for docker-daemon: (default: DOCKER_HOST or context)."),
        click.option("--containerd-address", metavar="SOCKET",
                     help="containerd for containerd: names (default: CONTAINERD_ADDRESS, else "
                          "/run/containerd/containerd.sock)."),
        click.option("--containerd-root", metavar="DIR",
                     help="containerd's root, whose content store containerd: and Docker's containerd image store "
                          "read (default: /var/lib/containerd)."),
        click.option("--min-speed", metavar="RATE", callback=_parse_option,
                     help="Abandon (then resume) a registry transfer slower than RATE bytes/s over --min-speed-time "
                          "(like 1K; 0: never) [default: LAYERHOARD_MIN_SPEED, else 1K]."),
        click.option("--min-speed-time", metavar="DUR", callback=_parse_option,
                     help="The window of --min-speed (like 30s) [default: LAYERHOARD_MIN_SPEED_TIME, else 30s]."),
    ]
    for option in reversed(options):
        function = option(function)
    return remote_options(referrer_options(function))


def referrer_options(function: F) -> F:
    """--no-referrers, --referrers-type, --refresh-referrers, given to the command as one ``referrers``."""

    @functools.wraps(function)
    def command(*args: Any, no_referrers: bool, referrers_type: tuple[str, ...], refresh_referrers: bool,
                **kwargs: Any) -> Any:
        from cache.ingest.pull import ReferrerOptions

        return function(*args, referrers=ReferrerOptions(not no_referrers, referrers_type, refresh_referrers), **kwargs)

    options = [
        click.option("--no-referrers", is_flag=True, help="Fetch no signatures, SBOMs or attestations with the image."),
        click.option("--referrers-type", multiple=True, metavar="TYPE",
                     help="Fetch only referrers of this artifactType (repeatable)."),
        click.option("--refresh-referrers", is_flag=True,
                     help="Ask the registry for referrers of images already cached (a new signature on an old image)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command  # type: ignore[return-value]


def _options(ctx: Context, platform: str | None, all_platforms: bool, jobs: int, insecure: bool, offline: bool,
             docker_host: str | None, floor: SpeedFloor | None, name: str | None = None,
             referrers: ReferrerOptions | None = None) -> PullOptions:
    return PullOptions(_parse_platform(platform), all_platforms, jobs, insecure, offline, docker_host, name,
                       progress_factory(ctx), None if offline else open_remote(ctx, insecure=insecure, jobs=jobs),
                       floor, referrers)


def _summary(report: PullReport) -> str:
    reused = sum(1 for layer in report.layers if layer.reused)
    return (f"{report.ref} {report.digest}: {len(report.layers)} layers ({reused} reused), "
            f"fetched {format_size(report.bytes_fetched)}, reused {format_size(report.bytes_reused)} "
            f"in {report.seconds:.2f}s")


def _check_claims(ctx: Context, reports: list[PullReport]) -> None:
    """The diff_id claims these pulls left, checked by a detached process now that the result is out."""
    if any(not layer.diff_id_verified for report in reports for layer in report.layers):
        from cache.store.diffids import start_background_check

        start_background_check(ctx.store)


@click.command("pull")
@click.argument("source")
@pull_options
@click.option("--name", help="Name to record an oci: or docker-archive: image under.")
@pass_context
def pull_command(ctx: Context, source: str, platform: str | None, all_platforms: bool, jobs: int, insecure: bool,
                 offline: bool, docker_host: str | None, containerd_address: str | None, containerd_root: str | None,
                 min_speed: int | None, min_speed_time: float | None,
                 name: str | None, referrers: ReferrerOptions) -> None:
    """Bring SOURCE into the cache (docker://REF by default; docker-daemon:, oci:, docker-archive:)."""
    options = _options(ctx, platform, all_platforms, jobs, insecure, offline, docker_host,
                       _floor(min_speed, min_speed_time), name, referrers)
    ctx.store.defer_diff_ids = True  # checked once the result is out: _check_claims
    options = options._replace(containerd_address=containerd_address, containerd_root=containerd_root)
    report = pull(ctx.store, source, options)
    if ctx.verbose and report.route is not None:
        ctx.log(f"layers read through {report.route}" + (f" ({report.fallback})" if report.fallback else ""))
    ctx.result(report.to_json(), _summary(report))
    finish_remote(ctx, options.remote)  # background pushes to the remote end before the command does
    _check_claims(ctx, [report])
    apply_after_write(ctx.store, report.bytes_fetched)  # the standing prune policy, in the background


@click.command("warm")
@click.argument("sources", nargs=-1)
@click.option("-f", "--file", "list_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A file with one image per line.")
@click.option("--from-zarf", type=click.Path(dir_okay=False, path_type=Path),
              help="Warm every image a zarf.yaml lists.")
@click.option("--export", "export_to", metavar="oci:DIR",
              help="Then export every image into this one OCI layout (tagged by its name).")
@click.option("--sbom-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Then write every image's SBOM into this folder.")
@click.option("--sbom-format", type=click.Choice(["spdx-json", "cyclonedx-json", "json"]), default="spdx-json",
              show_default=True, help="Format of the --sbom-dir documents.")
@click.option("--lock", "lock_to", type=click.Path(dir_okay=False, path_type=Path),
              help="Then write a lock file: each image's name → the digests its tag resolved to.")
@click.option("--locked", type=click.Path(dir_okay=False, path_type=Path),
              help="Pull exactly the digests of this lock file (no tag request; none at all when cached).")
@pull_options
@pass_context
def warm_command(ctx: Context, sources: tuple[str, ...], list_file: Path | None, from_zarf: Path | None,
                 export_to: str | None, sbom_dir: Path | None, sbom_format: str, lock_to: Path | None,
                 locked: Path | None, platform: str | None, all_platforms: bool, jobs: int, insecure: bool,
                 offline: bool, docker_host: str | None, containerd_address: str | None, containerd_root: str | None,
                 min_speed: int | None, min_speed_time: float | None,
                 referrers: ReferrerOptions) -> None:
    """Pull many images at once; shared layers are fetched once.

    With --export and --sbom-dir it does a packaging build's whole image step in one process: pull
    every image, export them into one OCI layout, write their SBOMs. --lock writes what the tags
    resolved to; --locked pulls exactly that again (docs/airgap.md).
    """
    if export_to is not None and not export_to.startswith("oci:"):
        raise click.BadParameter("warm exports into one OCI layout: give oci:DIR", param_hint="--export")
    from cache.ingest.warm import package, read_image_list, read_zarf_images, warm, warm_locked  # pull never needs it

    wanted = list(sources)
    if list_file:
        wanted += read_image_list(list_file)
    if from_zarf:
        wanted += read_zarf_images(from_zarf)
    if locked is not None and (wanted or lock_to is not None):
        raise click.UsageError("--locked pulls what the lock file names: give no images, -f, --from-zarf or --lock")
    if not wanted and locked is None:
        raise click.UsageError("name images to warm, or give -f FILE, --from-zarf ZARF_YAML or --locked LOCK_FILE")
    options = _options(ctx, platform, all_platforms, jobs, insecure, offline, docker_host,
                       _floor(min_speed, min_speed_time), referrers=referrers)
    ctx.store.defer_diff_ids = True  # checked once the result is out (or by --export/--sbom-dir first)
    if locked is not None:
        from cache.delivery.lock import read_lock

        result = warm_locked(ctx.store, read_lock(locked), options)
    else:
        options = options._replace(containerd_address=containerd_address, containerd_root=containerd_root)
        result = warm(ctx.store, list(dict.fromkeys(wanted)), options)
    if lock_to is not None and not result.failures:
        from cache.delivery.lock import lock_images

        lock_images(ctx.store, list(dict.fromkeys(r.ref for r in result.reports))).write(lock_to)
    packaged = package(ctx.store, result.reports, export_to=export_to, sbom_dir=sbom_dir,
                       sbom_format=sbom_format) if export_to or sbom_dir else []
    data = {
        "images": [r.to_json() for r in result.reports],
        "packaged": packaged,
        "failed": [{"source": s, "error": e} for s, e in result.failures],
        "missing_referrers": result.missing_referrers,
        "bytes_fetched": result.bytes_fetched,
        "bytes_reused": result.bytes_reused,
        "seconds": result.seconds,
    }
    lines = [_summary(r) for r in result.reports]
    lines += [f"failed: {s}: {e}" for s, e in result.failures]
    lines.append(f"warmed {len(result.reports)} images ({len(result.failures)} failed): "
                 f"fetched {format_size(result.bytes_fetched)}, reused {format_size(result.bytes_reused)} "
                 f"in {result.seconds:.2f}s")
    if lock_to is not None:
        lines.append(f"not locked: {len(result.failures)} image(s) failed" if result.failures else
                     f"locked {len(result.reports)} images in {lock_to}")
    if result.missing_referrers:
        lines.append(f"{len(result.missing_referrers)} locked referrer(s) not in the cache")
    if packaged:
        lines.append(f"packaged {len(packaged)} images" + (f", exported to {export_to}" if export_to else "")
                     + (f", SBOMs in {sbom_dir}" if sbom_dir else ""))
    ctx.result(data, "\n".join(lines))
    finish_remote(ctx, options.remote)  # background pushes to the remote end before the command does
    _check_claims(ctx, result.reports)
    apply_after_write(ctx.store, result.bytes_fetched)  # the standing prune policy, in the background
    if result.failures:
        raise SystemExit(1)
