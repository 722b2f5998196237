"use strict";
// The diagram page: lays out the graph with ELK, draws it as SVG, zooms, pans, searches and exports.
// Every name comes from the model and is hostile input: it is only ever set as text (textContent, SVG text
// nodes, attribute values through setAttribute), never parsed as HTML.

const DATA = JSON.parse(document.getElementById("graph-data").textContent);
const items = DATA.items, byId = new Map(items.map(it => [it.id, it]));
const kids = new Map();
for (const it of items) { if (!kids.has(it.parent)) kids.set(it.parent, []); kids.get(it.parent).push(it.id); }
const isGroup = it => it.kind === "group" || it.kind === "fold";
const expanded = new Set();
for (const id of kids.get(null) || []) if (isGroup(byId.get(id)) && byId.get(id).path === "") expanded.add(id);  // the model itself
const elk = new ELK();
const $ = id => document.getElementById(id);
const NS = "http://www.w3.org/2000/svg";
const FONT = "system-ui, -apple-system, 'Segoe UI', sans-serif";
const ZOOM_STEP = 1.25, WHEEL = 0.002, ZMIN = 0.0005, ZMAX = 8, READABLE = 0.75, MARGIN = 16;
const COLOURS = {  // fill, stroke: as attributes, so an exported SVG needs no style sheet
  module: ["#eaf2ff", "#5b84c4"], op: ["#fff6e5", "#c99a3c"], input: ["#e9f7ee", "#4c9a69"], output: ["#e9f7ee", "#4c9a69"],
  group: ["#eef0f4", "#6b7588"], fold: ["#f3eefb", "#8a6bc4"], open: ["#f8f9fb", "#9aa3b4"],
};
let selected = null, hitIds = [], hitAt = -1, layoutSeq = 0, layout = null;
const boxes = new Map();  // id -> {x, y, width, height} of the drawn layout (layout coordinates)
const view = { k: 1, x: 0, y: 0 };  // screen = layout * k + (x, y)

// helpers

const fmt = n => { if (!n) return "0"; const u = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "K"]];
  for (const [s, p] of u) if (n >= s) return (n / s).toFixed(2) + " " + p; return String(n); };
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
const ancestorCache = new Map();
function ancestors(id) {
  let out = ancestorCache.get(id);
  if (!out) { out = []; let p = byId.get(id).parent; while (p !== null && p !== undefined) { out.push(p); p = byId.get(p).parent; } ancestorCache.set(id, out); }
  return out;
}
function visibleRep(id) {  // the outermost collapsed ancestor, or the item itself
  const chain = ancestors(id);
  for (let i = chain.length - 1; i >= 0; i--) if (!expanded.has(chain[i])) return chain[i];
  return id;
}
function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
const measure = document.createElement("canvas").getContext("2d"), widths = new Map();
function textWidth(text, size, weight = 400) {
  const key = size + "/" + weight + "/" + text;
  let w = widths.get(key);
  if (w === undefined) { measure.font = `${weight} ${size}px ${FONT}`; w = measure.measureText(text).width; widths.set(key, w); }
  return w;
}
function cut(text, max, size, weight) {  // the text, shortened with an ellipsis to fit max pixels
  if (textWidth(text, size, weight) <= max) return text;
  let lo = 0, hi = text.length;
  while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (textWidth(text.slice(0, mid) + "\u2026", size, weight) <= max) lo = mid; else hi = mid - 1; }
  return text.slice(0, lo) + "\u2026";
}
const dims = s => s.length ? s.join("\u00d7") : "scalar";  // [1, 64, 56, 56] -> 1x64x56x56
function edgeText(shapes) {
  const seen = [...new Set(shapes.map(dims))];
  return seen.slice(0, 2).join(", ") + (seen.length > 2 ? ` +${seen.length - 2}` : "");
}

// layout

