"""Compositional nearest-neighbour search: numpy in, numpy out, over the C++ core (compnn_py._core).

Owns the public matching API of the project:

* ``exact``            top-k cosine neighbours of descriptor rows (flat, blocked GEMM) -> ``Neighbours``;
* ``patches``          top-k over K×K patch descriptors of feature maps (shift-sum, exact) -> ``Matches``;
* ``global_shortlist`` the S database images closest by a global (bottleneck) descriptor -> ``Shortlist``;
* ``hierarchical``     global shortlist -> exact search within it, pruned by certified bounds (or the
                       paper's coarse-to-fine prune) -> ``Matches``.

Search conventions: similarity is cosine, and every search reports the same canonical value for a
pair: float32 GEMMs only filter candidates (with a certified error margin), and the candidates that
may enter the top k are rescored with sums in double of the original values, rounded once to float32.
So exact search, the flattened reference and the bound-pruned search agree bit for bit, ties
included. A zero-norm vector (common after ReLU) has similarity 0 to everything, so a zero query
matches the lowest database index. Results do not depend on the scale of the inputs (any finite
float32 values: rows or maps far from 1 are rescaled by a power of two before the dot products).
``progress`` (where offered): a callable ``progress(done, total)`` called about every 0.1 s from the
calling thread with the work units of the running stage (and once at its end); what it raises stops
the search. Ties go to the lowest (row, y, x); results are identical
for any ``threads``. ``threads=None`` means every CPU this process may run on; counts above
``max_threads()`` = min(4 x hardware threads, 256) run as that many. The GIL is released while C++
works; Ctrl-C interrupts a search (KeyboardInterrupt) within about a tenth of a second plus one work
unit.

Array conventions (every public function, and any one added here, follows them through
``_float_array``):

* C-contiguous native float32 or float16 arrays (``np.memmap`` included, e.g. an ActivationStore
  layer) go to C++ as they are: no copy.
* Any other real float array-like (float64, non-contiguous views, other byte order, lists, a float64
  memmap) is copied once per call into a C-contiguous array: float16 input stays float16 (2 bytes per
  element), anything else becomes float32 (4 bytes per element). The copy's memory is that many bytes
  times the number of elements, e.g. 268 MB for a (1000, 32, 32, 64) database (and a memmap is read
  whole into memory); convert a large database once, not per call. Results equal those of the
  explicitly converted float32 array; a float64 value beyond the float32 range is a ValueError.
* Masked arrays (``np.ma.MaskedArray``) are refused with a ValueError: the matcher would search the
  masked values. Integer, bool, complex, string and object arrays are a TypeError. Both name the
  argument.

Every other argument check lives in the C++ core (compnn_py._core), the one place for them: bad
arguments raise TypeError (an integer argument that is not an integer) or ValueError, with a message
that starts with the argument's name; NaN/Inf are reported when met in the query or in the searched
database rows. This module only converts arrays, turns ``threads=None`` into a count and names results.

Patch descriptors (``kernel=K``) are the K×K×C windows over offsets -(K-1)//2 .. K//2 around each
position, zero padded like a TensorFlow 'SAME' convolution (K = 4: offsets -1, 0, 1, 2).

GEMMs run through OpenBLAS from the ``scipy-openblas32`` wheel when it is installed (about 1.5x
faster than Eigen 3.4 here), else through Eigen; set COMPNN_BLAS=eigen to force Eigen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

try:
    from compnn_py import _core
except ImportError as err:  # pragma: no cover - depends on the install
    raise ImportError(
        "compnn_py._core (the C++ matcher) is not built: run `pip install -e .` from the repository root "
        "(needs a C++17 compiler)"
    ) from err

__all__ = ["Matches", "Neighbours", "Shortlist", "exact", "patches", "global_shortlist", "hierarchical",
           "backend", "max_threads", "bf16_filter_ready", "PatchIndex", "IndexSearch"]

FloatArray = NDArray[np.floating]


class Neighbours(NamedTuple):
    """Result of ``exact``: for each query row its k best database rows, best first.

    It unpacks as ``index, similarity = match.exact(...)``. faiss returns distances first
    (``D, I = index.search(q, k)``); ``.D``/``.I`` and ``faiss_order()`` give that order. ``D`` is the
    cosine similarity (larger is closer), as from a faiss ``IndexFlatIP`` over L2-normalised rows.

    >>> import numpy as np
    >>> from compnn_py import match
    >>> res = match.exact(np.eye(2, dtype=np.float32), np.array([[0, 1], [1, 1]], np.float32))
    >>> res.index.tolist(), res.I.tolist()
    ([[1], [0]], [[1], [0]])
    >>> D, I = res.faiss_order()
    >>> print(D.round(4))
    [[0.7071]
     [1.    ]]
    """

    index: NDArray[np.int64]
    """int64 (Q, k): database row of each neighbour."""
    similarity: NDArray[np.float32]
    """float32 (Q, k): cosine similarity, non-increasing along k."""

    @property
    def I(self) -> NDArray[np.int64]:  # noqa: E743 (faiss's name)
        """faiss's name for ``index``."""
        return self.index

    @property
    def D(self) -> NDArray[np.float32]:
        """faiss's name for the score, here ``similarity`` (cosine: larger is closer)."""
        return self.similarity

    def faiss_order(self) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """``(similarity, index)``: the order of faiss's ``D, I = index.search(...)``."""
        return self.similarity, self.index


