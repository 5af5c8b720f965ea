"""Command-line interface of ``sensorcube``: run, plan, extract, freeze, verify, repair, release
and evaluate.

Exit codes: 0 success, 1 run failure (including a failed verify), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import __version__
from pipeline.config import CatalogSpec, RegionSpec, load_catalogs, load_region, resolve_region_path
from pipeline.errors import SensorcubeError, UsageError

if TYPE_CHECKING:
    from distributed import Client

    from pipeline.extract import FrozenTargets
    from pipeline.plan import Plan

log = logging.getLogger("pipeline.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_WORKERS = 2  # worker processes of the local cluster


def _add_region_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "region",
        metavar="REGION",
        nargs=None if required else "?",
        help="region name under --splits-dir, or a path to a region YAML",
    )
    _add_folder_options(parser)


def _add_folder_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--splits-dir",
        type=Path,
        default=Path("splits"),
        help="folder of region folders, each with region.yaml and the frozen manifest.json "
        "(default: ./splits)",
    )
    parser.add_argument(
        "--catalogs-dir",
        type=Path,
        default=Path("catalogs"),
        help="folder of catalog YAML files (default: ./catalogs)",
    )


def _add_extract_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="store path (default: ./cubes/<region>.zarr)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing store built from another configuration",
    )
    _add_cluster_options(parser)


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        help=f"worker processes of the local Dask cluster (default: {DEFAULT_WORKERS}); not "
        "with --scheduler",
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDR",
        help="address of a running Dask scheduler (tcp://HOST:8786) to use instead of a local "
        "cluster",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="seconds to try to reach --scheduler, and then to wait for its first worker, "
        "before giving up (default: 20)",
    )
    parser.add_argument(
        "--max-failed-fraction",
        type=float,
        default=0.0,
        help="fraction of chips (0-1) allowed to fail before the run exits with 1 (default: 0)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sensorcube",
        description="Build co-located multi-sensor Earth-observation cubes and frozen split "
        "manifests.",
    )
    parser.add_argument("--version", action="version", version=f"sensorcube {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="debug log output on stderr; -vv adds Dask's own log lines",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log only errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="plan, extract and freeze a region")
    _add_region_options(run)
    _add_extract_options(run)

    plan = commands.add_parser(
        "plan", help="search the catalogs and print the chip plan without writing anything"
    )
    _add_region_options(plan)

    extract = commands.add_parser(
        "extract", help="plan and write the region's store, without freezing"
    )
    _add_region_options(extract, required=False)
    _add_extract_options(extract)
    extract.add_argument(
        "--from-manifest",
        type=Path,
        metavar="PATH",
        help="rebuild exactly the chips of a frozen manifest from its items, without searching; "
        "REGION defaults to the manifest's region",
    )

    freeze = commands.add_parser(
        "freeze", help="assign splits and write the manifest of an extracted store"
    )
    _add_region_options(freeze)
    freeze.add_argument("--store", type=Path, help="store path (default: ./cubes/<region>.zarr)")

    verify = commands.add_parser("verify", help="re-hash a store against a manifest")
    verify.add_argument("store", type=Path, metavar="STORE")
    verify.add_argument("--manifest", type=Path, required=True, help="path to manifest.json")

    repair = commands.add_parser(
        "repair", help="re-extract the chips of a store that verify reports, from the manifest"
    )
    repair.add_argument("store", type=Path, metavar="STORE")
    repair.add_argument("--manifest", type=Path, required=True, help="path to manifest.json")
    _add_folder_options(repair)
    _add_cluster_options(repair)

    release = commands.add_parser(
        "release",
        help="write a STAC release (collection, one item per region, datasheet, train "
        "statistics, quicklooks) of frozen regions",
    )
    release.add_argument(
        "regions",
        metavar="REGION",
        nargs="+",
        help="region name under --splits-dir, or a path to a region YAML",
    )
    release.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="release folder to create"
    )
    _add_folder_options(release)
    release.add_argument(
        "--cubes-dir",
        type=Path,
        default=Path("cubes"),
        help="folder of the stores, each <cubes-dir>/<region>.zarr (default: ./cubes)",
    )
    release.add_argument(
        "--store", type=Path, help="store path when one REGION is given (default: from --cubes-dir)"
    )
    release.add_argument(
        "--overwrite", action="store_true", help="replace an earlier sensorcube release in DIR"
    )

    evaluate = commands.add_parser(
        "evaluate",
        help="score translation predictions of one split against the store, beside baselines",
    )
    evaluate.add_argument("--store", type=Path, required=True, help="truth store path")
    evaluate.add_argument(
        "--manifest", type=Path, required=True, help="path to the store's manifest.json"
    )
    evaluate.add_argument(
        "--direction",
        required=True,
        metavar="SOURCE->TARGET",
        help="direction that --predictions translate, such as s1->s2",
    )
    evaluate.add_argument(
        "--predictions",
        type=Path,
        required=True,
        metavar="PRED",
        help="Zarr store of the predicted TARGET variable for every chip of the split",
    )
    evaluate.add_argument(
        "--inverse-predictions",
        type=Path,
        metavar="PRED",
        help="Zarr store of predictions of the inverse direction (TARGET->SOURCE)",
    )
    evaluate.add_argument(
        "--cycle-predictions",
        type=Path,
        metavar="PRED",
        help="Zarr store of the inverse model applied to --predictions, scored against SOURCE",
    )
    evaluate.add_argument("--split", default="test", help="manifest split to score (default: test)")
    evaluate.add_argument(
        "--baseline",
        action="append",
        dest="baselines",
        metavar="NAME",
        help="trivial predictor scored beside the predictions: train-mean (the default) or "
        "identity; repeat the option for both",
    )
    evaluate.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder to write scores.json, report.md and figures/ into",
    )
    evaluate.add_argument(
        "--overwrite", action="store_true", help="replace an earlier evaluation in DIR"
    )
    return parser


def _configure_logging(verbose: int, quiet: bool) -> int:
    """Send logs to stderr: INFO for sensorcube by default, DEBUG with -v, ERROR with -q.

    Dask's own INFO lines (cluster start and stop) are shown only with -vv.
    """
    if quiet:
        level = logging.ERROR
    elif verbose:
        level = logging.DEBUG
    else:
        level = logging.INFO
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("pipeline").setLevel(level)
    return level


def _worker_dask_log_level(verbose: int) -> int:
    """Dask's own log level in local workers: INFO with -vv, ERROR with -v, else CRITICAL.

    The default hides the heartbeat errors distributed logs when a cluster shuts down.
    """
    if verbose > 1:
        return logging.INFO
    return logging.ERROR if verbose else logging.CRITICAL


def _quiet_dask_logs(log_level: int, verbose: int) -> None:
    """Lower Dask's loggers to WARNING unless -vv; distributed sets their levels on import."""
    level = logging.INFO if verbose > 1 else max(logging.WARNING, log_level)
    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in ("distributed", "dask"):
            logging.getLogger(name).setLevel(level)