const subline = it => it.type + (it.params ? "  \u00b7 " + fmt(it.params) + " params" : "");
const mark = it => isGroup(it) ? (expanded.has(it.id) ? "\u25be " : "\u25b8 ") : "";
function lines(it) {  // [text, size, weight] of a closed box
  const out = [[mark(it) + it.label, 12, 600], [subline(it), 11, 400]];
  if (it.kind === "input" || it.kind === "output") for (const s of (it.shapes || []).slice(0, 3)) out.push([s, 11, 400]);
  return out;
}
function nodeSize(it) {
  const ls = lines(it), text = Math.max(...ls.map(([t, s, w]) => textWidth(t, s, w)));
  return { width: Math.round(clamp(text + 20, 90, 380)), height: 16 * ls.length + 10 };
}
function buildElk() {
  const edges = new Map();
  DATA.edges.forEach(([s, d], i) => {
    const a = visibleRep(s), b = visibleRep(d);
    if (a === b || ancestors(b).includes(a) || ancestors(a).includes(b)) return;
    const key = a + ">" + b;
    if (!edges.has(key)) edges.set(key, { id: "e" + key, sources: ["n" + a], targets: ["n" + b], shapes: [] });
    edges.get(key).shapes.push(...(DATA.edge_shapes ? DATA.edge_shapes[i] : []));
  });
  for (const e of edges.values()) {
    const text = edgeText(e.shapes);
    e.labels = text ? [{ id: "l" + e.id, text, width: Math.ceil(textWidth(text, 10)) + 6, height: 13 }] : [];
    delete e.shapes;
  }
  function make(id) {
    const it = byId.get(id);
    if (isGroup(it) && expanded.has(id)) {
      const head = Math.ceil(textWidth(mark(it) + it.label, 12, 600)) + 20;
      return { id: "n" + id, layoutOptions: { "elk.padding": "[top=28,left=10,bottom=10,right=10]",
                 "elk.nodeSize.constraints": "[MINIMUM_SIZE]", "elk.nodeSize.minimum": `(${Math.min(head, 380)}, 40)` },
               children: (kids.get(id) || []).map(make) };
    }
    return { id: "n" + id, ...nodeSize(it) };
  }
  return { id: "root", layoutOptions: {
      "elk.algorithm": "layered", "elk.direction": "DOWN", "elk.hierarchyHandling": "INCLUDE_CHILDREN",
      "elk.layered.spacing.nodeNodeBetweenLayers": "28", "elk.spacing.nodeNode": "18", "elk.edgeRouting": "ORTHOGONAL",
      "elk.spacing.edgeLabel": "3", "elk.edgeLabels.placement": "CENTER",
      "elk.json.edgeCoords": "ROOT", "elk.json.shapeCoords": "ROOT" },
    children: (kids.get(null) || []).map(make), edges: [...edges.values()] };
}

// drawing

