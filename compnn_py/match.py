"""Compositional nearest-neighbour search: numpy in, numpy out, over the C++ core (compnn_py._core).

Owns the public matching API of the project (DESIGN.md "The matching problem" and "Match results"):

* ``exact``            top-k cosine neighbours of descriptor rows (flat, blocked GEMM);
* ``patches``          top-k over K×K patch descriptors of feature maps (shift-sum, exact);
* ``global_shortlist`` the S database images closest by a global (bottleneck) descriptor;
* ``hierarchical``     global shortlist -> coarse patch candidates -> fine search under them.

Conventions: similarity is cosine computed in float32, and a zero-norm vector (common after ReLU) has
similarity 0 to everything, so a zero query matches the lowest database index. Results do not depend on
the scale of the inputs (any finite float32 values: rows or maps far from 1 are rescaled by a power of
two before the dot products). Ties go to the lowest (row, y, x); results are identical for any
``threads``. ``threads=None`` means every CPU this process may run on; counts above
``max_threads()`` = min(4 x hardware threads, 256) run as that many. Arrays must be C-contiguous
float32 or float16 (np.memmap included); they are passed to C++ without a copy and the GIL is released
while it works; Ctrl-C interrupts a search (KeyboardInterrupt) within about a tenth of a second plus one
work unit.

Every argument check lives in the C++ core (compnn_py._core): bad arguments raise TypeError (not an
array / integer, wrong dtype) or ValueError, with a message that starts with the argument's name;
NaN/Inf are reported when met in the query or in the searched database rows. This module only turns
``threads=None`` into a count and wraps results.

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

__all__ = ["Matches", "exact", "patches", "global_shortlist", "hierarchical", "backend", "max_threads"]


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


def max_threads() -> int:
    """Most worker threads a search uses, whatever ``threads`` asks for."""
    return _core.max_threads()


def _threads(threads):
    """None -> every CPU this process may run on; anything else goes to the core, which checks it."""
    return len(os.sched_getaffinity(0)) if threads is None else threads


def _matches(t) -> Matches:
    return Matches(image=t[0], y=t[1], x=t[2], similarity=t[3])


def exact(queries, database, *, k=1, threads=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours of each query row among the database rows.

    queries (Q, D), database (M, D), float32 or float16 -> (index int64 (Q, k), similarity float32 (Q, k)),
    best first; ties go to the lowest database index.
    """
    return _core.exact(queries, database, None, k, _threads(threads))


def patches(query, database, *, kernel, k=1, rows=None, threads=None) -> Matches:
    """Exact top-k over K×K patch descriptors (kernel=K, 'SAME' zero padding) of a query map.

    query (H, W, C), database (N, H', W', C) float16/float32; rows: optional 1-D integer array of
    database store rows to search (results still name store rows).
    """
    return _matches(_core.patches(query, database, rows, kernel, k, _threads(threads)))


def global_shortlist(query, database, S, *, rows=None, threads=None) -> tuple[np.ndarray, np.ndarray]:
    """The S database images whose global descriptor is closest (cosine) to the query's.

    query: one image's global feature of any shape (flattened); database (N, ...) with N rows of the
    same size -> (rows int32 (S,), similarity float32 (S,)), best first, ties to the lowest row.
    """
    idx, sim = _core.global_shortlist(query, database, rows, S, _threads(threads))
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
    return _matches(_core.hierarchical(query_fine, db_fine, query_coarse, db_coarse, query_global, db_global, rows,
                                       kernel_fine, kernel_coarse, shortlist, coarse_k, margin, k,
                                       _threads(threads)))
