"""The compnn stage's matcher choice, its exact-comparison defaults, and the agreements it reports
(hierarchical vs exact within the shortlist and over all) against a naive float64 computation."""

import json

import numpy as np
import pytest

from compnn_py import compose, match
from experiments.errors import UserError
from experiments.steps import compnn as step
from naive import naive_patches, naive_topk
from tiny_export import LAYERS, MATCH_SPEC, SPEC, config, make_export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    db, query = make_export(d)
    return d, db, query


def test_exact_query_count_rule():
    all_b, cap = step.EXACT_ALL_BUDGET, step.EXACT_QUERY_CAP
    assert step.exact_query_count(None, 10, all_b / 10)[0] == 10            # every query fits the budget
    assert step.exact_query_count(None, 10, all_b / 10 * 1.01)[0] == step.DEFAULT_EXACT_QUERIES == 3
    assert step.exact_query_count(None, 2, cap)[0] == 2                     # never more than there are
    n, rule = step.exact_query_count(None, 10, cap * 1.01)
    assert n == 0 and "--exact_queries" in rule                             # one query alone is too slow
    assert step.exact_query_count(5, 3, cap * 10)[0] == 3                   # an explicit count wins
    assert step.exact_query_count(0, 3, 1.0)[0] == 0
    with pytest.raises(UserError, match="exact_queries"):
        step.exact_query_count(-1, 3, 1.0)


def test_search_cost_and_method_choice(export, monkeypatch):
    _, db, _ = export
    (h, w, c), k, _ = LAYERS["fine"]
    assert step.search_cost(db, "fine", 7) == (h * w) * 7 * (h * w) * c * k * k
    assert step.choose_method(db, config())[0] == "shortlist"
    monkeypatch.setattr(step, "SHORTLIST_BUDGET", step.search_cost(db, "fine", 3) - 1)
    assert step.choose_method(db, config(shortlist=3))[0] == "hierarchical"
    assert step.choose_method(db, config(shortlist=2))[0] == "shortlist"