function tip(it) {
  return [it.path || it.label, it.type, ...(it.shapes || []), "params " + (it.params || 0).toLocaleString(), "FLOPs " + fmt(it.flops || 0)].join("\n");
}
function paint(g, it) {  // colours and outline by kind and state
  const open = isGroup(it) && expanded.has(it.id), rect = g.firstElementChild.nextElementSibling;
  const [fill, stroke] = COLOURS[open ? "open" : it.kind] || COLOURS.module;
  const hit = hitIds.includes(it.id), sel = selected === it.id;
  rect.setAttribute("fill", fill);
  rect.setAttribute("stroke", hit ? "#e0442b" : sel ? "#1d2330" : stroke);
  rect.setAttribute("stroke-width", hit ? 3 : sel ? 2.5 : 1);
  if (open || it.kind === "fold") rect.setAttribute("stroke-dasharray", open ? "5 3" : "4 3");
  g.setAttribute("class", "node " + it.kind + (open ? " open" : "") + (hit ? " hit" : "") + (sel ? " selected" : ""));
}
function draw(lay) {
  layout = lay; boxes.clear();
  const svg = $("svg");
  svg.replaceChildren();
  const defs = el("defs", {}, svg);
  const m = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, defs);
  el("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#6b7588" }, m);
  const gView = el("g", { id: "view" }, svg);
  const gNodes = el("g", { "font-family": FONT }, gView);
  const gEdges = el("g", { fill: "none", stroke: "#6b7588", "stroke-width": 1.3 }, gView);
  const gLabels = el("g", { "font-family": FONT, "font-size": 10, fill: "#3d4658" }, gView);
  function visit(n) {
    for (const c of n.children || []) {
      const id = +c.id.slice(1), it = byId.get(id), open = isGroup(it) && expanded.has(id);
      boxes.set(id, { x: c.x, y: c.y, width: c.width, height: c.height });
      const g = el("g", { "data-id": id, "data-path": it.path, transform: `translate(${c.x},${c.y})` }, gNodes);
      el("title", {}, g).textContent = tip(it);
      el("rect", { width: c.width, height: c.height, rx: 4 }, g);
      paint(g, it);
      const shown = open ? [[mark(it) + it.label, 12, 600]] : lines(it);
      shown.forEach(([t, size, weight], i) => {
        el("text", { x: 8, y: 16 * i + 17, "font-size": size, "font-weight": weight, fill: i ? "#4b5466" : "#1d2330" }, g)
          .textContent = cut(t, c.width - 14, size, weight);
      });
      g.addEventListener("click", ev => { ev.stopPropagation(); select(id, isGroup(it)); });
      visit(c);
    }
  }
  visit(lay);
  for (const e of lay.edges || []) {
    for (const s of e.sections || []) {
      const pts = [s.startPoint, ...(s.bendPoints || []), s.endPoint];
      el("path", { class: "edge", d: "M " + pts.map(p => p.x + " " + p.y).join(" L "), "marker-end": "url(#arrow)" }, gEdges);
    }
    for (const l of e.labels || []) {
      const g = el("g", { class: "edge-label", transform: `translate(${l.x},${l.y})` }, gLabels);
      el("rect", { width: l.width, height: l.height, rx: 3, fill: "#f6f7f9", "fill-opacity": 0.9 }, g);
      el("text", { x: 3, y: 10 }, g).textContent = l.text;
    }
  }
  $("status").textContent = `${boxes.size} boxes shown of ${items.length}`;
  applyView();
}
async function relayout(after) {
  const seq = ++layoutSeq; document.body.dataset.ready = "0";
  const lay = await elk.layout(buildElk());
  if (seq !== layoutSeq) return;
  draw(lay);
  if (after) after(lay);
  document.body.dataset.ready = "1";
}

// zoom and pan: one transform on the drawing; the canvas is its own grid cell, so no panel covers it

function canvasSize() { const r = $("svg").getBoundingClientRect(); return { w: r.width, h: r.height }; }
function applyView() {
  const g = $("view");
  if (g) g.setAttribute("transform", `translate(${view.x},${view.y}) scale(${view.k})`);
  $("zoom").textContent = (view.k >= 0.1 ? Math.round(view.k * 100) : (view.k * 100).toFixed(1)) + "%";
}
function setView(k, x, y) { view.k = k; view.x = x; view.y = y; applyView(); }
function zoomBy(factor, cx, cy) {  // about a point of the canvas (its centre by default)
  const { w, h } = canvasSize();
  if (cx === undefined) { cx = w / 2; cy = h / 2; }
  const k = clamp(view.k * factor, ZMIN, ZMAX), r = k / view.k;
  setView(k, cx - (cx - view.x) * r, cy - (cy - view.y) * r);
}
const whole = () => ({ x: 0, y: 0, width: layout.width, height: layout.height });
function fitBox(b, cap) {
  const { w, h } = canvasSize();
  const k = clamp(Math.min((w - 2 * MARGIN) / b.width, (h - 2 * MARGIN) / b.height, cap), ZMIN, ZMAX);
  setView(k, (w - b.width * k) / 2 - b.x * k, (h - b.height * k) / 2 - b.y * k);
}
function fitAll() { if (layout) fitBox(whole(), 1); }
function overview() {  // fit when readable; else readable size, centred, from the top
  const { w, h } = canvasSize(), b = whole();
  const k = clamp(Math.min((w - 2 * MARGIN) / b.width, (h - 2 * MARGIN) / b.height), READABLE, 1);
  setView(k, (w - b.width * k) / 2, b.height * k <= h - 2 * MARGIN ? (h - b.height * k) / 2 : MARGIN);
}
function keepInView(b) {  // pan (zooming out no further than READABLE) so box b shows, its top-left first
  const { w, h } = canvasSize();
  const fits = Math.min((w - 2 * MARGIN) / b.width, (h - 2 * MARGIN) / b.height);
  const k = fits >= view.k ? view.k : Math.max(fits, Math.min(view.k, READABLE));
  const sx = view.x + b.x * view.k, sy = view.y + b.y * view.k;  // keep the box's corner where it is on screen
  let x = sx - b.x * k, y = sy - b.y * k;
  const into = (start, size, room) => size > room - 2 * MARGIN ? MARGIN - start
    : start < MARGIN ? MARGIN - start : start + size > room - MARGIN ? room - MARGIN - start - size : 0;
  x += into(x + b.x * k, b.width * k, w);
  y += into(y + b.y * k, b.height * k, h);
  setView(k, x, y);
}
function centreOn(b) {
  const { w, h } = canvasSize();
  setView(view.k, w / 2 - (b.x + b.width / 2) * view.k, h / 2 - (b.y + b.height / 2) * view.k);
  keepInView(b);
}

