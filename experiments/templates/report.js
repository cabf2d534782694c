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
// Folded sections: following a link to one (or to anything inside one) unfolds it first.
function unfold(id) {
  let el = id && document.getElementById(id);
  for (; el; el = el.parentElement) if (el.tagName === 'DETAILS') el.open = true;
}
window.addEventListener('hashchange', () => unfold(decodeURIComponent(location.hash.slice(1))));
document.querySelectorAll('a[href^="#"]').forEach(a =>
  a.addEventListener('click', () => unfold(decodeURIComponent(a.getAttribute('href').slice(1)))));
unfold(decodeURIComponent(location.hash.slice(1)));
function foldAll(open) { document.querySelectorAll('details').forEach(d => { d.open = open; }); }
