"""report.html: one self-contained offline page (no other files, no external assets or libraries).

Every picture is embedded as a data: URI and the per-query source arrays as one JSON block, so the page
can be moved or mailed alone. This module owns the page's building blocks (tables, a class legend,
figures, SVG line charts, the interactive query panels) and assembling them; experiments.steps.report
decides what goes in.

Interaction: pointing at (or clicking) a pixel of a CompNN output marks it, and shows the training
image it was copied from, that image's CNN output (the self-supervised label CompNN (SS) copies) and
its ground truth, each with the copied block and pixel marked, and a caption naming the training image.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from compnn_py.fsio import write_atomic

esc = html.escape


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(png) -> str:
    """A data: URI of PNG bytes, of a PNG file's path, or of a uint8 RGB array."""
    if isinstance(png, (str, Path)):
        png = Path(png).read_bytes()
    elif isinstance(png, np.ndarray):
        png = png_bytes(png)
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@dataclass
class QueryEntry:
    query_id: str
    pictures: list[tuple[str, str]]     # (title, data URI), shown in a row
    interactive: int                    # index in `pictures` of the CompNN output users point at
    image: np.ndarray                   # int32 (h, w): store row of the source training image per native position
    y: np.ndarray                       # int32 (h, w): source native row
    x: np.ndarray                       # int32 (h, w): source native column
    stride: int                         # output pixels per native position
    out_shape: tuple[int, int]          # (H, W) of the output pictures
    classes: np.ndarray | None = None   # (H, W) class ids of the CompNN output, for naming the pointed class
    note: str = ""                      # e.g. the query's per-image attributes


@dataclass
class TrainImage:
    image_id: str
    pictures: dict[str, str] = field(default_factory=dict)  # "photo"/"copied"/"label" -> data URI


_STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;padding:16px;max-width:1400px;line-height:1.45;color:#222}
h1{font-size:1.6em} h2{border-bottom:2px solid #ccc;padding-bottom:2px;margin-top:1.6em}
nav a{margin-right:10px;white-space:nowrap}
.tw{overflow-x:auto;max-width:100%} table{border-collapse:collapse;font-size:14px;margin:6px 0}
td,th{border:1px solid #bbb;padding:3px 7px;text-align:left} th{background:#eee;vertical-align:bottom}
td.n{text-align:right;font-variant-numeric:tabular-nums} th.paper,td.paper{background:#f3f0ff}
dl.gl dt{font-weight:bold;margin-top:4px} dl.gl dd{margin-left:18px}
.warn{background:#fee;border:1px solid #c00;padding:6px 10px}
.note{color:#555;font-size:92%}
ul.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:4px 14px}
ul.legend li{display:flex;align-items:center;gap:5px;font-size:14px}
.sw{display:inline-block;width:16px;height:16px;border:1px solid #555;vertical-align:middle}
.q{margin:14px 0;padding:10px 0;border-top:1px solid #ddd}
.row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.pic{position:relative;width:min(200px,calc((100vw - 100px)/5))}
.srcrow{display:none} .pic img{width:100%;display:block;image-rendering:pixelated}
.pic .t{font-size:13px;text-align:center} .pic.live img{cursor:crosshair;outline:2px solid #08f}
.mark{position:absolute;border:2px solid #ff0;outline:1px solid #000;pointer-events:none;display:none;
      box-sizing:border-box}
.dot{position:absolute;border:1px solid #f00;background:rgba(255,0,0,.6);pointer-events:none;display:none}
.cap{font-size:14px;margin-top:6px;min-height:2.8em}
figure{margin:10px 0} figure img{max-width:100%;image-rendering:pixelated;display:block}
figcaption{font-size:14px;max-width:900px;margin-top:4px}
.charts{display:flex;flex-wrap:wrap;gap:12px} svg{background:#fff;border:1px solid #ddd}
"""

_SCRIPT = r"""
const DATA = JSON.parse(document.getElementById('compnn-data').textContent);
function place(el, pic, y0, x0, h, w, H, W) {
  el.style.display = 'block';
  el.style.left = (100 * x0 / W) + '%'; el.style.top = (100 * y0 / H) + '%';
  el.style.width = Math.max(100 * w / W, 1.5) + '%'; el.style.height = Math.max(100 * h / H, 1.5) + '%';
}
function explain(ev, q) {
  const img = ev.currentTarget, r = img.getBoundingClientRect(), d = DATA.queries[q];
  const clamp = (v, hi) => Math.max(0, Math.min(hi - 1, v));
  const px = clamp(Math.floor((ev.clientX - r.left) / r.width * d.W), d.W);
  const py = clamp(Math.floor((ev.clientY - r.top) / r.height * d.H), d.H);
  const s = d.stride, ny = Math.min(d.h - 1, Math.floor(py / s)), nx = Math.min(d.w - 1, Math.floor(px / s));
  const k = ny * d.w + nx, row = d.image[k];
  const by = d.y[k] * s, bx = d.x[k] * s;
  const sy = clamp(by + py - ny * s, d.H), sx = clamp(bx + px - nx * s, d.W);
  const live = img.parentElement;
  place(live.querySelector('.mark'), live, ny * s, nx * s, s, s, d.H, d.W);
  place(live.querySelector('.dot'), live, py, px, 1, 1, d.H, d.W);
  const t = DATA.train[row], box = document.getElementById('src-' + q);
  box.style.display = 'flex';
  box.querySelectorAll('.pic').forEach(p => {
    const kind = p.dataset.kind, im = p.querySelector('img');
    if (!t.pictures[kind]) { p.style.display = 'none'; return; }
    p.style.display = ''; im.src = t.pictures[kind];
    place(p.querySelector('.mark'), p, by, bx, s, s, d.H, d.W);
    place(p.querySelector('.dot'), p, sy, sx, 1, 1, d.H, d.W);
  });
  let what = '';
  if (d.classes) { const c = d.classes[py * d.W + px]; what = ' (' + (DATA.class_names[c] || 'void') + ')'; }
  document.getElementById('cap-' + q).textContent =
    'Output pixel at row ' + py + ', column ' + px + what + ' was copied from row ' + sy + ', column ' + sx +
    ' of training image ' + t.id + ' (the ' + s + '\u00d7' + s + ' block of matched position ' + d.y[k] +
    ', ' + d.x[k] + ' at the match layer).';
}
"""


def table(header: Sequence[str], rows: Sequence[Sequence], *, digits: int = 3, classes: Sequence[str] = (),
          table_id: str | None = None) -> str:
    """An HTML table (wrapped so it scrolls instead of overflowing). Floats get `digits` decimals, None and
    NaN show as a dash; `classes[j]` is a CSS class for column j."""
    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        if isinstance(v, float):
            return "∞" if math.isinf(v) else f"{v:.{digits}f}"
        return str(v) if isinstance(v, Raw) else esc(str(v))

    def cls(j, v=None):
        names = [classes[j]] if j < len(classes) and classes[j] else []
        if isinstance(v, (int, float)) and not isinstance(v, bool) or v is None or (
                isinstance(v, str) and _NUMERIC.fullmatch(v)):
            names.append("n")
        return f" class='{' '.join(names)}'" if names else ""

    head = "".join(f"<th{cls(j)}>{h if isinstance(h, Raw) else esc(h)}</th>" for j, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{cls(j, v)}>{cell(v)}</td>" for j, v in enumerate(r)) + "</tr>"
                   for r in rows)
    ident = f" id='{esc(table_id)}'" if table_id else ""
    return f"<div class='tw'><table{ident}><tr>{head}</tr>{body}</table></div>"


_NUMERIC = re.compile(r"[-+]?[0-9.,]+(e[-+]?[0-9]+)?( ?%| dB)?|–")


class Raw(str):
    """Text already in HTML (not escaped again by `table`)."""


def swatch(rgb) -> str:
    r, g, b = (int(v) for v in rgb)
    return f"<span class='sw' style='background:rgb({r},{g},{b})'></span>"


def legend(names: Sequence[str], palette, *, void_colour=None, void_name: str = "void (not scored)") -> str:
    items = [f"<li>{swatch(c)}{esc(n)}</li>" for n, c in zip(names, np.asarray(palette).reshape(-1, 3))]
    if void_colour is not None:
        items.append(f"<li>{swatch(void_colour)}{esc(void_name)}</li>")
    return f"<ul class='legend' id='legend'>{''.join(items)}</ul>"


def figure(uri: str, caption: str, *, fig_id: str | None = None, width: int | None = None) -> str:
    """A picture with its caption; `width` (CSS pixels) enlarges small figures, never past the page."""
    ident = f" id='{esc(fig_id)}'" if fig_id else ""
    size = f" style='width:{int(width)}px'" if width else ""
    return (f"<figure{ident}><img src='{uri}' alt='{esc(caption[:80])}'{size}>"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


_LINE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def line_chart(title: str, series: Mapping[str, Sequence[tuple[float, float]]], *,
               x_ticks: Sequence[tuple[float, str]] | None = None, x_label: str = "", log_y: bool = False,
               width: int = 380, height: int = 230) -> str:
    """An inline SVG line chart of named (x, y) series, with its y range and x ticks labelled."""
    pts = [(x, y) for s in series.values() for x, y in s if y is not None and math.isfinite(y)
           and (y > 0 or not log_y)]
    if not pts:
        return ""
    ml, mr, mt, mb = 52, 22, 24, 46
    fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    xs = [p[0] for p in pts]
    ys = [fy(p[1]) for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    pw, ph = width - ml - mr, height - mt - mb

    def sx(v):
        return ml + (v - x0) / (x1 - x0) * pw

    def sy(v):
        return mt + ph - (fy(v) - y0) / (y1 - y0) * ph

    def num(v):
        return f"{v:.0f}" if float(v).is_integer() and abs(v) < 1e7 else f"{v:.3g}"

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}' font-family='sans-serif' font-size='11'>",
           f"<text x='{width / 2}' y='15' text-anchor='middle' font-size='13'>{esc(title)}</text>",
           f"<rect x='{ml}' y='{mt}' width='{pw}' height='{ph}' fill='none' stroke='#888'/>"]
    lo, hi = (10 ** y0, 10 ** y1) if log_y else (y0, y1)
    out.append(f"<text x='{ml - 4}' y='{mt + 9}' text-anchor='end'>{num(hi)}</text>")
    out.append(f"<text x='{ml - 4}' y='{mt + ph}' text-anchor='end'>{num(lo)}</text>")
    if log_y:
        out.append(f"<text x='{ml - 4}' y='{mt + ph / 2}' text-anchor='end'>log</text>")
    ticks = x_ticks if x_ticks is not None else [(x0, num(x0)), (x1, num(x1))]
    for xv, lab in ticks:
        out.append(f"<line x1='{sx(xv):.1f}' x2='{sx(xv):.1f}' y1='{mt + ph}' y2='{mt + ph + 4}' stroke='#888'/>")
        out.append(f"<text x='{sx(xv):.1f}' y='{mt + ph + 15}' text-anchor='middle'>{esc(lab)}</text>")
    if x_label:
        out.append(f"<text x='{ml + pw / 2}' y='{height - 4}' text-anchor='middle'>{esc(x_label)}</text>")
    for j, (name, s) in enumerate(series.items()):
        col = _LINE_COLOURS[j % len(_LINE_COLOURS)]
        good = [(x, y) for x, y in s if y is not None and math.isfinite(y) and (y > 0 or not log_y)]
        if not good:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        out.append(f"<polyline points='{path}' fill='none' stroke='{col}' stroke-width='2'/>")
        out += [f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='2.5' fill='{col}'/>" for x, y in good]
        if len(series) > 1:
            out.append(f"<text x='{ml + 6 + 110 * (j % 3)}' y='{mt + 13 + 12 * (j // 3)}' fill='{col}'>"
                       f"{esc(name)}</text>")
    out.append("</svg>")
    return "".join(out)


def _query_html(i: int, q: QueryEntry) -> str:
    pics = []
    for j, (title, uri) in enumerate(q.pictures):
        if j == q.interactive:
            pics.append(f"<div class='pic live'><img id='compnn-{i}' src='{uri}' alt='CompNN output' "
                        f"onmousemove='explain(event,{i})' onclick='explain(event,{i})'>"
                        f"<div class='mark'></div><div class='dot'></div><div class='t'><b>{esc(title)}</b> "
                        f"(point here)</div></div>")
        else:
            pics.append(f"<div class='pic'><img src='{uri}' alt='{esc(title)}'><div class='t'>{esc(title)}</div></div>")
    src = "".join(f"<div class='pic' data-kind='{k}'><img alt='{esc(t)}'><div class='mark'></div>"
                  f"<div class='dot'></div><div class='t'>{esc(t)}</div></div>"
                  for k, t in (("photo", "training input"), ("copied", "its CNN output (what CompNN SS copies)"),
                               ("label", "its ground truth (what CompNN O copies)")))
    note = f" <span class='note'>{esc(q.note)}</span>" if q.note else ""
    return (f"<div class='q'><b>Query {esc(q.query_id)}</b>{note}<div class='row'>{''.join(pics)}</div>"
            f"<div class='cap' id='cap-{i}'>Point at (or click) the CompNN output to see where that pixel "
            f"was copied from.</div><div class='row srcrow' id='src-{i}'>{src}</div></div>")


def _data_json(queries: Sequence[QueryEntry], train: Mapping[int, TrainImage], class_names) -> str:
    data = {"class_names": list(class_names), "queries": [], "train": {}}
    for q in queries:
        h, w = q.image.shape
        data["queries"].append({
            "h": h, "w": w, "stride": int(q.stride), "H": int(q.out_shape[0]), "W": int(q.out_shape[1]),
            "image": q.image.astype(int).ravel().tolist(), "y": q.y.astype(int).ravel().tolist(),
            "x": q.x.astype(int).ravel().tolist(),
            "classes": None if q.classes is None else np.asarray(q.classes).astype(int).ravel().tolist()})
    data["train"] = {str(r): {"id": t.image_id, "pictures": t.pictures} for r, t in train.items()}
    # "</" inside a <script> block would end it early.
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


def write_report(out_dir, *, title: str, sections: Sequence[tuple[str, str, str]], queries: Sequence[QueryEntry],
                 train_images: Mapping[int, TrainImage], class_names: Sequence[str] = (),
                 intro: str = "", queries_after: str | None = None) -> Path:
    """Write the self-contained `report.html` into `out_dir` (atomically).

    sections: (anchor id, heading, HTML body) in page order; the interactive query panels are a section
    of their own ("queries"), placed after the section whose id is `queries_after` (default: last)."""
    sections = list(sections)
    qbody = ("<p>Each row: the query's input, the CNN's output, the CompNN output (outlined in blue), the "
             "ground truth and the global nearest neighbour's output. Point at the CompNN output: the pixel "
             "is marked (red dot, yellow box = the block copied as one piece), and below appear the "
             "training image it was copied from, that image's CNN output and its ground truth, with the "
             "copied block marked in the same way.</p>" + "".join(_query_html(i, q) for i, q in enumerate(queries)))
    qsec = ("queries", "Queries: where each pixel comes from", qbody)
    at = next((k + 1 for k, s in enumerate(sections) if s[0] == queries_after), len(sections))
    if queries:
        sections.insert(at, qsec)
    nav = "<nav>" + " ".join(f"<a href='#{esc(a)}'>{esc(h.split(':')[0])}</a>" for a, h, _ in sections) + "</nav>"
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{esc(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>{intro}{nav}"]
    parts += [f"<section id='{esc(a)}'><h2>{esc(h)}</h2>{body}</section>" for a, h, body in sections]
    parts.append(f"<script type='application/json' id='compnn-data'>{_data_json(queries, train_images, class_names)}"
                 f"</script><script>{_SCRIPT}</script></body></html>")
    out = Path(out_dir) / "report.html"
    write_atomic(out, "\n".join(parts))
    return out