const svgEl = $("svg");
svgEl.addEventListener("wheel", ev => {
  ev.preventDefault();
  const r = svgEl.getBoundingClientRect();
  const dy = ev.deltaY * (ev.deltaMode === 1 ? 16 : ev.deltaMode === 2 ? r.height : 1);
  zoomBy(Math.exp(-dy * WHEEL), ev.clientX - r.left, ev.clientY - r.top);
}, { passive: false });
let drag = null, dragged = false;
svgEl.addEventListener("pointerdown", ev => {
  if (ev.button !== 0) return;
  dragged = false;
  drag = { x: ev.clientX, y: ev.clientY, vx: view.x, vy: view.y, id: ev.pointerId, moving: false };
});
svgEl.addEventListener("pointermove", ev => {
  if (!drag) return;
  const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
  if (!drag.moving && Math.hypot(dx, dy) < 4) return;  // a click, not a drag, so far
  if (!drag.moving) { drag.moving = true; svgEl.setPointerCapture(drag.id); $("canvas").classList.add("panning"); }
  setView(view.k, drag.vx + dx, drag.vy + dy);
});
const endDrag = () => { if (drag && drag.moving) { dragged = true; $("canvas").classList.remove("panning"); } drag = null; };
svgEl.addEventListener("pointerup", endDrag);
svgEl.addEventListener("pointercancel", endDrag);
svgEl.addEventListener("click", ev => { if (dragged) { ev.stopPropagation(); dragged = false; } }, true);  // a drag is no click

// details, selection, search