class Shortlist(NamedTuple):
    """Result of ``global_shortlist``: the S closest database rows for one query, best first.

    It unpacks as ``rows, similarity = match.global_shortlist(...)``; ``.I``/``.D`` and
    ``faiss_order()`` as for ``Neighbours`` (1-D here: one query).
    """

    rows: NDArray[np.int32]
    """int32 (S,): database (store) rows, best first; ties to the lowest row."""
    similarity: NDArray[np.float32]
    """float32 (S,): cosine similarity of each row's global descriptor to the query's."""

    @property
    def I(self) -> NDArray[np.int32]:  # noqa: E743 (faiss's name)
        """faiss's name for ``rows``."""
        return self.rows

    @property
    def D(self) -> NDArray[np.float32]:
        """faiss's name for the score, here ``similarity``."""
        return self.similarity

    def faiss_order(self) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
        """``(similarity, rows)``: faiss's ``D, I`` order."""
        return self.similarity, self.rows


@dataclass(frozen=True)
class Matches:
    """Result of ``patches`` and ``hierarchical``: per query position its k best database positions.

    Four arrays of shape (H, W, k), the query map's grid by rank (best first):

    * ``image``: int32 store row of the matched database image (a store row even when ``rows``
      restricted the search);
    * ``y``, ``x``: int32 position of the matched patch's centre in that image's map;
    * ``similarity``: float32 cosine between the two K×K patch descriptors, non-increasing along k.

    Positions the hierarchical prune left with fewer than k candidates hold -1 (image, y, x) and -inf.
    """

    image: NDArray[np.int32]
    y: NDArray[np.int32]
    x: NDArray[np.int32]
    similarity: NDArray[np.float32]


def _float_array(a: ArrayLike, name: str) -> np.ndarray:
    """``a`` as a C-contiguous native float32/float16 array for the core; a copy only when needed.

    The module's array conventions (module docstring): float32/float16 C-contiguous pass through,
    other real floats are copied (float16 stays float16, the rest become float32), masked arrays are a
    ValueError and non-float arrays a TypeError, both naming ``name``.
    """
    if isinstance(a, np.ma.MaskedArray):
        raise ValueError(f"{name}: masked arrays are not supported (the masked values would be searched); "
                         f"pass the unmasked rows, e.g. a[~a.mask.any(axis=1)].data")
    if (isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.dtype.itemsize in (2, 4) and a.dtype.isnative
            and a.flags.c_contiguous):
        return a
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: expected a real float array, could not read it as one ({err})") from None
    if arr.dtype.kind != "f":
        raise TypeError(f"{name}: expected a real float array (float32, float16 or float64), got dtype "
                        f"{arr.dtype}; convert it first, e.g. with .astype(np.float32)")
    target = np.float16 if arr.dtype.itemsize == 2 else np.float32
    try:
        with np.errstate(over="raise"):
            return np.ascontiguousarray(arr, dtype=target)
    except FloatingPointError:
        raise ValueError(f"{name}: holds values beyond the {np.dtype(target).name} range "
                         f"(|x| > {float(np.finfo(target).max):.3g})") from None


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
    """Build and GEMM backend in use (Eigen version, SIMD paths, BLAS), for reports.

    >>> from compnn_py import match
    >>> "Eigen" in match.backend()
    True
    """
    return _core.build_info()