def _configure_worker_logging(level: int) -> None:
    logger = logging.getLogger("pipeline")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
    logger.setLevel(level)


def _load(args: argparse.Namespace) -> tuple[RegionSpec, dict[str, CatalogSpec]]:
    region = load_region(resolve_region_path(args.region, args.splits_dir))
    catalogs = load_catalogs(region, args.catalogs_dir)
    return region, catalogs


def _store_path(args: argparse.Namespace, region: RegionSpec, attribute: str = "out") -> Path:
    path: Path | None = getattr(args, attribute, None)
    return path if path is not None else Path("cubes") / f"{region.name}.zarr"


def _manifest_path(args: argparse.Namespace, region: RegionSpec) -> Path:
    return Path(args.splits_dir) / region.name / "manifest.json"


def _validate_extract_options(args: argparse.Namespace) -> None:
    from pipeline.gdal_io import capture_gdal_options

    # Chip jobs capture the GDAL options later, so an invalid environment value fails here first.
    capture_gdal_options()
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers} is invalid; give 1 or more worker processes")
    if args.workers is not None and args.scheduler is not None:
        raise UsageError(
            f"--workers {args.workers} sets the size of the local cluster and has no effect with "
            "--scheduler; drop --workers, or start that many `dask worker` processes for the "
            "scheduler"
        )
    if args.connect_timeout <= 0:
        raise UsageError(
            f"--connect-timeout {args.connect_timeout} is invalid; give a number of seconds above 0"
        )
    if not 0.0 <= args.max_failed_fraction <= 1.0:
        raise UsageError(
            f"--max-failed-fraction {args.max_failed_fraction} is invalid; "
            "give a fraction from 0 to 1"
        )
    if args.scheduler is not None:
        _validate_scheduler_address(args.scheduler)


def _validate_scheduler_address(address: str) -> None:
    from distributed.comm.registry import backends

    if "://" not in address:
        raise UsageError(
            f"--scheduler {address!r} is not a scheduler address; give one like tcp://HOST:8786"
        )
    scheme = address.split("://", 1)[0]
    if scheme not in backends:
        raise UsageError(
            f"--scheduler {address!r} has the scheme {scheme!r}, which Dask does not support "
            f"(supported: {', '.join(sorted(backends))}); give an address like tcp://HOST:8786"
        )


