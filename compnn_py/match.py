"""Compositional nearest-neighbour search: numpy in, numpy out, over the C++ core (compnn_py._core).

Owns the public matching API of the project (DESIGN.md "The matching problem" and "Match results"):

* ``exact``            top-k cosine neighbours of descriptor rows (flat, blocked GEMM);
* ``patches``          top-k over K×K patch descriptors of feature maps (shift-sum, exact);
* ``global_shortlist`` the S database images closest by a global (bottleneck) descriptor;
* ``hierarchical``     global shortlist -> coarse patch candidates -> fine search under them.

Conventions: similarity is cosine computed in float32, and a zero-norm vector (common after ReLU) has
similarity 0 to everything, so a zero query matches the lowest database index. Ties go to the lowest
(row, y, x); results are identical for any ``threads``. ``threads=None`` means every CPU this process
may run on. Arrays must be C-contiguous float32 or float16 (np.memmap included); they are passed to
C++ without a copy and the GIL is released while it works. Bad arguments raise TypeError/ValueError
naming the argument; NaN/Inf in a query raise here, in the searched database rows they raise from
the core when met.

Patch descriptors (``kernel=K``) are the K×K×C windows over offsets -(K-1)//2 .. K//2 around each
position, zero padded like a TensorFlow 'SAME' convolution (K = 4: offsets -1, 0, 1, 2).

GEMMs run through OpenBLAS from the ``scipy-openblas32`` wheel when it is installed (about 1.5x
faster than Eigen 3.4 here), else through Eigen; set COMPNN_BLAS=eigen to force Eigen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

try:
    from compnn_py import _core
except ImportError as err:  # pragma: no cover - depends on the install
    raise ImportError(
        "compnn_py._core (the C++ matcher) is not built: run `pip install -e .` from the repository root "
        "(needs a C++17 compiler)"
    ) from err

__all__ = ["Matches", "exact", "patches", "global_shortlist", "hierarchical", "backend"]


@dataclass(frozen=True)
class Matches:
    """Per query position, the k best database positions, best first.

    image: int32 (H, W, k) store row of the matched database image (even when ``rows`` restricted the
    search); y, x: int32 (H, W, k) position in that image's map; similarity: float32 (H, W, k) cosine.
    Positions the hierarchical prune left with fewer than k candidates hold -1 and -inf.
    """

    image: np.ndarray
    y: np.ndarray
    x: np.ndarray
    similarity: np.ndarray


def _use_openblas() -> None:
    if os.environ.get("COMPNN_BLAS", "").lower() == "eigen":
        return
    try:
        import scipy_openblas32
    except ImportError:
        return
    path = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(True))
    _core.set_blas_library(path)  # keeps Eigen when the library cannot be loaded


_use_openblas()


def backend() -> str:
    """Build and GEMM backend in use, for reports."""
    return _core.build_info()


_FLOATS = (np.dtype(np.float32), np.dtype(np.float16))


def _features(name: str, a, ndim: int | None = None, min_ndim: int = 1) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(a).__name__}")
    if a.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected float32 or float16, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {a.shape}")
    if a.ndim < min_ndim:
        raise ValueError(f"{name}: expected at least {min_ndim} dimensions, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (np.ascontiguousarray makes one)")
    return a


def _finite(name: str, a: np.ndarray) -> None:
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or Inf values")


def _int(name: str, v, low: int, high: int | None = None) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(v).__name__}")
    v = int(v)
    if v < low or (high is not None and v > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}: {v} outside {bound}")
    return v


def _threads(threads) -> int:
    if threads is None:
        return len(os.sched_getaffinity(0))
    return _int("threads", threads, 1)


def _rows(rows, n: int) -> list[int]:
    """Validated store rows to search ([] = all n)."""
    if rows is None:
        if n == 0:
            raise ValueError("database: has no rows to search")
        return []
    r = np.asarray(rows)
    if r.ndim != 1 or (r.size and not np.issubdtype(r.dtype, np.integer)):
        raise TypeError(f"rows: expected a 1-D integer array, got dtype {r.dtype} shape {r.shape}")
    if r.size == 0:
        raise ValueError("rows: is empty")
    if r.min() < 0 or r.max() >= n:
        raise ValueError(f"rows: values must lie in [0, {n}), got [{r.min()}, {r.max()}]")
    if np.unique(r).size != r.size:
        raise ValueError("rows: contains duplicates")
    return r.astype(np.int64).tolist()


def _matches(t) -> Matches:
    return Matches(image=t[0], y=t[1], x=t[2], similarity=t[3])


def exact(queries, database, *, k=1, threads=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours of each query row among the database rows.

    queries (Q, D), database (M, D), float32 or float16 -> (index int64 (Q, k), similarity float32 (Q, k)),
    best first; ties go to the lowest database index.
    """
    q = _features("queries", queries, ndim=2)
    d = _features("database", database, ndim=2)
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"database: {d.shape[1]} dims do not match queries' {q.shape[1]}")
    if d.shape[0] == 0:
        raise ValueError("database: has no rows to search")
    if q.shape[1] == 0:
        raise ValueError("queries: have 0 dims")
    k = _int("k", k, 1, d.shape[0])
    _finite("queries", q)
    return _core.exact(q, d, [], k, _threads(threads))


