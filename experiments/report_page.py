"""report.html: one offline page with Table 1, the per-query panels, and every analysis figure.

Pointing at a pixel of a CompNN output shows the training image and the patch it was copied from.
The per-query source arrays are written as small `sources/<n>.js` files that the page loads on
demand through <script> tags, which (unlike fetch/XHR) also work when the page is opened from disk.
No external assets or libraries.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass
class QueryEntry:
    query_id: str
    panel: str              # path relative to the report, the paper-style panel PNG
    compnn: str             # path relative to the report, the CompNN output PNG users point at
    image: np.ndarray       # int32 (h, w): store row of the source training image per native position
    y: np.ndarray           # int32 (h, w): source native row
    x: np.ndarray           # int32 (h, w): source native column
    stride: int             # output pixels per native position


_SCRIPT = r"""
const SRC = {};
function loadSource(q, done) {
  if (SRC[q]) return done(SRC[q]);
  const s = document.createElement('script');
  s.src = 'sources/' + q + '.js';
  s.onload = () => done(SRC[q]);
  document.head.appendChild(s);
}
function explain(ev, q) {
  const img = ev.target, r = img.getBoundingClientRect();
  loadSource(q, d => {
    const px = Math.floor((ev.clientX - r.left) / r.width * img.naturalWidth);
    const py = Math.floor((ev.clientY - r.top) / r.height * img.naturalHeight);
    const ny = Math.min(d.h - 1, Math.floor(py / d.stride)), nx = Math.min(d.w - 1, Math.floor(px / d.stride));
    const k = ny * d.w + nx, row = d.image[k], sy = d.y[k], sx = d.x[k];
    const box = document.getElementById('src-' + q);
    const t = box.querySelector('img'), m = box.querySelector('.mark'), c = box.querySelector('.cap');
    t.src = 'train_images/' + row + '.png';
    t.onload = () => {
      const sc = t.clientWidth / t.naturalWidth;
      m.style.left = (sx * d.stride * sc) + 'px'; m.style.top = (sy * d.stride * sc) + 'px';
      m.style.width = m.style.height = Math.max(3, d.stride * sc) + 'px';
    };
    t.onload();
    c.textContent = 'output pixel (' + py + ', ' + px + ') <- training image ' + d.ids[row] +
                    ' (row ' + row + '), native position (' + sy + ', ' + sx + ')';
  });
}
"""

_STYLE = """
body{font-family:sans-serif;margin:20px;max-width:1400px} table{border-collapse:collapse}
td,th{border:1px solid #aaa;padding:3px 8px;text-align:right} th{background:#eee}
img.px{image-rendering:pixelated} .q{margin:18px 0;padding:8px;border-top:1px solid #ccc}
.src{display:inline-block;position:relative;vertical-align:top;margin-left:12px}
.src img{width:256px;image-rendering:pixelated} .mark{position:absolute;border:2px solid #f0f;pointer-events:none}
.warn{background:#fee;border:1px solid #c00;padding:6px} figure{display:inline-block;margin:8px}
figcaption{font-size:90%;max-width:600px}
"""


def _table_html(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_source_js(out_dir: Path, index: int, entry: QueryEntry, train_ids: Sequence[str]) -> None:
    h, w = entry.image.shape
    data = {"h": h, "w": w, "stride": int(entry.stride), "ids": list(train_ids),
            "image": entry.image.astype(int).ravel().tolist(), "y": entry.y.astype(int).ravel().tolist(),
            "x": entry.x.astype(int).ravel().tolist()}
    (out_dir / "sources").mkdir(parents=True, exist_ok=True)
    (out_dir / "sources" / f"{index}.js").write_text(f"SRC[{index}] = {json.dumps(data, separators=(',', ':'))};\n")


def write_report(out_dir, *, title: str, notes: Sequence[str], warnings: Sequence[str],
                 table_header: Sequence[str], table_rows: Sequence[Sequence], queries: Sequence[QueryEntry],
                 train_ids: Sequence[str], figures: Sequence[tuple[str, str]],
                 timings: Sequence[tuple[str, float]]) -> Path:
    """Write `report.html` (+ `sources/*.js`) into `out_dir`; every path given is relative to it."""
    out_dir = Path(out_dir)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p class='warn'>{html.escape(w)}</p>" for w in warnings]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts.append("<h2>Table 1</h2>" + _table_html(table_header, table_rows))
    parts.append("<h2>Stage timings</h2>" + _table_html(["stage", "seconds"], [(s, float(t)) for s, t in timings]))
    parts.append("<h2>Queries</h2><p>Columns: input | CNN | CompNN | ground truth | global NN. Point at the "
                 "CompNN output (right) to see the training image and patch each pixel was copied from.</p>")
    for i, q in enumerate(queries):
        write_source_js(out_dir, i, q, train_ids)
        parts.append(
            f"<div class='q'><b>{html.escape(q.query_id)}</b><br><img class='px' src='{html.escape(q.panel)}'>"
            f"<br><img class='px' style='width:256px;cursor:crosshair' src='{html.escape(q.compnn)}' "
            f"onmousemove='explain(event,{i})' onclick='explain(event,{i})'>"
            f"<div class='src' id='src-{i}'><img alt=''><div class='mark'></div><div class='cap'>"
            f"point at the CompNN output</div></div></div>")
    parts.append("<h2>Analyses</h2>")
    for caption, path in figures:
        parts.append(f"<figure><img class='px' src='{html.escape(path)}' style='max-width:1300px'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    out = out_dir / "report.html"
    out.write_text("\n".join(parts))
    return out
