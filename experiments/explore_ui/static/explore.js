// The explorer page: picks a query (or uploads one), turns a click into a position of the chosen layer's
// grid and shows what /api/provenance answers. Every server error is shown in #status; a newer click
// supersedes an older one still in flight.
"use strict";

const $ = (id) => document.getElementById(id);
let INFO = null;
let clickSeq = 0;

function status(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

async function getJSON(url, options) {
  const r = await fetch(url, options);
  let body;
  try { body = await r.json(); } catch (e) { throw new Error(`${r.status} ${r.statusText}`); }
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  return body;
}

function swatch(label) {
  if (!label) return "—";
  const c = label.colour || [0, 0, 0];
  const span = `<span class="swatch" style="background: rgb(${c.join(",")})"></span>`;
  return label.name !== undefined ? `${span} ${escapeHTML(label.name)}` : `${span} rgb(${c.join(", ")})`;
}

function escapeHTML(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

function layer() { return INFO.layers.find((l) => l.name === $("layer").value); }

function setQuery(id) {
  $("query").value = id;
  const q = encodeURIComponent(id);
  for (const what of ["input", "cnn", "compnn", "labels"]) {
    const img = $(`pic-${what}`);
    img.src = `/img/query/${q}/${what}.png`;
    img.parentElement.querySelector(".mark").style.display = "none";
  }
  $("fig-labels").hidden = id.startsWith("u");
  $("answer").hidden = true;
}

function fillSelectors() {
  const qs = $("query");
  qs.innerHTML = "";
  for (const q of INFO.queries) {
    const o = document.createElement("option");
    o.value = q.id;
    o.textContent = q.id.startsWith("u") ? q.name : `${q.id}: ${q.name}`;
    qs.appendChild(o);
  }
  const ls = $("layer");
  ls.innerHTML = "";
  for (const l of INFO.layers) {
    const o = document.createElement("option");
    o.value = l.name;
    o.textContent = `${l.name} (${l.grid[0]}×${l.grid[1]}, K=${l.kernel}${l.fine ? ", fine" : ""})`;
    ls.appendChild(o);
  }
  ls.value = INFO.fine;
}

function placeBox(el, img, box, [h, w]) {
  // box = [y0, x0, y1, x1] in image pixels; the picture is scaled to its displayed size.
  const sx = img.clientWidth / w, sy = img.clientHeight / h;
  el.style.left = `${box[1] * sx}px`;
  el.style.top = `${box[0] * sy}px`;
  el.style.width = `${Math.max(2, (box[3] - box[1]) * sx)}px`;
  el.style.height = `${Math.max(2, (box[2] - box[0]) * sy)}px`;
}

function showAnswer(a, py, px) {
  $("answer").hidden = false;
  $("answer-title").textContent =
    `Pixel (${py}, ${px}) → position (${a.y}, ${a.x}) of ${a.layer} (K=${a.kernel}): ` +
    `exact top ${a.sources.length} over all ${a.ambiguity.n_images} training images (${(a.seconds * 1000).toFixed(0)} ms)`;
  const amb = a.ambiguity;
  $("ambiguity").textContent = amb.other_image === null ? `Best similarity ${amb.best.toFixed(4)}.` :
    `Ambiguity: best similarity ${amb.best.toFixed(4)}; the best position of another training image ` +
    `(${amb.other_image}) scores ${amb.other_image_best.toFixed(4)}, a gap of ${amb.gap.toFixed(4)}; ` +
    `${amb.images_within_near} of ${amb.n_images} training images have a position within ${amb.near} of the best.`;
  const t = a.table1, t1 = $("table1");
  if (t) {
    const where = t.rank ? `<span class="found">rank ${t.rank} of the exact top ${a.sources.length}</span>` :
      `<span class="missed">not among the exact top ${a.sources.length}</span>`;
    t1.innerHTML = `Table 1's matcher (${escapeHTML(t.method)}) copied this pixel from training image ${t.image} ` +
      `(${escapeHTML(t.image_id)}) at (${t.y}, ${t.x}), similarity ${t.similarity.toFixed(4)}: ${where}; ` +
      `its image ranks ${t.image_rank} of ${amb.n_images} by best position` +
      (t.same_image_as_exact ? " (the same image exact search picks)." : " (exact search picks another image).");
  } else {
    t1.textContent = a.layer === INFO.fine ? "No Table 1 source for this query (the run has no compnn stage)." :
      `Table 1 matched at ${INFO.fine}; choose that layer to compare with its source.`;
  }
  const ol = $("sources");
  ol.innerHTML = "";
  a.sources.forEach((s) => {
    const li = document.createElement("li");
    li.className = "source";
    li.innerHTML =
      `<div class="pic"><img alt="training image ${s.image}" src="/img/train/${s.image}.png">` +
      `<div class="box patch"></div><div class="box block"></div></div>` +
      `<div class="what">training image <b>${s.image}</b> (${escapeHTML(s.image_id)}), position (${s.y}, ${s.x})` +
      `<br>cosine similarity <b class="similarity">${s.similarity.toFixed(4)}</b>` +
      `<br>SS (CNN output): ${swatch(s.ss)}<br>O (ground truth): ${swatch(s.o)}</div>`;
    ol.appendChild(li);
    const img = li.querySelector("img");
    const place = () => {
      placeBox(li.querySelector(".patch"), img, s.patch, INFO.image_size);
      placeBox(li.querySelector(".block"), img, s.block, INFO.image_size);
    };
    img.addEventListener("load", place);
    if (img.complete) place();
  });
}

async function onClick(ev) {
  const img = ev.currentTarget;
  const [H, W] = INFO.image_size;
  const px = Math.min(W - 1, Math.max(0, Math.floor(ev.offsetX * W / img.clientWidth)));
  const py = Math.min(H - 1, Math.max(0, Math.floor(ev.offsetY * H / img.clientHeight)));
  const L = layer();
  const y = Math.min(L.grid[0] - 1, Math.floor(py / L.stride[0]));
  const x = Math.min(L.grid[1] - 1, Math.floor(px / L.stride[1]));
  for (const m of document.querySelectorAll("#query-view .mark")) {
    const pic = m.parentElement.querySelector("img");
    placeBox(m, pic, [y * L.stride[0], x * L.stride[1], (y + 1) * L.stride[0], (x + 1) * L.stride[1]], INFO.image_size);
    m.style.display = "block";
  }
  const seq = ++clickSeq;
  const k = $("k").value || INFO.default_k;
  status(`Searching all ${INFO.n_train} training images at ${L.name}…`);
  try {
    const params = new URLSearchParams({query: $("query").value, y, x, layer: L.name, k});
    const a = await getJSON(`/api/provenance?${params}`);
    if (seq !== clickSeq) return;
    showAnswer(a, py, px);
    status(`Answered in ${(a.seconds * 1000).toFixed(0)} ms.`);
  } catch (e) {
    if (seq === clickSeq) status(`Error: ${e.message}`, true);
  }
}

async function onUpload(ev) {
  ev.preventDefault();
  const file = $("upload").files[0];
  if (!file) { status("Choose a PNG or JPEG file first.", true); return; }
  const form = new FormData();
  form.append("image", file);
  $("upload-button").disabled = true;
  status(`Running the network and CompNN on ${file.name}… (the first upload also loads TensorFlow)`);
  try {
    const r = await getJSON("/api/upload", {method: "POST", body: form});
    INFO = await getJSON("/api/info");
    fillSelectors();
    setQuery(r.query);
    status(`Uploaded as ${r.query}${r.notes.length ? ": " + r.notes.join("; ") : ""}. Click a pixel.`);
  } catch (e) {
    status(`Upload refused: ${e.message}`, true);
  } finally {
    $("upload-button").disabled = false;
  }
}

async function start() {
  try {
    INFO = await getJSON("/api/info");
  } catch (e) {
    status(`Cannot read the run: ${e.message}`, true);
    return;
  }
  $("summary").textContent = `${INFO.task}, ${INFO.model}: ${INFO.n_train} training images of ` +
    `${INFO.image_size[0]}×${INFO.image_size[1]}; CompNN matches at ${INFO.fine}` +
    (INFO.table1_matching ? `, Table 1 with the ${INFO.table1_matching} matcher.` : ".");
  $("k").value = INFO.default_k;
  $("k").max = INFO.max_k;
  fillSelectors();
  setQuery(INFO.queries[0].id);
  for (const what of ["input", "cnn", "compnn", "labels"]) $(`pic-${what}`).addEventListener("click", onClick);
  $("query").addEventListener("change", () => setQuery($("query").value));
  $("upload-form").addEventListener("submit", onUpload);
  status("Click any pixel.");
}

start();
