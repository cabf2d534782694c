"""Dask distributed as the pipeline's engine past one process: `--workers=N` (a LocalCluster of N worker
processes on this machine) or `--scheduler=ADDRESS` (an existing cluster). Without either flag the driver
gets no engine, runs everything in its own process, and Dask is never imported.

What runs as tasks: the export stage's rows, in whole batches (experiments.steps.export.export_shard: each
worker loads the network from `model.keras`, saved in the stage's working directory, and writes its rows
into the one pending store per split), and the per-query work of the compnn and analyses stages
(experiments.steps.compnn.query_task, experiments.steps.analyses.analyse_query), each task opening the
activation stores from the export directory. So the run directory must be on a file system every worker
sees (any path on this machine for --workers; a shared mount for a cluster). Results come back to the
driver and are combined in order, so a run with an engine writes the same stores, tables and arrays as
one without.

Cores: on one machine the matcher threads are split, `threads` (default: every CPU this process may
use) // workers per worker, each worker running one task at a time; nothing is oversubscribed. For an
existing cluster, start one single-threaded worker process per machine (`dask worker ADDRESS --nthreads 1`)
and each task's matcher uses `threads` (default: all of that machine's CPUs).

A worker that dies mid-task (killed, out of memory) is restarted by its nanny and its tasks are run again
elsewhere, up to ALLOWED_FAILURES times per task (Dask's distributed.scheduler.allowed-failures; for an
existing cluster its scheduler's own setting applies). Worker memory limits are off for LocalCluster:
the stores are memory-mapped, and their resident pages would count against a limit although the kernel
can drop them at will.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from experiments.errors import UserError

ALLOWED_FAILURES = 3


class Engine:
    """A Dask client and, for --workers, the LocalCluster it owns. `map` runs tasks; close() ends both."""

    def __init__(self, client, cluster, threads: int | None, info: dict[str, Any]):
        self.client, self.cluster, self.threads, self.info = client, cluster, threads, info

    def describe(self) -> dict[str, Any]:
        """What ran the tasks, for metrics.json."""
        return dict(self.info, threads_per_task=self.threads)

    def map(self, fn: Callable[..., Any], items: Sequence[Sequence[Any]], *, desc: str = "tasks",
            **kwargs: Any) -> list[Any]:
        """[fn(*item, **kwargs) for item in items], run as tasks; results in the order of `items`. A task's
        exception is raised here (after the others were cancelled)."""
        from distributed import as_completed
        from compnn_py.progress import Progress

        if not items:
            return []
        futures = [self.client.submit(fn, *item, pure=False, **kwargs) for item in items]
        try:
            with Progress(total=len(futures), desc=desc, unit="task") as bar:
                for future in as_completed(futures):
                    if future.status == "error":
                        future.result()  # raises the task's exception
                    bar.update()
            return self.client.gather(futures)
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cpu_count() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def engine(workers: int | None = None, scheduler: str | None = None, threads: int | None = None) -> Engine | None:
    """The engine for the driver's --workers / --scheduler / --threads flags, or None when neither of the
    first two is given (then Dask is not imported)."""
    if workers is None and scheduler is None:
        return None
    if workers is not None and scheduler is not None:
        raise UserError("--workers starts a cluster on this machine and --scheduler uses an existing one; "
                        "give only one of them")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise UserError("--workers/--scheduler need Dask: pip install 'dask[distributed]' "
                        "(or the project's dask extra)") from None
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as err:
            raise UserError(f"cannot reach the Dask scheduler at {scheduler}: {err}") from None
        n = len(client.scheduler_info().get("workers", {}))
        return Engine(client, None, threads, {"kind": "scheduler", "address": scheduler, "workers_at_start": n})
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    import logging

    # The scheduler and nannies live in this process; the driver logs at INFO, which would print every
    # worker start and stop.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    total = threads or cpu_count()
    per_worker = max(1, total // workers)
    # Dask's own default (one BLAS/OpenMP thread per worker) with this machine's share instead of 1.
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}),
               **{k: str(per_worker) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                          "distributed.nanny.pre-spawn-environ": env}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=0,
                               dashboard_address=None, host="127.0.0.1")
        client = Client(cluster)
    return Engine(client, cluster, per_worker,
                  {"kind": "local", "workers": workers, "threads_per_worker": per_worker})