def max_threads() -> int:
    """Most worker threads a search uses, whatever ``threads`` asks for: min(4 x hardware threads, 256).

    >>> from compnn_py import match
    >>> 4 <= match.max_threads() <= 256
    True
    """
    return _core.max_threads()


def _threads(threads: int | None) -> object:
    """None -> every CPU this process may run on; anything else goes to the core, which checks it."""
    return len(os.sched_getaffinity(0)) if threads is None else threads


def _matches(t: tuple) -> Matches:
    return Matches(image=t[0], y=t[1], x=t[2], similarity=t[3])


def exact(queries: ArrayLike, database: ArrayLike, *, k: int = 1, threads: int | None = None) -> Neighbours:
    """Top-k cosine neighbours of each query row among the database rows (exact, flat search).

    Args:
      queries: (Q, D) real float array-like; database: (M, D). float32/float16 C-contiguous arrays
        are used in place; anything else is copied to float32 (float16 stays float16) for the call:
        4 bytes x Q x D (and x M x D for the database) extra memory.
      k: neighbours per query, 1 <= k <= M.
      threads: worker threads; None = every CPU this process may use. Results do not depend on it.

    Returns:
      ``Neighbours(index int64 (Q, k), similarity float32 (Q, k))``, best first, ties to the lowest
      database row; unpacks as ``index, similarity``; ``.D, .I`` / ``faiss_order()`` for faiss's order.

    >>> import numpy as np
    >>> from compnn_py import match
    >>> database = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    >>> index, similarity = match.exact([[2.0, 0.2]], database, k=2)   # a list of floats: copied
    >>> index
    array([[0, 2]])
    >>> print(similarity.round(4))
    [[0.995 0.774]]
    """
    q = _float_array(queries, "queries")
    d = _float_array(database, "database")
    return Neighbours(*_core.exact(q, d, None, k, _threads(threads)))


def patches(query: ArrayLike, database: ArrayLike, *, kernel: int, k: int = 1, rows: ArrayLike | None = None,
            threads: int | None = None, progress: Callable[[int, int], object] | None = None,
            certified: bool = False, stats: dict[str, Any] | None = None) -> Matches:
    """Exact top-k nearest K×K patches: for every position of a query feature map, the database
    positions whose surrounding K×K patch is closest in cosine (paper sec. 3, "Patch nearest-neighbors").

    A position's descriptor is the K×K×C block of the map around it (``kernel=K``; offsets
    -(K-1)//2 .. K//2 in y and x, so K = 1 is the pixel itself and K = 4 covers -1..2), flattened into
    one K·K·C vector; the map is zero padded like a TensorFlow 'SAME' convolution, so border
    positions compare their in-map part (their padding adds nothing to dot products or norms). Every
    query position is compared with every position of every searched database image (exact search).

    Args:
      query: (H, W, C) real float array-like, one image's feature map.
      database: (N, H', W', C) maps of N images (H', W' may differ from H, W), e.g. an
        ``ActivationStore`` layer (a float16 memmap: read in place, never copied).
        float32/float16 C-contiguous arrays are used in place; anything else is copied to float32
        (float16 stays float16) for the call: 4 bytes per element extra.
      kernel: K, the patch side, 1 <= K.
      k: matches kept per query position, 1 <= k <= searched positions.
      rows: optional 1-D integer array-like of the database rows (store rows) to search, distinct
        and in range; results still name store rows. None searches all N.
      threads: worker threads; None = every CPU this process may use. Results do not depend on it.
      progress: optional ``progress(done, total)`` callable (module docstring).
      certified: False (default) runs the plain float32 shift-sum search below. True gives the same
        result, bit for bit, through the certified fast search of ``hierarchical(prune="bounds")`` over
        the searched rows (no shortlist): for ``kernel=1`` on a CPU with AMX-BF16
        (``bf16_filter_ready()``) every pair scored in bfloat16 and rescored canonically where its
        certified error bound cannot rule it out; otherwise bounded cells where they prune, else this
        same search. Benchmarks leave it False: it is the reference the fast search is timed against.
      stats: a dict that, with ``certified=True``, receives the counts ``hierarchical`` reports.

    Returns:
      ``Matches`` with ``image``, ``y``, ``x``, ``similarity``, each (H, W, k), best first.

    Memory: no K·K·C descriptors are built. The similarity of two patches is the sum of K·K pixel dot
    products, so the core multiplies query pixels by a tile of database pixels once and adds the
    products at the K·K aligned shifts; it holds one zero-padded float32 copy of the query map
    ((H+K-1)(W+K-1)C values), a few tile-sized buffers per thread and the (H, W, k) results.

    >>> import numpy as np
    >>> from compnn_py import match
    >>> db = np.zeros((2, 3, 3, 1), np.float32)
    >>> db[1, 2, 0, 0] = 1.0                # image 1 has one bright pixel, at y=2, x=0
    >>> query = np.zeros((2, 2, 1))         # float64: copied to float32
    >>> query[0, 1, 0] = 5.0                # one bright pixel at y=0, x=1
    >>> m = match.patches(query, db, kernel=1)
    >>> int(m.image[0, 1, 0]), int(m.y[0, 1, 0]), int(m.x[0, 1, 0]), float(m.similarity[0, 1, 0])
    (1, 2, 0, 1.0)
    >>> m.image.shape                       # (H, W, k); zero positions match the lowest row, similarity 0
    (2, 2, 1)
    >>> match.patches(query, db, kernel=2, rows=[0]).image.max()   # only image 0 searched
    np.int32(0)
    """
    q = _float_array(query, "query")
    d = _float_array(database, "database")
    if not certified:
        return _matches(_core.patches(q, d, rows, kernel, k, _threads(threads), False, progress))
    *res, st = _core.bounded_patches(q, d, rows, kernel, k, _threads(threads), progress)
    if stats is not None:
        stats.update(st)
    return _matches(res)


