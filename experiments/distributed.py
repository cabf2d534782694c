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

Every wait on a scheduler is bounded and ends in one line (UserError): before Dask connects, the
address is probed with a plain socket (CONNECT_TIMEOUT_S to connect; a Dask scheduler then sends its
handshake at once, a frame whose 8-byte length is small; a peer silent for a second is sent an
HTTP HEAD request, so that an HTTP server answers: an endpoint that sends nothing within
CONNECT_TIMEOUT_S, or bytes such as "HTTP/1.0" that read as an absurd length, is not a scheduler and
is refused, instead of hanging or allocating exabytes); the Dask connection itself gets the same bound;
a scheduler with no workers is waited on for WORKER_WAIT_S; and while tasks run, a cluster that has
had no worker for WORKER_WAIT_S ends the stage.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

from experiments.errors import UserError

ALLOWED_FAILURES = 3
CONNECT_TIMEOUT_S = 20.0       # to connect to a scheduler and receive its handshake
WORKER_WAIT_S = 120.0          # for a first worker, and for a worker again when all have left
MAX_HANDSHAKE_FRAME = 2**26    # a scheduler's handshake is a few hundred bytes


def probe_scheduler(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise UserError unless `address` (tcp://host:port) answers like a Dask scheduler within `timeout`:
    it accepts a connection and sends a handshake frame of plausible length."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.scheme not in ("tcp", "") or not parsed.hostname or parsed.port is None:
        raise UserError(f"--scheduler must be tcp://HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout) as sock:
            head, asked = b"", False
            deadline = time.monotonic() + timeout
            while len(head) < 16:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout
                # A scheduler speaks first; a silent peer is asked like an HTTP server (which then answers).
                sock.settimeout(min(left, 1.0) if not asked else left)
                try:
                    chunk = sock.recv(16 - len(head))
                except socket.timeout:
                    if asked:
                        raise
                    sock.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
                    asked = True
                    continue
                if not chunk:
                    break
                head += chunk
    except socket.timeout:
        raise UserError(f"--scheduler {address}: connected, but it sent nothing within {timeout:.0f} s; "
                        "not a Dask scheduler (a silent or different service on that port?)") from None
    except OSError as err:
        raise UserError(f"cannot reach the Dask scheduler at {address}: {err.strerror or err}") from None
    if len(head) < 8:
        raise UserError(f"--scheduler {address}: it closed the connection without a Dask handshake; "
                        "not a Dask scheduler")
    (first,) = struct.unpack("<Q", head[:8])
    if first > MAX_HANDSHAKE_FRAME:
        shown = head.decode("latin-1").split("\r")[0].split("\n")[0]
        raise UserError(f"--scheduler {address}: it answered {shown!r}..., not a Dask handshake; "
                        "not a Dask scheduler (an HTTP server? the dashboard's port?)")


def _bounded(call: Callable[[], Any], timeout: float, message: str) -> Any:
    """call() in a daemon thread, waiting at most `timeout` s; UserError(message) when it takes longer
    (the thread is abandoned: the driver ends with the error)."""
    result: dict[str, Any] = {}

    def target():
        try:
            result["value"] = call()
        except BaseException as err:  # handed to the waiting thread
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True, name="dask-connect")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise UserError(message)
    if "error" in result:
        raise result["error"]
    return result["value"]


class Engine:
    """A Dask client and, for --workers, the LocalCluster it owns. `map` runs tasks; close() ends both."""

    def __init__(self, client, cluster, threads: int | None, info: dict[str, Any],
                 worker_wait: float = WORKER_WAIT_S):
        self.client, self.cluster, self.threads, self.info = client, cluster, threads, info
        self.worker_wait = worker_wait

    def describe(self) -> dict[str, Any]:
        """What ran the tasks, for metrics.json."""
        return dict(self.info, threads_per_task=self.threads)

    def map(self, fn: Callable[..., Any], items: Sequence[Sequence[Any]], *, desc: str = "tasks",
            **kwargs: Any) -> list[Any]:
        """[fn(*item, **kwargs) for item in items], run as tasks; results in the order of `items`. A task's
        exception is raised here (after the others were cancelled). A cluster left without workers for
        `worker_wait` seconds ends it with UserError."""
        from distributed import wait
        from compnn_py.progress import Progress

        if not items:
            return []
        futures = [self.client.submit(fn, *item, pure=False, **kwargs) for item in items]
        try:
            with Progress(total=len(futures), desc=desc, unit="task") as bar:
                pending, idle_since = set(futures), None
                while pending:
                    try:
                        done, pending = wait(list(pending), timeout=min(5.0, self.worker_wait),
                                             return_when="FIRST_COMPLETED")
                    except TimeoutError:
                        done = set()
                    for future in done:
                        if future.status == "error":
                            future.result()  # raises the task's exception
                    bar.update(len(done))
                    if done or self._workers():
                        idle_since = None
                    elif idle_since is None:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since > self.worker_wait:
                        raise UserError(f"{desc}: the Dask cluster has had no worker for {self.worker_wait:.0f} s "
                                        f"with {len(pending)} task(s) left; start workers or rerun without "
                                        "--scheduler")
            return self.client.gather(futures)
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def _workers(self) -> int:
        try:
            return len(self.client.scheduler_info().get("workers", {}))
        except (OSError, TimeoutError):
            return 0

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


def engine(workers: int | None = None, scheduler: str | None = None, threads: int | None = None, *,
           connect_timeout: float = CONNECT_TIMEOUT_S, worker_wait: float = WORKER_WAIT_S) -> Engine | None:
    """The engine for the driver's --workers / --scheduler / --threads flags, or None when neither of the
    first two is given (then Dask is not imported). Waits on a scheduler are bounded (module docstring)."""
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
        probe_scheduler(scheduler, connect_timeout)
        try:
            client = _bounded(lambda: Client(scheduler, timeout=f"{connect_timeout}s"), connect_timeout + 5,
                              f"the Dask scheduler at {scheduler} did not complete a connection within "
                              f"{connect_timeout + 5:.0f} s")
        except (OSError, TimeoutError, ValueError, MemoryError) as err:
            raise UserError(f"cannot connect to the Dask scheduler at {scheduler}: {type(err).__name__}: "
                            f"{' '.join(str(err).split())[:200]}") from None
        try:
            client.wait_for_workers(1, timeout=worker_wait)
        except (TimeoutError, OSError):
            client.close()
            raise UserError(f"the Dask scheduler at {scheduler} has no workers (waited {worker_wait:.0f} s); "
                            f"start one per machine with `dask worker {scheduler} --nthreads 1`") from None
        n = len(client.scheduler_info().get("workers", {}))
        return Engine(client, None, threads, {"kind": "scheduler", "address": scheduler, "workers_at_start": n},
                      worker_wait=worker_wait)
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