def _check_maps(query, database, qname, dname):
    q = _features(qname, query, ndim=3)
    d = _features(dname, database, ndim=4)
    if q.shape[2] != d.shape[3]:
        raise ValueError(f"{dname}: {d.shape[3]} channels do not match {qname}'s {q.shape[2]}")
    if q.shape[2] == 0:
        raise ValueError(f"{qname}: has no channels")
    _finite(qname, q)
    return q, d


def patches(query, database, *, kernel, k=1, rows=None, threads=None) -> Matches:
    """Exact top-k over K×K patch descriptors (kernel=K, 'SAME' zero padding) of a query map.

    query (H, W, C), database (N, H', W', C) float16/float32; rows: optional 1-D integer array of
    database store rows to search (results still name store rows).
    """
    q, d = _check_maps(query, database, "query", "database")
    kernel = _int("kernel", kernel, 1)
    r = _rows(rows, d.shape[0])
    n_pos = (len(r) if r else d.shape[0]) * d.shape[1] * d.shape[2]
    if n_pos == 0:
        raise ValueError("database: has no positions to search")
    k = _int("k", k, 1, n_pos)
    return _matches(_core.patches(q, d, r, kernel, k, _threads(threads)))


def global_shortlist(query, database, S, *, rows=None, threads=None) -> tuple[np.ndarray, np.ndarray]:
    """The S database images whose global descriptor is closest (cosine) to the query's.

    query: one image's global feature of any shape (flattened); database (N, ...) with N rows of the
    same size -> (rows int32 (S,), similarity float32 (S,)), best first, ties to the lowest row.
    """
    q = _features("query", query, min_ndim=0)
    d = _features("database", database, min_ndim=1)
    if d.size // max(d.shape[0], 1) != q.size or (d.shape[0] and q.size == 0):
        raise ValueError(f"database: rows of shape {d.shape[1:]} do not match query of shape {q.shape}")
    r = _rows(rows, d.shape[0])
    S = _int("S", S, 1, len(r) if r else d.shape[0])
    _finite("query", q)
    idx, sim = _core.exact(q.reshape(1, -1), d.reshape(d.shape[0], -1), r, S, _threads(threads))
    return idx[0].astype(np.int32), sim[0]


def hierarchical(query_fine, db_fine, *, kernel_fine, query_coarse, db_coarse, kernel_coarse, query_global,
                 db_global, shortlist=10, coarse_k=8, margin=1, k=1, rows=None, threads=None) -> Matches:
    """The paper's pruned search (sec. 3 "Patch nearest-neighbors"), result on the fine grid.

    1. shortlist the ``shortlist`` images closest by global descriptor (``query_global``/``db_global``);
    2. find the top ``coarse_k`` coarse positions among them for each coarse query position
       (``kernel_coarse`` patches; ``coarse_k=None`` keeps every position, making the prune a no-op);
    3. search fine patches only inside the fine regions under those candidates, widened by ``margin``
       fine positions: fine (y, x) belongs to coarse cell (y*Hc//H, x*Wc//W), and a coarse database
       cell covers the fine positions that map into it the same way.
    ``shortlist = N`` with ``coarse_k=None`` (or every coarse position) reproduces ``patches``.
    """
    qf, df = _check_maps(query_fine, db_fine, "query_fine", "db_fine")
    qc, dc = _check_maps(query_coarse, db_coarse, "query_coarse", "db_coarse")
    qg = _features("query_global", query_global, min_ndim=0)
    dg = _features("db_global", db_global, min_ndim=1)
    n = df.shape[0]
    for name, a in (("db_coarse", dc), ("db_global", dg)):
        if a.shape[0] != n:
            raise ValueError(f"{name}: {a.shape[0]} rows, expected {n} like db_fine")
    if dg.size // max(n, 1) != qg.size:
        raise ValueError(f"db_global: rows of shape {dg.shape[1:]} do not match query_global {qg.shape}")
    _finite("query_global", qg)
    for name, c, f in (("query_coarse", qc.shape[:2], qf.shape[:2]), ("db_coarse", dc.shape[1:3], df.shape[1:3])):
        if not (1 <= c[0] <= f[0] and 1 <= c[1] <= f[1]):
            raise ValueError(f"{name}: grid {c} must be non-empty and no larger than the fine grid {f}")
    kernel_fine = _int("kernel_fine", kernel_fine, 1)
    kernel_coarse = _int("kernel_coarse", kernel_coarse, 1)
    r = _rows(rows, n)
    n_rows = len(r) if r else n
    shortlist = _int("shortlist", shortlist, 1, n_rows)
    coarse_k = 0 if coarse_k is None else _int("coarse_k", coarse_k, 1)
    margin = _int("margin", margin, 0)
    k = _int("k", k, 1, shortlist * df.shape[1] * df.shape[2])
    return _matches(_core.hierarchical(qf, df, qc, dc, qg, dg, r, kernel_fine, kernel_coarse, shortlist,
                                       coarse_k, margin, k, _threads(threads)))
