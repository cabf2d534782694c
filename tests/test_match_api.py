"""The public conventions of compnn_py.match: any real float array is accepted (float32/float16
C-contiguous without a copy, the rest converted with results equal to the explicit float32 ones and to
the naive numpy reference), masked and non-float arrays are refused naming the argument, results are
named (and still unpack as before), every public function is typed and documented with an example,
and those examples run (doctest)."""

import doctest
import inspect
import typing

import numpy as np
import pytest

from compnn_py import _core, match
from naive import naive_patches, naive_topk

PUBLIC = ["exact", "patches", "global_shortlist", "hierarchical", "backend", "max_threads"]


def relu(rng, shape):
    return np.maximum(rng.standard_normal(shape), 0).astype(np.float32)


@pytest.fixture
def maps(rng):
    db = relu(rng, (5, 8, 9, 4))
    q = relu(rng, (8, 9, 4))
    return q, db


def spy(monkeypatch, name):
    """Replace _core.<name> by a wrapper that records the arrays it was given."""
    seen = []
    real = getattr(_core, name)

    def wrapper(*args, **kwargs):
        seen.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(_core, name, wrapper)
    return seen


def test_doctests_of_the_module_pass():
    result = doctest.testmod(match, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted >= 30  # every public function carries a runnable example


def test_every_public_function_is_typed_and_has_an_example():
    for name in PUBLIC:
        fn = getattr(match, name)
        hints = typing.get_type_hints(fn)
        params = [p for p in inspect.signature(fn).parameters]
        assert set(params) <= set(hints), (name, set(params) - set(hints))
        assert "return" in hints, name
        assert ">>> " in (fn.__doc__ or ""), name
    for cls in (match.Neighbours, match.Shortlist, match.Matches):
        assert cls.__doc__ and len(cls.__doc__) > 100


def test_float32_and_float16_contiguous_arrays_pass_without_a_copy(monkeypatch, maps, tmp_path):
    q, db = maps
    mm = np.lib.format.open_memmap(tmp_path / "db.npy", mode="w+", dtype=np.float16, shape=db.shape)
    mm[:] = db
    seen = spy(monkeypatch, "patches")
    match.patches(q, mm, kernel=2)
    assert seen[-1][0] is q and seen[-1][1] is mm
    seen = spy(monkeypatch, "exact")
    flat = db.reshape(-1, 4)
    match.exact(flat[:3], flat)
    assert seen[-1][1] is flat and np.shares_memory(seen[-1][0], flat)


@pytest.mark.parametrize("form", ["float64", "strided", "transposed", "list", "big-endian", "float64-memmap",
                                  "float16-strided"])
def test_converted_inputs_give_the_float32_result(rng, tmp_path, form):
    q = relu(rng, (40, 6))
    d = relu(rng, (300, 6))
    if form == "float16-strided":  # float16 stays float16: compare with the float16 contiguous search
        q, d = q.astype(np.float16), d.astype(np.float16)
    ref_idx, ref_sim = match.exact(q, d, k=3)
    strided = (np.repeat(q, 2, axis=1)[:, ::2], np.repeat(d, 2, axis=1)[:, ::2])
    if form == "float64-memmap":
        np.save(tmp_path / "d.npy", d.astype(np.float64))
    cq, cd = {
        "float64": lambda: (q.astype(np.float64), d.astype(np.float64)),
        "strided": lambda: strided,
        "float16-strided": lambda: strided,
        "transposed": lambda: (np.asfortranarray(q), np.ascontiguousarray(d.T).T),
        "list": lambda: (q.tolist(), d.tolist()),
        "big-endian": lambda: (q.astype(">f4"), d.astype(">f8")),
        "float64-memmap": lambda: (q.astype(np.float64), np.load(tmp_path / "d.npy", mmap_mode="r")),
    }[form]()
    if isinstance(cd, np.ndarray):  # really a form the core alone refuses
        assert not (cd.dtype.kind == "f" and cd.dtype.itemsize <= 4 and cd.dtype.isnative and cd.flags.c_contiguous)
    idx, sim = match.exact(cq, cd, k=3)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(sim, ref_sim)
    naive_idx, naive_sim = naive_topk(q.astype(np.float64), d.astype(np.float64), 3)
    np.testing.assert_allclose(sim, naive_sim, atol=1e-3 if form == "float16-strided" else 1e-5)


def test_every_function_converts_every_array(rng, maps):
    q, db = maps
    q64, db64 = q.astype(np.float64), db[:, ::-1].astype(np.float64)  # float64 and a reversed view
    a = match.patches(q64, db64, kernel=3, k=2)
    b = match.patches(q, np.ascontiguousarray(db[:, ::-1]), kernel=3, k=2)
    for f in ("image", "y", "x", "similarity"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    qd = naive_patches(q, 3).reshape(-1, 36)
    dd = naive_patches(np.ascontiguousarray(db[:, ::-1]), 3).reshape(-1, 36)
    np.testing.assert_allclose(a.similarity[..., 0].reshape(-1), naive_topk(qd, dd, 1)[1][:, 0], atol=1e-5)

    g = db.mean(axis=(1, 2))
    s64 = match.global_shortlist(q.mean(axis=(0, 1)).tolist(), g.astype(np.float64), 3)
    s32 = match.global_shortlist(q.mean(axis=(0, 1)), g, 3)
    np.testing.assert_array_equal(s64.rows, s32.rows)
    np.testing.assert_array_equal(s64.similarity, s32.similarity)

    coarse = db.reshape(5, 4, 2, 3, 3, 4).mean(axis=(2, 4))
    qc = q.reshape(4, 2, 3, 3, 4).mean(axis=(1, 3))
    kw = dict(kernel_fine=2, kernel_coarse=1, shortlist=3, coarse_k=2)
    h64 = match.hierarchical(q64, db.astype(np.float64), query_coarse=qc.astype(np.float64),
                             db_coarse=coarse.astype(np.float64), query_global=qc.mean(axis=(0, 1)).tolist(),
                             db_global=coarse.mean(axis=(1, 2)).astype(np.float64), **kw)
    h32 = match.hierarchical(q, db, query_coarse=qc, db_coarse=coarse, query_global=qc.mean(axis=(0, 1)),
                             db_global=coarse.mean(axis=(1, 2)), **kw)
    for f in ("image", "y", "x", "similarity"):
        np.testing.assert_array_equal(getattr(h64, f), getattr(h32, f))


def test_masked_arrays_are_refused_naming_the_argument(maps):
    q, db = maps
    masked_db = np.ma.masked_array(db, mask=np.zeros(db.shape, bool))
    masked_q = np.ma.masked_array(q)
    with pytest.raises(ValueError, match="^database: masked arrays are not supported"):
        match.patches(q, masked_db, kernel=2)
    with pytest.raises(ValueError, match="^query: masked"):
        match.patches(masked_q, db, kernel=2)
    with pytest.raises(ValueError, match="^queries: masked"):
        match.exact(np.ma.masked_array(q[0]), db[0, 0])
    with pytest.raises(ValueError, match="^query: masked"):
        match.global_shortlist(masked_q, db, 1)
    with pytest.raises(ValueError, match="^db_global: masked"):
        match.hierarchical(q, db, kernel_fine=2, query_coarse=q, db_coarse=db, kernel_coarse=1,
                           query_global=q, db_global=masked_db)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, bool, np.complex64, object, "U3"])