def test_shortlist_method_is_the_unpruned_hierarchical_search(export):
    _, db, query = export
    kw = dict(layer="fine", global_layer="glob", shortlist=3, threads=1)
    for q in range(len(query)):
        a = compose.match_layer(db, query, q, method="shortlist", **kw)
        b = compose.match_layer(db, query, q, method="hierarchical", coarse_layer="coarse", coarse_k=None, **kw)
        for name in ("image", "y", "x", "similarity"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def _naive_matches(qmap, dmaps, rows, K):
    """Top-1 (row, y, x) per query position by float64 brute force over the given database rows."""
    h, w = qmap.shape[:2]
    qd = naive_patches(qmap, K).reshape(h * w, -1)
    dd = naive_patches(dmaps[rows], K)
    hd, wd = dd.shape[1:3]
    best, _ = naive_topk(qd, dd.reshape(len(rows) * hd * wd, -1), 1)
    best = best[:, 0]
    return np.stack([np.asarray(rows)[best // (hd * wd)], (best // wd) % hd, best % wd]).reshape(3, h, w)


def _naive_output(m, targets, s):
    """Pixel (y, x) copies the target pixel under its native match, offset kept (stride s)."""
    H, W = targets.shape[1:3]
    yy, xx = np.mgrid[:H, :W]
    img, my, mx = (a[yy // s, xx // s] for a in m)
    return targets[img, my * s + yy % s, mx * s + xx % s]


def _counts(r, x, y):
    (a, oa), (b, ob) = r[x], r[y]
    same_img = a[0] == b[0]
    same = same_img & (a[1] == b[1]) & (a[2] == b[2])
    return np.array([(oa == ob).sum(), oa.size, same_img.sum(), same.sum(), same_img.size])


def _naive_reference(db, query, cfg, prune):
    """Per query: naive exact over all, naive exact within the naive global shortlist, and the pruned
    search (the matcher's own, tested elsewhere) as index maps, plus their composed SS outputs."""
    K, s = LAYERS["fine"][1], LAYERS["fine"][2]
    fine, glob, targets = np.asarray(db.layer("fine")), np.asarray(db.layer("glob")), np.asarray(db.cnn_outputs)
    out = []
    for q in range(len(query)):
        qf = np.asarray(query.layer("fine")[q])
        short, _ = naive_topk(np.asarray(query.layer("glob")[q]).reshape(1, -1), glob.reshape(len(db), -1),
                              cfg.shortlist)
        ex = _naive_matches(qf, fine, np.arange(len(db)), K)
        sl = _naive_matches(qf, fine, np.sort(short[0]), K)
        hm = prune(q)
        hi = np.stack([hm.image[..., 0], hm.y[..., 0], hm.x[..., 0]])
        out.append({m: (a, _naive_output(a, targets, s)) for m, a in (("exact", ex), ("shortlist", sl),
                                                                       ("hierarchical", hi))})
    return out


def _fractions(counts):
    c = np.sum(counts, axis=0)
    return {"same_label": c[0] / c[1], "same_source_image": c[2] / c[4], "same_match": c[3] / c[4],
            "n_queries": len(counts)}


def _check(reported, expected):
    assert reported["n_queries"] == expected["n_queries"]
    for key in ("same_label", "same_source_image", "same_match"):
        assert reported[key] == pytest.approx(expected[key], abs=1e-12), key


@pytest.mark.parametrize("fast", ["shortlist", "hierarchical"])
def test_agreements_against_naive(export, tmp_path, monkeypatch, fast):
    d, db, query = export
    cfg = config()
    if fast == "hierarchical":  # make exact-within-shortlist "too expensive" to be the Table 1 matcher
        monkeypatch.setattr(step, "SHORTLIST_BUDGET", 0.0)
    n_exact = 2
    step.run_compnn(tmp_path, cfg, SPEC, d, "both", 1, exact_queries=n_exact)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["table1_matching"] == m["matcher"]["method"] == fast and m["matcher"]["why"]

    def prune(q):
        return compose.match_layer(db, query, q, **step.match_kwargs(cfg, MATCH_SPEC, "hierarchical", 1),
                                   layer="fine")

    ref = _naive_reference(db, query, cfg, prune)
    n_within = len(query) if fast == "shortlist" else n_exact
    within = [_counts(r, "hierarchical", "shortlist") for r in ref[:n_within]]
    over = [_counts(r, "hierarchical", "exact") for r in ref[:n_exact]]
    short_over = [_counts(r, "shortlist", "exact") for r in ref[:n_exact]]
    _check(m["hierarchical_vs_exact"]["within_shortlist"], _fractions(within))
    _check(m["hierarchical_vs_exact"]["over_all"], _fractions(over))
    _check(m["shortlist_vs_exact"]["over_all"], _fractions(short_over))
    # The certified prune keeps exact-within-shortlist's answers, and metrics.json says what it did.
    assert m["hierarchical_vs_exact"]["within_shortlist"]["same_match"] == 1
    assert m["bound_prune"]["rule"] and 0 < m["bound_prune"]["pairs_scored_fraction"] <= 1
    # Per query (the report's click view quotes its own): each compared query's fraction, None elsewhere.
    for group, scope, counts in (("shortlist_vs_exact", "over_all", short_over),
                                 ("hierarchical_vs_exact", "within_shortlist", within)):
        per = m[group][scope]["per_query_same_source_image"]
        assert per[len(counts):] == [None] * (len(query) - len(counts))
        assert per[:len(counts)] == pytest.approx([c[2] / c[4] for c in counts], abs=1e-12)
    assert m["exact_reference"]["over_all"]["n_queries"] == n_exact
    assert set(m["seconds_per_image"]) == {"exact", "shortlist", "hierarchical"}
    # Table 1 and the sources come from the chosen matcher, as the naive computation has them.
    sources = np.load(tmp_path / "sources.npy")
    np.testing.assert_array_equal(sources, np.stack([r[fast][0] for r in ref]))
    outputs = np.load(tmp_path / "outputs.npz")
    np.testing.assert_array_equal(outputs["CompNN_(SS)"], np.stack([r[fast][1] for r in ref]))
    np.testing.assert_array_equal(outputs["CompNN_(O)"],
                                  np.stack([_naive_output(r[fast][0], np.asarray(db.labels), 2) for r in ref]))


def test_default_exact_counts_follow_the_rule(export, tmp_path, monkeypatch):
    d, db, query = export
    cost_all = step.search_cost(db, "fine", len(db))
    # Budget below the whole query set but above one query: the first 3 get exact over all.
    monkeypatch.setattr(step, "EXACT_ALL_BUDGET", cost_all * (len(query) - 0.5))
    step.run_compnn(tmp_path, config(), SPEC, d, "both", 1)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["hierarchical_vs_exact"]["over_all"]["n_queries"] == 3
    assert m["hierarchical_vs_exact"]["within_shortlist"]["n_queries"] == len(query)
    assert "first 3" in m["exact_reference"]["over_all"]["rule"]


def test_single_method_runs_only_that_method(export, tmp_path):
    d, _, query = export
    step.run_compnn(tmp_path, config(), SPEC, d, "hierarchical", 1)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["table1_matching"] == "hierarchical" and set(m["seconds_per_image"]) == {"hierarchical"}
    assert "hierarchical_vs_exact" not in m
    with pytest.raises(UserError, match="shortlist"):
        step.run_compnn(tmp_path, config(shortlist=99), SPEC, d, "both", 1)