def global_shortlist(query: ArrayLike, database: ArrayLike, S: int, *, rows: ArrayLike | None = None,
                     threads: int | None = None) -> Shortlist:
    """The S database images whose global descriptor is closest (cosine) to the query's.

    Args:
      query: one image's global feature of any shape (flattened), e.g. its bottleneck activation.
      database: (N, ...) with N rows of the query's size. Arrays are converted as in ``exact``.
      S: images to keep, 1 <= S <= searched rows.
      rows: optional 1-D integer array-like of database rows to choose from (as in ``patches``).
      threads: worker threads; None = every CPU this process may use.

    Returns:
      ``Shortlist(rows int32 (S,), similarity float32 (S,))``, best first, ties to the lowest row;
      unpacks as ``rows, similarity``.

    >>> import numpy as np
    >>> from compnn_py import match
    >>> db = np.array([[[1, 0]], [[0, 1]], [[1, 1]]], np.float32)    # N = 3 images, features (1, 2)
    >>> best = match.global_shortlist(np.array([[0.0, 3.0]]), db, 2)
    >>> best.rows, best.similarity.round(4)
    (array([1, 2], dtype=int32), array([1.    , 0.7071], dtype=float32))
    """
    q = _float_array(query, "query")
    d = _float_array(database, "database")
    idx, sim = _core.global_shortlist(q, d, rows, S, _threads(threads))
    return Shortlist(idx[0].astype(np.int32), sim[0])


def bf16_filter_ready() -> bool:
    """Whether ``hierarchical(prune="bounds")`` scores 1x1 patches in bfloat16 on AMX tiles here: the
    CPU has AMX-BF16 (Intel Xeon since Sapphire Rapids), the OS lets this process use the tiles, and
    the environment variable COMPNN_NO_AMX is unset or "0" (read at every search). Answers are the
    same either way; only the time differs."""
    return bool(_core.amx_bf16_ready())