def test_non_float_arrays_are_a_type_error_naming_the_argument(maps, dtype):
    q, db = maps
    with pytest.raises(TypeError, match="^database: expected a real float array"):
        match.patches(q, db.astype(dtype), kernel=2)
    with pytest.raises(TypeError, match="^queries: expected a real float array"):
        match.exact(q[0].astype(dtype), db[0, 0])


def test_unreadable_and_out_of_range_input(maps):
    q, db = maps
    with pytest.raises(TypeError, match="^query: expected a real float array"):
        match.global_shortlist([[1.0, 2.0], [3.0]], db, 1)  # ragged: not an array
    big = q.astype(np.float64)
    big[0, 0, 0] = 1e300
    with pytest.raises(ValueError, match="^query: holds values beyond the float32 range"):
        match.patches(big, db, kernel=2)
    nan = q.astype(np.float64)
    nan[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="^query: contains NaN"):  # the core's check, after conversion
        match.patches(nan, db, kernel=2)


def test_named_results_unpack_as_before_and_give_faiss_order(rng):
    q = relu(rng, (7, 5))
    d = relu(rng, (50, 5))
    res = match.exact(q, d, k=3)
    assert isinstance(res, match.Neighbours) and isinstance(res, tuple)
    index, similarity = res
    ref_idx, ref_sim = naive_topk(q, d, 3)
    np.testing.assert_allclose(similarity, ref_sim, atol=1e-5)
    assert res.index is index and res.similarity is similarity
    assert res.I is index and res.D is similarity
    D, I = res.faiss_order()  # noqa: E741 (faiss's names)
    assert D is similarity and I is index
    assert index.dtype == np.int64 and similarity.dtype == np.float32 and index.shape == (7, 3)

    g = relu(rng, (12, 2, 3))
    sl = match.global_shortlist(g[0], g, 4)
    assert isinstance(sl, match.Shortlist)
    rows, sim = sl
    assert rows is sl.rows and sl.I is rows and sl.D is sim and sl.faiss_order() == (sim, rows)
    assert rows.dtype == np.int32 and rows.shape == (4,) and rows[0] == 0
    ref_rows, ref_s = naive_topk(g[:1].reshape(1, -1), g.reshape(12, -1), 4)
    np.testing.assert_allclose(sim, ref_s[0], atol=1e-5)

    m = match.patches(relu(rng, (3, 3, 2)), relu(rng, (2, 3, 3, 2)), kernel=1, k=2)
    assert [f for f in ("image", "y", "x", "similarity") if getattr(m, f).shape != (3, 3, 2)] == []
