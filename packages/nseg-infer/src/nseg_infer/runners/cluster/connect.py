"""Connecting to a dask cluster (`--cluster local:N` or a scheduler address) and the command
line's part of `nseg-infer run --cluster`; the run itself is `nseg_infer.runners.cluster.run_on_cluster`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nseg_infer.engine.predictor import RunConfig
from nseg_infer.runners.cluster.client import ClusterError, ClusterOptions, run_on_cluster
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.inputs import FileResult
from nseg_infer.runners.summary import print_results

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

# Seconds a scheduler address gets to answer (connect and handshake) before the run fails naming
# it. dask's own default (30 s, retried) leaves a user staring at a silent command.
CONNECT_TIMEOUT = 10.0


def parse_cluster(spec: str) -> int | str:
    """`local:N` -> N (a LocalCluster of N single-threaded worker processes); a scheduler address
    (`tcp://HOST:PORT`, `tls://...`) -> itself."""
    if spec.startswith("local:"):
        n = spec.removeprefix("local:")
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--cluster local:N needs N >= 1 workers, got {spec!r}")
        return int(n)
    if "://" in spec:
        return spec
    raise ValueError(f"--cluster must be local:N or a scheduler address such as tcp://HOST:8786, got {spec!r}")


@contextlib.contextmanager
def connect(spec: str, *, quiet: bool = False, timeout: float | None = None) -> Iterator[Client]:
    """A client for `--cluster SPEC` (see `parse_cluster`), closed (and a local cluster stopped)
    when the block ends. `quiet`: dask's own start-up and shut-down messages only as warnings.
    A scheduler that does not answer within `timeout` seconds (default `CONNECT_TIMEOUT`) is a
    ClusterError naming it."""
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    try:
        from distributed import Client, LocalCluster
    except ImportError as e:
        raise ClusterError("--cluster needs the dask extra: pip install 'nseg-infer[dask]'") from e
    if quiet:  # after the import, which sets the level from dask's config
        logging.getLogger("distributed").setLevel(logging.WARNING)
    target = parse_cluster(spec)
    if isinstance(target, str):
        try:
            ask_scheduler(target, timeout)
            client = Client(target, timeout=timeout)
        except (OSError, TimeoutError) as e:  # refused, unreachable, or silent past the timeout
            reason = str(e).splitlines()[0] if str(e) else f"{type(e).__name__}: no reply"
            raise ClusterError(f"scheduler {target} did not answer within {timeout:g} s ({reason}); is it "
                               "running, and is its address reachable from this machine?") from e
        with client:
            yield client
        return
    with LocalCluster(n_workers=target, threads_per_worker=1, processes=True) as cluster, Client(cluster) as client:
        yield client


def ask_scheduler(address: str, timeout: float) -> dict:
    """The scheduler's identity, or TimeoutError/OSError within `timeout` seconds. dask's Client
    bounds the TCP connect but can wait forever on a peer that accepts and never replies (a
    wrong port, a firewall's tarpit), so the whole exchange runs under one deadline first."""
    async def ask() -> dict:
        from distributed.comm import connect as comm_connect

        comm = await comm_connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            await comm.close()

    # In a thread of its own, so it also works where an event loop already runs (a notebook).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(asyncio.wait_for(ask(), timeout))).result()


def local_threads(spec: str, config: RunConfig) -> RunConfig:
    """On `local:N`, each worker's model gets its share of this machine's cores (unless set)."""
    target = parse_cluster(spec)
    if isinstance(target, str) or config.threads is not None:
        return config
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return dataclasses.replace(config, threads=max(1, cores // target))


def cli_run(inputs: Sequence[str], out: Path, model: Path | None, config: RunConfig, file_config: FileConfig,
            spec: str, options: ClusterOptions) -> int:
    """`nseg-infer run --cluster SPEC`: the exit code (0 all segmented, 1 some failed)."""
    from tqdm import tqdm

    config = local_threads(spec, config)
    bar = tqdm(unit="img", dynamic_ncols=True, file=sys.stderr, disable=None)

    def progress(r: FileResult) -> None:
        bar.set_postfix_str(f"{r.input.name}: " + (f"{r.n_nuclei} nuclei" if r.ok else "FAILED"))
        bar.update(1)

    try:
        with connect(spec, quiet=not log.isEnabledFor(logging.DEBUG)) as client:
            print(f"cluster: {spec} ({len(client.nthreads())} workers now), dashboard {client.dashboard_link}",
                  file=sys.stderr)
            report = run_on_cluster(client, inputs, out, bundle=model, config=config, file_config=file_config, options=options,
                                    progress=progress, on_start=lambda k: bar.reset(total=k))
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    ok = print_results(report.results, out, counted=f" ({len(report.reused)} finished earlier)",
                       warnings=report.warnings)
    return 0 if ok else 1
