"""match.patches(certified=True): exact search's answers, bit for bit, through the certified fast search
(the AMX bfloat16 filter for 1x1 patches where the CPU has it, else bounded cells, else exact search
itself), and the analyses' exact searches routed through it. The reference is plain match.patches and,
independently, a naive float64 search."""

import numpy as np
import pytest

from compnn_py import compose, match
from experiments.steps import analyses
from experiments.steps.analyses import analyse_query, search_scope
from naive import naive_patches, naive_topk
from tiny_export import config, make_export


def assert_same(a, b):
    for f in ("image", "y", "x", "similarity"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


@pytest.mark.parametrize("amx_off", ["0", "1"])
@pytest.mark.parametrize("K,k", [(1, 1), (1, 3), (3, 2)])
def test_certified_patches_equal_exact_search(rng, monkeypatch, amx_off, K, k):
    monkeypatch.setenv("COMPNN_NO_AMX", amx_off)
    # Post-ReLU-like maps with many near-ties (rounded values), big enough (>= 512 query positions) for
    # the fast search to run rather than hand over at once.
    db = np.maximum(np.round(rng.standard_normal((4, 24, 32, 8)), 1), 0).astype(np.float16)
    q = np.maximum(np.round(rng.standard_normal((24, 32, 8)), 1), 0).astype(np.float32)
    rows = [3, 0, 2]
    st: dict = {}
    fast = match.patches(q, db, kernel=K, k=k, rows=rows, certified=True, stats=st, threads=2)
    assert_same(fast, match.patches(q, db, kernel=K, k=k, rows=rows, threads=2))
    assert st["pairs"] == 24 * 32 * 3 * 24 * 32
    if K == 1 and amx_off == "0" and match.bf16_filter_ready():
        assert st["filter"] == "amx_bf16"
    else:
        assert st["filter"] == "float32"
    # Independently of both: the naive float64 search's best similarity (ties may pick either index).
    C = q.shape[-1]
    _, sim = naive_topk(naive_patches(q, K).reshape(-1, K * K * C),
                        naive_patches(db[rows].astype(np.float32), K).reshape(-1, K * K * C), k)
    np.testing.assert_allclose(fast.similarity.reshape(-1, k), sim, atol=2e-6)


def test_match_layer_certified_gives_exact_answers_and_its_counts(tmp_path):
    db, query = make_export(tmp_path / "export")
    plain = compose.match_layer(db, query, 0, layer="fine", method="exact", k=2)
    st: dict = {}
    fast = compose.match_layer(db, query, 0, layer="fine", method="exact", k=2, certified=True, stats=st)
    assert_same(fast, plain)
    assert "filter" in st and st["pairs"] > 0   # it went through the certified search
    short = compose.match_layer(db, query, 0, layer="fine", method="shortlist", global_layer="glob", shortlist=3,
                                certified=True)
    assert_same(short, compose.match_layer(db, query, 0, layer="fine", method="shortlist", global_layer="glob",
                                           shortlist=3))


def test_analyses_exact_searches_are_certified(tmp_path, monkeypatch):
    make_export(tmp_path / "export")
    db, _ = make_export(tmp_path / "export2")
    for layer in ("fine", "coarse"):
        kw, _ = search_scope(db, config(), layer, 1)
        assert kw["certified"] is True and kw["method"] in ("exact", "shortlist")
    seen = []
    original = compose.match_layer

    def recording(*args, **kwargs):
        seen.append((kwargs.get("method"), kwargs.get("certified", False)))
        return original(*args, **kwargs)

    monkeypatch.setattr(compose, "match_layer", recording)
    # The tiny export names no sweep layers; the sweep of two of its layers, as an architecture's would.
    monkeypatch.setattr(analyses, "_sweep_layers", lambda db: ["coarse", "fine"])
    out = tmp_path / "figures"
    out.mkdir()
    analyse_query(tmp_path / "export", config(), 0, out_dir=out, method="hierarchical", threads=1)
    scoped = [c for m, c in seen if m in ("exact", "shortlist")]
    assert len(scoped) == 2 and all(scoped), seen   # the layer sweep's searches