def hierarchical(query_fine: ArrayLike, db_fine: ArrayLike, *, kernel_fine: int, query_coarse: ArrayLike,
                 db_coarse: ArrayLike, kernel_coarse: int, query_global: ArrayLike, db_global: ArrayLike,
                 shortlist: int = 10, coarse_k: int | None = 8, margin: int = 1, k: int = 1,
                 rows: ArrayLike | None = None, threads: int | None = None, prune: str = "bounds",
                 progress: Callable[[int, int], object] | None = None,
                 stats: dict[str, Any] | None = None) -> Matches:
    """The paper's hierarchical search (sec. 3 "Patch nearest-neighbors"), result on the fine grid.

    1. shortlist the ``shortlist`` images closest by global descriptor (``query_global``/``db_global``);
    2. search the fine patches of those images:

       * ``prune="bounds"`` (default): exactly, the result equal to ``patches(..., rows=<shortlist>)``
         bit for bit, but pruned by certified bounds: database positions are grouped into small cells
         with a centroid and an angular radius, and a cell is skipped for a block of query positions
         once the cosine bound of every query to it lies below the k-th best already found. A few pilot
         blocks measure the prune first; where it would not pay (more than a fifth of the pairs scored) the
         search is plain exact search. The coarse maps, ``coarse_k`` and ``margin`` are not used.
         With ``kernel_fine=1`` on a CPU with AMX-BF16 (``bf16_filter_ready()``), every pair is instead
         scored in bfloat16 on AMX tiles (at many times float32's rate) and rescored canonically
         unless a certified bound on the bfloat16 rounding puts it below the k-th best, and blocks of
         4x8 query and 4x8 database pixels whose cone bound rules them out whole are skipped (trained
         features): the same result again, bit for bit.
       * ``prune="coarse"``: the paper's prune, which may miss the best match: the top ``coarse_k``
         coarse positions for each coarse query position (``kernel_coarse`` patches; ``coarse_k=None``
         keeps every position, making the prune a no-op), then fine patches only inside the fine regions
         under those candidates, widened by ``margin`` fine positions: fine (y, x) belongs to coarse cell
         (y*Hc//H, x*Wc//W), and a coarse database cell covers the fine positions that map into it the
         same way. ``shortlist = N`` with ``coarse_k=None`` reproduces ``patches``.

    Arrays: ``query_fine`` (H, W, C) / ``db_fine`` (N, H', W', C), ``query_coarse`` (Hc, Wc, C') /
    ``db_coarse`` (N, Hc', Wc', C'), ``query_global`` (any shape) / ``db_global`` (N, ...); each is
    converted as in ``patches`` (float32/float16 C-contiguous in place, anything else copied).
    ``rows``, ``k``, ``threads``, ``progress`` as in ``patches``. ``stats``: a dict that, with
    ``prune="bounds"``, receives ``pairs`` (query x database positions), ``pairs_scored`` (those
    compared exactly), ``pilot_fraction`` (of the pilot blocks' pairs scored before they decided) and
    ``used_bounds`` (False: plain exact search ran, the pilot blocks scoring more than a fifth of their
    pairs) and ``filter`` (``"float32"``, or ``"amx_bf16"`` with ``pairs_rescored``: the pairs the
    bfloat16 bound let through to canonical rescoring; there ``pairs_scored`` counts the pairs of the
    blocks multiplied and ``used_bounds`` whether a group bound skipped any).

    Returns:
      ``Matches`` (H, W, k) on the fine grid; with ``prune="coarse"``, positions left with fewer than k
      candidates hold -1/-inf.

    >>> import numpy as np
    >>> from compnn_py import match
    >>> rng = np.random.default_rng(0)
    >>> fine = rng.random((6, 8, 8, 3), dtype=np.float32)           # query + 5 database images
    >>> coarse = fine.reshape(6, 4, 2, 4, 2, 3).mean(axis=(2, 4))   # 2x2 average pooling
    >>> glob = coarse.mean(axis=(1, 2))
    >>> kw = dict(kernel_fine=3, query_coarse=coarse[0], db_coarse=coarse[1:], kernel_coarse=1,
    ...           query_global=glob[0], db_global=glob[1:], shortlist=2)
    >>> m = match.hierarchical(fine[0], fine[1:], **kw)
    >>> short = match.global_shortlist(glob[0], glob[1:], 2).rows
    >>> ref = match.patches(fine[0], fine[1:], kernel=3, rows=short)
    >>> bool((m.image == ref.image).all() and (m.similarity == ref.similarity).all())
    True
    >>> match.hierarchical(fine[0], fine[1:], prune="coarse", coarse_k=3, **kw).image.shape
    (8, 8, 1)
    """
    arrays = [_float_array(a, n) for a, n in ((query_fine, "query_fine"), (db_fine, "db_fine"),
                                              (query_coarse, "query_coarse"), (db_coarse, "db_coarse"),
                                              (query_global, "query_global"), (db_global, "db_global"))]
    *res, st = _core.hierarchical(*arrays, rows, kernel_fine, kernel_coarse, shortlist, coarse_k, margin, k,
                                  _threads(threads), prune, progress)
    if stats is not None:
        stats.update(st)
    return _matches(res)


# ---- prepared index (appended for the provenance explorer, experiments/explore.py) ------------------

