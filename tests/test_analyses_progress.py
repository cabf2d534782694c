"""Every search of the analyses stage names itself to the progress display (a search over 10 s then shows
its blocks and ETA inside the image): reconstruction, bias modification, activation prediction and the
layer sweep alike. Checked by recording what each call of compose.match_layer receives."""

from compnn_py import compose
from experiments.steps.analyses import analyse_query
from tiny_export import config, make_export


def test_every_analysis_search_has_a_progress_label(tmp_path, monkeypatch):
    make_export(tmp_path / "export")
    export = tmp_path / "export"
    seen = []
    original = compose.match_layer

    def recording(*args, **kwargs):
        seen.append(kwargs.get("progress"))
        return original(*args, **kwargs)

    monkeypatch.setattr(compose, "match_layer", recording)
    out = tmp_path / "figures"
    out.mkdir()
    analyse_query(export, config(), 0, out_dir=out, method="hierarchical", threads=1)
    assert len(seen) >= 3 and all(seen), seen   # reconstruction, the 2 bias databases (+ sweep, activations)
    assert any("reconstruction" in p for p in seen) and any("bias" in p for p in seen)