@contextmanager
def dask_client(
    *,
    workers: int,
    scheduler: str | None,
    log_level: int,
    verbose: int,
    connect_timeout_s: float,
) -> Iterator[Client]:
    """Connect to ``scheduler`` or start a local cluster of ``workers`` processes."""
    from distributed import Client

    from pipeline.cluster import local_cluster

    _quiet_dask_logs(log_level, verbose)
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=f"{connect_timeout_s}s")
        except (OSError, TimeoutError) as error:
            raise SensorcubeError(
                f"cannot connect to Dask scheduler {scheduler!r}: {error}; "
                "check that it runs and the address, or raise --connect-timeout"
            ) from error
        with client:
            _wait_for_first_worker(client, scheduler, connect_timeout_s)
            yield client
        return
    with (
        # Workers log Dask's own messages only at this level or above.
        local_cluster(workers, silence_logs=_worker_dask_log_level(verbose)) as cluster,
        Client(cluster) as client,
    ):
        client.run(_configure_worker_logging, log_level)
        yield client


def _wait_for_first_worker(client: Client, scheduler: str, timeout_s: float) -> None:
    """Raise when the scheduler has no worker within ``timeout_s``, instead of waiting forever."""
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except TimeoutError as error:
        raise SensorcubeError(
            f"Dask scheduler {scheduler!r} has no workers after {timeout_s:g} s; start some with "
            f"`dask worker {scheduler}`, or raise --connect-timeout"
        ) from error


def _command_plan(args: argparse.Namespace) -> int:
    from pipeline.plan import make_plan

    region, catalogs = _load(args)
    plan = make_plan(region, catalogs)
    print(json.dumps(plan.summary(), indent=1))
    return EXIT_OK


def _open_client_factory(args: argparse.Namespace) -> Callable[[], AbstractContextManager[Client]]:
    return partial(
        dask_client,
        workers=DEFAULT_WORKERS if args.workers is None else args.workers,
        scheduler=args.scheduler,
        log_level=args.log_level,
        verbose=args.verbose,
        connect_timeout_s=args.connect_timeout,
    )


def _command_extract(args: argparse.Namespace, *, then_freeze: bool) -> int:
    from pipeline.lock import store_lock
    from pipeline.manifest import freeze
    from pipeline.plan import make_plan
    from pipeline.store import check_existing_store

    _validate_extract_options(args)
    if getattr(args, "from_manifest", None) is not None:
        return _command_rebuild(args)
    if args.region is None:
        raise UsageError("REGION is missing; give a region name or path, or --from-manifest PATH")
    region, catalogs = _load(args)
    store = _store_path(args, region)
    # Reject an unusable output path before searching or starting workers.
    check_existing_store(store, config_hash=region.config_hash(catalogs), overwrite=args.overwrite)
    with store_lock(store):
        _extract_with_client(
            args, store, lambda: (make_plan(region, catalogs), None), overwrite=args.overwrite
        )
        if then_freeze:
            freeze(store, region, catalogs, _manifest_path(args, region))
    return EXIT_OK


def _extract_with_client(
    args: argparse.Namespace,
    store: Path,
    make_plan: Callable[[], tuple[Plan, FrozenTargets | None]],
    *,
    overwrite: bool,
) -> None:
    """Plan and extract under the store's lock, on a local cluster or ``--scheduler``."""
    from pipeline.extract import extract
    from pipeline.lock import store_lock

    open_client = _open_client_factory(args)
    with ExitStack() as stack:
        stack.enter_context(store_lock(store))
        # A remote scheduler is checked before the search; a local cluster starts after it.
        client = stack.enter_context(open_client()) if args.scheduler else None
        plan, targets = make_plan()
        if client is None:
            client = stack.enter_context(open_client())
        extract(
            plan,
            store,
            client,
            overwrite=overwrite,
            max_failed_fraction=args.max_failed_fraction,
            targets=targets,
        )


def _region_of_manifest(
    args: argparse.Namespace, manifest: Mapping[str, Any]
) -> tuple[RegionSpec, dict[str, CatalogSpec]]:
    reference = getattr(args, "region", None) or str(manifest["region"])
    region = load_region(resolve_region_path(reference, args.splits_dir))
    if region.name != manifest["region"]:
        raise UsageError(
            f"region file {region.path} is of region {region.name!r} but the manifest is of "
            f"region {manifest['region']!r}; pass the matching region"
        )
    return region, load_catalogs(region, args.catalogs_dir)


