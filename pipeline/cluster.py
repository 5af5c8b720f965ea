"""The local Dask cluster sensorcube starts, and the Dask settings it starts it with.

Chip tasks keep each worker thread busy for the whole run, so any other work of the worker,
nanny and scheduler processes takes CPU from the chips on a machine with as many cores as
workers. Two of Dask's background jobs cost the most there, and sensorcube changes them
unless the user's Dask configuration sets them:

- the statistical profiler samples every worker thread's stack 100 times a second for the
  dashboard's profile page. sensorcube turns it off.
- every worker, nanny and scheduler measures its event loop's latency every 20 ms. sensorcube
  measures it every 200 ms, which still catches a loop blocked for seconds.

docs/benchmarks.md records what both cost per chip.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dask.config
from distributed import LocalCluster

log = logging.getLogger(__name__)

# Dask settings sensorcube's own clusters start with, by dotted key. A value the user's Dask
# configuration (YAML files or DASK_* environment variables) sets wins.
CLUSTER_SETTINGS: Mapping[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "200ms",
}


def cluster_settings() -> dict[str, Any]:
    """Return the entries of CLUSTER_SETTINGS that the user's Dask configuration leaves unset."""
    user = dask.config.collect()
    return {key: value for key, value in CLUSTER_SETTINGS.items() if not _is_set(user, key)}


def _is_set(config: Mapping[str, Any], dotted_key: str) -> bool:
    node: Any = config
    for part in dotted_key.split("."):
        if not isinstance(node, Mapping):
            return False
        # Dask reads "-" and "_" in keys as the same character.
        matches = [key for key in node if key.replace("_", "-") == part.replace("_", "-")]
        if not matches:
            return False
        node = node[matches[0]]
    return True


@contextmanager
def local_cluster(
    workers: int,
    *,
    dashboard_address: str | None = "127.0.0.1:0",
    silence_logs: int = logging.WARNING,
    settings: Mapping[str, Any] | None = None,
) -> Iterator[LocalCluster]:
    """Start ``workers`` worker processes of one thread each on 127.0.0.1.

    ``settings`` are the Dask settings to change, by default :func:`cluster_settings`; an empty
    mapping keeps Dask's defaults. The nannies copy the configuration when they start, so a
    worker that replaces a dead one gets the same settings. The scheduler's dashboard listens on
    ``dashboard_address``, by default a free loopback port, because a fixed port fails when
    another cluster runs on the machine. With None, Dask starts no dashboard but still opens
    its HTTP server, on port 8787 when that is free.
    """
    if settings is None:
        settings = cluster_settings()
    log.info(
        "local Dask cluster: %d worker processes of 1 thread; Dask settings changed by "
        "sensorcube: %s",
        workers,
        ", ".join(f"{key}={value}" for key, value in settings.items()) or "none",
    )
    with (
        dask.config.set(settings),
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=dashboard_address,
            silence_logs=silence_logs,
        ) as cluster,
    ):
        yield cluster
