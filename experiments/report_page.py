"""report.html: one self-contained offline page (no other files, no external assets or libraries).

Every picture is embedded as a data: URI and the per-query source arrays as one JSON block, so the page
can be moved or mailed alone. This module owns the page's building blocks (tables, a class legend,
figures and panels of pictures, SVG line charts, the interactive query panels) and assembling them;
experiments.steps.report decides what goes in.

The page's HTML, style and script live in experiments/templates/ (report.html.j2 for the page,
blocks.html.j2 for figures and query panels, report.css, report.js), rendered with Jinja2 with
autoescaping: every name and caption is text unless a caller marks it as HTML (`Raw`). The style and
script are inlined into the page, so it still loads nothing.

Words are HTML, never pixels: figure titles, captions, chart titles, axis labels and legends are text
in the page (readable at any zoom, searchable); the PNGs carry only the pictures.

Sections fold (``<details>``): the class legend, Table 1 and the queries (with the first query) are open,
the rest folded; following a link to a folded section opens it (report.js), and so does
find-in-page in Chromium-based browsers (their own handling of <details>).

Interaction: pointing at (or clicking) a pixel of a CompNN output marks it, and shows the training
image it was copied from, that image's CNN output (the self-supervised label CompNN (SS) copies) and
its ground truth, each with the copied block and pixel marked, and a caption naming the training image.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import jinja2
import numpy as np
from markupsafe import Markup
from PIL import Image

from compnn_py.figures import RAMP
from compnn_py.fsio import write_atomic

esc = html.escape
TEMPLATES = Path(__file__).with_name("templates")
OPEN_SECTIONS = ("legend", "table1", "queries")   # unfolded when the page opens; the rest start folded


@functools.cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True,
                              undefined=jinja2.StrictUndefined)


def _blocks():
    return _env().get_template("blocks.html.j2").module


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
    provenance: str = ""                # under the click view: which matcher picked the sources, how often
                                        # exact search over all images picks another image, the explorer


@dataclass
class TrainImage:
    image_id: str
    pictures: dict[str, str] = field(default_factory=dict)  # "photo"/"copied"/"label" -> data URI


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


class Raw(Markup):
    """Text already in HTML (not escaped again by `table` or the templates)."""


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
    return str(_blocks().figure(uri, caption, fig_id, width))


RAMP_CSS = "linear-gradient(to right," + ",".join(f"rgb({r:.0f},{g:.0f},{b:.0f})" for r, g, b in RAMP) + ")"


def panel_figure(cells: Sequence[tuple[str, str]], ncols: int, caption: str, *, cell_width: int,
                 fig_id: str | None = None, colour_scale: Sequence[str] | None = None) -> str:
    """A grid of pictures, ``ncols`` wide, each (title, data URI) with its title as text under it, each
    `cell_width` CSS pixels wide at most (narrower when the page is); then, for heatmaps, the colour
    ramp (compnn_py.figures.RAMP as a CSS gradient) with `colour_scale`'s two end labels; then the
    caption."""
    scale = None if not colour_scale else {"gradient": RAMP_CSS, "low": colour_scale[0], "high": colour_scale[1]}
    return str(_blocks().panel_figure(list(cells), ncols, cell_width, caption, fig_id, scale))


_LINE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def line_chart(title: str, series: Mapping[str, Sequence[tuple[float, float]]], *,
               x_ticks: Sequence[tuple[float, str]] | None = None, x_label: str = "", log_y: bool = False,
               width: int = 400, height: int = 230) -> str:
    """A line chart of named (x, y) series: the title (an HTML caption) above an inline SVG whose axis
    labels are 13 px text (the SVG is drawn at its own size, never scaled), and the series' names as an
    HTML legend below. "" when no series has a finite value."""
    pts = [(x, y) for s in series.values() for x, y in s if y is not None and math.isfinite(y)
           and (y > 0 or not log_y)]
    if not pts:
        return ""
    ml, mr, mt, mb = 64, 16, 10, 44
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
        if abs(v) >= 1000 and abs(v) < 1e7:
            return f"{v:.0f}"
        return f"{v:.0f}" if float(v).is_integer() and abs(v) < 1e7 else f"{v:.3g}"

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
           f"aria-label='{esc(title)}' font-family='system-ui,sans-serif' font-size='13'>",
           f"<rect x='{ml}' y='{mt}' width='{pw}' height='{ph}' fill='none' stroke='#888'/>"]
    lo, hi = (10 ** y0, 10 ** y1) if log_y else (y0, y1)
    out.append(f"<text x='{ml - 5}' y='{mt + 11}' text-anchor='end'>{num(hi)}</text>")
    out.append(f"<text x='{ml - 5}' y='{mt + ph}' text-anchor='end'>{num(lo)}</text>")
    if log_y:
        out.append(f"<text x='{ml - 5}' y='{mt + ph / 2 + 4}' text-anchor='end'>(log)</text>")
    ticks = x_ticks if x_ticks is not None else [(x0, num(x0)), (x1, num(x1))]
    for xv, lab in ticks:
        out.append(f"<line x1='{sx(xv):.1f}' x2='{sx(xv):.1f}' y1='{mt + ph}' y2='{mt + ph + 4}' stroke='#888'/>")
        out.append(f"<text x='{sx(xv):.1f}' y='{mt + ph + 18}' text-anchor='middle'>{esc(lab)}</text>")
    if x_label:
        out.append(f"<text x='{ml + pw / 2}' y='{height - 5}' text-anchor='middle'>{esc(x_label)}</text>")
    names = []
    for j, (name, s) in enumerate(series.items()):
        col = _LINE_COLOURS[j % len(_LINE_COLOURS)]
        good = [(x, y) for x, y in s if y is not None and math.isfinite(y) and (y > 0 or not log_y)]
        if not good:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        out.append(f"<polyline points='{path}' fill='none' stroke='{col}' stroke-width='2'/>")
        out += [f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='2.5' fill='{col}'/>" for x, y in good]
        names.append(f"<li><span class='sw' style='background:{col}'></span>{esc(name)}</li>")
    out.append("</svg>")
    key = f"<ul class='series'>{''.join(names)}</ul>" if len(series) > 1 else ""
    return f"<figure class='chart'><figcaption>{esc(title)}</figcaption>{''.join(out)}{key}</figure>"


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
    return embed_json(data)


_EMBED_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def embed_json(obj) -> str:
    """JSON text safe inside a <script> element whatever its strings hold: `<`, `>` and `&` are written
    as \\u escapes (so no `</script>`, `<!--` or `<script` can change how the HTML parser reads the
    block), and so are U+2028/2029. JSON.parse returns the same strings."""
    text = json.dumps(obj, separators=(",", ":"))
    for ch, escape in _EMBED_ESCAPES.items():
        text = text.replace(ch, escape)
    return text


def write_report(out_dir, *, title: str, sections: Sequence[tuple[str, str, str]], queries: Sequence[QueryEntry],
                 train_images: Mapping[int, TrainImage], class_names: Sequence[str] = (),
                 intro: str = "", queries_after: str | None = None,
                 open_sections: Sequence[str] = OPEN_SECTIONS) -> Path:
    """Write the self-contained `report.html` into `out_dir` (atomically).

    sections: (anchor id, heading, HTML body) in page order, each a fold (``<details>``), open when its
    id is in `open_sections`; the interactive query panels are a section of their own ("queries", each
    query a fold of its own, the first open), placed after the section whose id is `queries_after`
    (default: last)."""
    sections = list(sections)
    blocks = _blocks()
    qbody = ("<p>Each row: the query's input, the CNN's output, the CompNN output (outlined in blue), the "
             "ground truth and the global nearest neighbour's output. Point at the CompNN output: the pixel "
             "is marked (red dot, yellow box = the block copied as one piece), and below appear the "
             "training image it was copied from, that image's CNN output and its ground truth, with the "
             "copied block marked in the same way.</p>"
             + "".join(str(blocks.query(i, q, i == 0)) for i, q in enumerate(queries)))
    at = next((k + 1 for k, s in enumerate(sections) if s[0] == queries_after), len(sections))
    if queries:
        sections.insert(at, ("queries", "Queries: where each pixel comes from", qbody))
    page = _env().get_template("report.html.j2").render(
        title=title, intro=Markup(intro),
        sections=[{"id": a, "heading": h, "short": h.split(":")[0], "body": Markup(body), "open": a in open_sections}
                  for a, h, body in sections],
        data_json=Markup(_data_json(queries, train_images, class_names)),
        css=Markup((TEMPLATES / "report.css").read_text()), script=Markup((TEMPLATES / "report.js").read_text()))
    out = Path(out_dir) / "report.html"
    write_atomic(out, page)
    return out