def _command_rebuild(args: argparse.Namespace) -> int:
    from pipeline.manifest import load_manifest
    from pipeline.rebuild import check_config, plan_from_manifest
    from pipeline.store import check_existing_store

    manifest = load_manifest(args.from_manifest)
    region, catalogs = _region_of_manifest(args, manifest)
    check_config(manifest, region, catalogs)
    store = _store_path(args, region)
    check_existing_store(store, config_hash=region.config_hash(catalogs), overwrite=args.overwrite)
    _extract_with_client(
        args,
        store,
        lambda: plan_from_manifest(manifest, region, catalogs),
        overwrite=args.overwrite,
    )
    return _report_verify(store, manifest, args.from_manifest)


def _command_repair(args: argparse.Namespace) -> int:
    from pipeline.manifest import load_manifest, verify
    from pipeline.rebuild import plan_from_manifest

    _validate_extract_options(args)
    manifest = load_manifest(args.manifest)
    mismatches = verify(args.store, manifest)
    if not mismatches:
        log.info("store %s matches %s; nothing to repair", args.store, args.manifest)
        return EXIT_OK
    damaged = sorted({mismatch.chip_id for mismatch in mismatches})
    log.info("repairing %d chips of %s: %s", len(damaged), args.store, ", ".join(damaged[:20]))
    region, catalogs = _region_of_manifest(args, manifest)
    _extract_with_client(
        args,
        args.store,
        lambda: plan_from_manifest(manifest, region, catalogs, only=damaged),
        overwrite=False,
    )
    return _report_verify(args.store, manifest, args.manifest)


def _report_verify(store: Path, manifest: Mapping[str, Any], manifest_path: Path) -> int:
    from pipeline.manifest import verify

    mismatches = verify(store, manifest)
    checked = sum(len(entry["checksums"]) for entry in manifest["chips"])
    if mismatches:
        for mismatch in mismatches:
            print(
                f"MISMATCH chip {mismatch.chip_id} variable {mismatch.variable}: {mismatch.reason}",
                file=sys.stderr,
            )
        print(
            f"verify failed: {len(mismatches)} of {checked} chip variables differ from "
            f"{manifest_path}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print(
        f"verify ok: {checked} chip variables in {len(manifest['chips'])} chips match "
        f"{manifest_path}",
        file=sys.stderr,
    )
    return EXIT_OK


def _command_freeze(args: argparse.Namespace) -> int:
    from pipeline.manifest import freeze

    region, catalogs = _load(args)
    manifest_path = _manifest_path(args, region)
    freeze(_store_path(args, region, "store"), region, catalogs, manifest_path)
    return EXIT_OK


def _command_verify(args: argparse.Namespace) -> int:
    from pipeline.manifest import load_manifest

    manifest = load_manifest(args.manifest)
    return _report_verify(args.store, manifest, args.manifest)


def _command_release(args: argparse.Namespace) -> int:
    from pipeline.release import RegionInput, build_release

    if args.store is not None and len(args.regions) > 1:
        raise UsageError(
            f"--store applies to a single REGION, but {len(args.regions)} were given; put the "
            "stores in one folder as <region>.zarr and pass it with --cubes-dir"
        )
    sources = []
    for reference in args.regions:
        region = load_region(resolve_region_path(reference, args.splits_dir))
        catalogs = load_catalogs(region, args.catalogs_dir)
        store = args.store if args.store is not None else args.cubes_dir / f"{region.name}.zarr"
        sources.append(RegionInput(region, catalogs, store, _manifest_path(args, region)))
    build_release(sources, args.out, overwrite=args.overwrite)
    return EXIT_OK


def _command_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluate import EvaluationRequest, check_output, evaluate, write_evaluation

    request = EvaluationRequest(
        store=args.store,
        manifest=args.manifest,
        direction=args.direction,
        predictions=args.predictions,
        split=args.split,
        inverse_predictions=args.inverse_predictions,
        cycle_predictions=args.cycle_predictions,
        baselines=tuple(args.baselines or ("train-mean",)),
    )
    # Reject an unusable output folder before reading any chip.
    check_output(args.out, overwrite=args.overwrite)
    evaluation = evaluate(request)
    write_evaluation(evaluation, args.out, overwrite=args.overwrite)
    print(evaluation.summary_table)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.log_level = _configure_logging(args.verbose, args.quiet)
    try:
        if args.command == "plan":
            return _command_plan(args)
        if args.command in ("run", "extract"):
            return _command_extract(args, then_freeze=args.command == "run")
        if args.command == "freeze":
            return _command_freeze(args)
        if args.command == "repair":
            return _command_repair(args)
        if args.command == "release":
            return _command_release(args)
        if args.command == "evaluate":
            return _command_evaluate(args)
        return _command_verify(args)
    except UsageError as error:
        print(f"sensorcube: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except SensorcubeError as error:
        print(f"sensorcube: error: {error}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