class IndexSearch(NamedTuple):
    """Result of ``PatchIndex.search_images``: the top-k and each searched image's best position.

    It unpacks as ``top, per_image = index.search_images(...)``.
    """

    top: Matches
    """``Matches`` of (P, k) arrays: for each query position, the best database positions, best first."""
    per_image: Matches
    """``Matches`` of (P, R) arrays: for each query position and each searched store row (in ``rows``
    order, else 0..N-1), that image's best position and its similarity."""


class PatchIndex:
    """A database of feature maps prepared once for many exact patch searches of a few query positions.

    ``PatchIndex(database, kernel=K)`` checks the maps (N, H, W, C) and keeps each map's power-of-two
    scale and the inverse norm of every K×K patch (4 bytes per position, ``prepared_bytes``). The maps
    follow the module's array conventions: float32/float16 C-contiguous arrays (an ActivationStore
    layer's float16 memmap included) are borrowed in place, never copied, and must stay unchanged while
    the index is used; anything else is copied once, here (float16 stays float16, the rest becomes
    float32), and the index keeps that copy.

    ``search(query_map, positions)`` then returns, for each query position (y, x) of ``query_map``
    (H', W', C), the exact top-k over every position of every database map (or of the store rows in
    ``rows``): exactly what ``patches`` gives for those positions, to the bit (the same canonical
    similarities of the zero-padded K×K×C descriptors, offsets -(K-1)//2 .. K//2, and tie rule, lowest
    (row, y, x)), identical for any ``threads``. A search reads each searched map once (float16 converted on the fly) and needs
    K·K·C multiply-adds per database position and query position; several threads may search at once.
    Only the K×K patches of the given positions are read from ``query_map`` (NaN/Inf are reported when
    met there; each patch is rescaled on its own when its values lie far from 1).

    >>> import numpy as np
    >>> from compnn_py import match
    >>> db = np.zeros((2, 3, 3, 1), np.float32)
    >>> db[1, 2, 0, 0] = 1.0                             # image 1 has one bright pixel, at y=2, x=0
    >>> index = match.PatchIndex(db, kernel=1)
    >>> m = index.search(np.ones((4, 4, 1)), [(0, 3)], k=2)   # float64 query: copied to float32
    >>> m.image.tolist(), m.y.tolist(), m.x.tolist(), m.similarity.tolist()
    ([[1, 0]], [[2, 0]], [[0, 0]], [[1.0, 0.0]])
    >>> top, per_image = index.search_images(np.ones((4, 4, 1), np.float32), [(0, 3)])
    >>> per_image.similarity.tolist()                    # each image's best: image 0 is all zeros
    [[0.0, 1.0]]
    """

    def __init__(self, database: ArrayLike, *, kernel: int, threads: int | None = None) -> None:
        self.database = _float_array(database, "database")
        self._index = _core.PatchIndex(self.database, kernel, _threads(threads))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, H, W, C) of the database."""
        return tuple(int(v) for v in self._index.shape)

    @property
    def kernel(self) -> int:
        """K, the patch side."""
        return int(self._index.kernel)

    @property
    def prepared_bytes(self) -> int:
        """Memory the index keeps besides the database: 4 bytes per database position (+ 2 per map)."""
        return int(self._index.prepared_bytes)

    def search(self, query_map: ArrayLike, positions: ArrayLike, *, k: int = 1, rows: ArrayLike | None = None,
               threads: int | None = None) -> Matches:
        """Top-k database positions for each query position.

        Args:
          query_map: (H', W', C) real float array-like (converted as the module's conventions say).
          positions: (P, 2) integer array-like of (y, x) in ``query_map``'s grid.
          k: matches per position, 1 <= k <= searched positions.
          rows: optional 1-D integer array-like of store rows to search (as in ``patches``).
          threads: worker threads; None = every CPU this process may use. Results do not depend on it.

        Returns:
          ``Matches`` of (P, k) arrays, best first, ties to the lowest (row, y, x).
        """
        top, _ = self._index.search(_float_array(query_map, "query_map"), positions, rows, k, _threads(threads),
                                    False)
        return _matches(top)

    def search_images(self, query_map: ArrayLike, positions: ArrayLike, *, k: int = 1,
                      rows: ArrayLike | None = None, threads: int | None = None) -> IndexSearch:
        """``search`` plus each searched image's best position, in the same pass over the database
        (how ambiguous a source is: how close the best position of another image comes)."""
        top, per_image = self._index.search(_float_array(query_map, "query_map"), positions, rows, k,
                                            _threads(threads), True)
        return IndexSearch(top=_matches(top), per_image=_matches(per_image))