function row(table, key, value) {
  const tr = table.insertRow();
  tr.insertCell().textContent = key;
  const td = tr.insertCell();
  (Array.isArray(value) ? value : [value]).forEach((v, i) => {
    if (i) td.appendChild(document.createElement("br"));
    td.appendChild(document.createTextNode(String(v)));
  });
}
function add(parent, tag, text) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; parent.appendChild(e); return e; }
function showDetails(it) {
  const box = $("details");
  box.replaceChildren();
  add(box, "h2", it.label);
  const t = add(box, "table");
  row(t, "path", it.path || "(model)");
  row(t, "type", it.type);
  row(t, "kind", it.kind);
  row(t, "inputs", it.inputs && it.inputs.length ? it.inputs : "--");
  row(t, "outputs", it.shapes && it.shapes.length ? it.shapes : "--");
  row(t, "params", (it.params || 0).toLocaleString());
  row(t, "FLOPs", fmt(it.flops || 0) + " (" + (it.flops || 0).toLocaleString() + ")");
  if (isGroup(it)) row(t, "children", String((kids.get(it.id) || []).length));
  if (it.args) {
    add(box, "h3", "arguments");
    const a = add(box, "table");
    a.id = "arguments";
    for (const [k, v] of it.args) row(a, k, v);
  } else if (it.repr) {
    add(box, "h3", "arguments");
    add(box, "pre", it.repr).id = "arguments";
  }
}
function restyle() { for (const g of document.querySelectorAll("g.node")) paint(g, byId.get(+g.dataset.id)); }
function select(id, toggle) {
  selected = id; showDetails(byId.get(id));
  if (!toggle) return restyle();
  const before = boxes.get(id), sx = view.x + before.x * view.k, sy = view.y + before.y * view.k;
  if (expanded.has(id)) expanded.delete(id); else expanded.add(id);
  relayout(() => {
    const b = boxes.get(id);  // the group stays where it was clicked, then shows whole (or its top) in the canvas
    if (b) { setView(view.k, sx - b.x * view.k, sy - b.y * view.k); keepInView(b); }
  });
}
function reveal(id) { for (const a of ancestors(id)) expanded.add(a); }
$("search").addEventListener("keydown", async ev => {
  if (ev.key !== "Enter") return;
  const q = ev.target.value.trim().toLowerCase();
  if (!q) { hitIds = []; $("hits").textContent = ""; return relayout(); }
  const found = items.filter(it => it.kind !== "fold" && ((it.path || "").toLowerCase().includes(q) || it.label.toLowerCase().includes(q) || (it.type || "").toLowerCase() === q)).map(it => it.id);
  if (String(found) !== String(hitIds)) { hitIds = found; hitAt = -1; }
  $("hits").textContent = found.length ? `${found.length} found` : "none found";
  if (!found.length) return relayout();
  hitAt = (hitAt + 1) % found.length;
  const id = found[hitAt]; reveal(id); selected = id; showDetails(byId.get(id));
  await relayout(() => { const b = boxes.get(id); if (b) centreOn(b); });
});
$("expand-all").addEventListener("click", () => {
  const frontier = items.filter(it => isGroup(it) && !expanded.has(it.id) && ancestors(it.id).every(a => expanded.has(a)));
  frontier.forEach(it => expanded.add(it.id)); relayout(overview);
});
$("collapse-all").addEventListener("click", () => { expanded.clear(); relayout(overview); });
$("zoom-in").addEventListener("click", () => zoomBy(ZOOM_STEP));
$("zoom-out").addEventListener("click", () => zoomBy(1 / ZOOM_STEP));
$("fit").addEventListener("click", fitAll);
$("actual").addEventListener("click", () => zoomBy(1 / view.k));
document.addEventListener("keydown", ev => {
  if (ev.target instanceof HTMLInputElement || ev.ctrlKey || ev.metaKey || ev.altKey || !layout) return;
  const act = {
    "+": () => zoomBy(ZOOM_STEP), "=": () => zoomBy(ZOOM_STEP), "-": () => zoomBy(1 / ZOOM_STEP), "0": fitAll,
    "1": () => zoomBy(1 / view.k), "/": () => $("search").focus(),
    ArrowLeft: () => setView(view.k, view.x + 80, view.y), ArrowRight: () => setView(view.k, view.x - 80, view.y),
    ArrowUp: () => setView(view.k, view.x, view.y + 80), ArrowDown: () => setView(view.k, view.x, view.y - 80),
  }[ev.key];
  if (act) { ev.preventDefault(); act(); }
});

// export: the diagram as shown (groups open or closed), whole, at its layout size; offline (blob: URLs)

const fileName = () => (DATA.title || "diagram").replace(/[^A-Za-z0-9_.-]+/g, "_").replace(/^[._]+/, "").slice(0, 80) || "diagram";
function svgExport() {
  const pad = 10, width = Math.ceil(layout.width) + 2 * pad, height = Math.ceil(layout.height) + 2 * pad;
  const out = el("svg", { width, height, viewBox: `0 0 ${width} ${height}` });
  el("rect", { width, height, fill: "#ffffff" }, out);
  out.appendChild($("svg").querySelector("defs").cloneNode(true));
  const g = $("view").cloneNode(true);
  g.removeAttribute("id");
  g.setAttribute("transform", `translate(${pad},${pad})`);
  out.appendChild(g);
  return { text: new XMLSerializer().serializeToString(out), width, height };
}
function download(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob); a.download = name;
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
}
$("export-svg").addEventListener("click", () => {
  download(new Blob([svgExport().text], { type: "image/svg+xml" }), fileName() + ".svg");
});
$("export-png").addEventListener("click", async () => {
  const { text, width, height } = svgExport();
  const scale = Math.min(2, 16384 / width, 16384 / height, Math.sqrt(1.2e8 / (width * height)));  // the browser's canvas limits
  const url = URL.createObjectURL(new Blob([text], { type: "image/svg+xml" }));
  try {
    const img = new Image();
    img.src = url;
    await img.decode();
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(width * scale); canvas.height = Math.round(height * scale);
    canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
    const png = await new Promise(done => canvas.toBlob(done, "image/png"));
    download(png, fileName() + ".png");
  } finally { URL.revokeObjectURL(url); }
});

relayout(overview);
