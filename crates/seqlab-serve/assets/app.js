// The seqlab web page: plain JavaScript, no dependencies. Panels appear for the kinds of
// model the server has loaded (GET /v1/models). `?text=...` fills the translation box and
// translates at once (links and the browser test use it).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// Viridis, sampled at 9 points and interpolated linearly (matplotlib's default colour map).
const VIRIDIS = [
  [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
];
function colour(t) {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const c = VIRIDIS[i].map((a, k) => Math.round(a + f * (VIRIDIS[i + 1][k] - a)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}
// A diverging map for values in [-1, 1] (positional encodings): blue, white, red.
function diverging(v) {
  const t = Math.min(1, Math.max(-1, v));
  const a = Math.round(255 * (1 - Math.abs(t)));
  return t >= 0 ? `rgb(255,${a},${a})` : `rgb(${a},${a},255)`;
}

// Rough text width for label layout (SVG text is measured after layout; this avoids a pass).
const textWidth = (s, px) => 0.62 * px * [...s].length;

async function api(path, body) {
  const r = await fetch(path, {
    method: body ? "POST" : "GET",
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const j = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) throw new Error(j.error || `HTTP ${r.status}`);
  return j;
}

function fillModels(select, names) {
  select.replaceChildren(...names.map((n) => new Option(n, n)));
  select.parentElement.hidden = names.length < 2;
}

function showError(target, e) {
  target.classList.add("error");
  target.textContent = `error: ${e.message}`;
}

// ---- attention heat map ----------------------------------------------------------------

let attention = null; // the last translation's attention maps

// Draws `matrix` (rows × cols, weights in [0, 1]) as an SVG heat map with rotated column
// labels, row labels, a title and a colour bar; hovering a cell shows its labels and weight.
function drawHeatmap(container, matrix, rowLabels, colLabels, title) {
  const cell = Math.max(14, Math.min(36, Math.floor(640 / Math.max(colLabels.length, 1))));
  const fs = 13;
  const rowW = Math.max(...rowLabels.map((s) => textWidth(s, fs))) + 10;
  // Column labels are rotated by -55°: their height is their width × sin(55°).
  const colW = Math.max(...colLabels.map((s) => textWidth(s, fs)));
  const colH = colW * Math.sin((55 * Math.PI) / 180) + 12;
  const titleH = 30;
  const left = rowW + 8, top = titleH + colH + 6;
  const w = cell * colLabels.length, h = cell * rowLabels.length;
  const barX = left + w + 24, barW = 14;
  // The last column label leans right past the grid by its width × cos(55°).
  const width = Math.max(barX + barW + 60, left + w + colW * Math.cos((55 * Math.PI) / 180) + 16, 8 + textWidth(title, 15) + 20);
  const height = top + h + 30;
  const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, id: "heatmap-svg", role: "img" });
  svg.appendChild(el("text", { x: 8, y: 20, class: "title" }, title));
  const vmax = Math.max(1e-6, ...matrix.flat());
  matrix.forEach((row, i) => {
    row.forEach((v, j) => {
      const r = el("rect", {
        x: left + j * cell, y: top + i * cell, width: cell, height: cell,
        fill: colour(v / vmax), class: "cell",
        "data-row": i, "data-col": j, "data-weight": v.toFixed(4),
      });
      r.addEventListener("mousemove", (ev) => showTip(ev, colLabels[j], rowLabels[i], v));
      r.addEventListener("mouseleave", hideTip);
      svg.appendChild(r);
    });
  });
  rowLabels.forEach((s, i) => {
    svg.appendChild(el("text", {
      x: left - 6, y: top + i * cell + cell / 2, "text-anchor": "end", "dominant-baseline": "middle",
      class: "label tgt-label",
    }, s));
  });
  colLabels.forEach((s, j) => {
    const x = left + j * cell + cell / 2, y = top - 6;
    svg.appendChild(el("text", {
      x, y, transform: `rotate(-55 ${x} ${y})`, "text-anchor": "start", class: "label src-label",
    }, s));
  });
  svg.appendChild(el("text", { x: left + w / 2, y: top + h + 22, "text-anchor": "middle", class: "tick" }, "source tokens →"));
  // Colour bar: 0 at the bottom, the largest weight at the top.
  const defs = el("defs");
  const grad = el("linearGradient", { id: "cbar", x1: 0, y1: 1, x2: 0, y2: 0 });
  for (let k = 0; k <= 8; k++) grad.appendChild(el("stop", { offset: k / 8, "stop-color": colour(k / 8) }));
  defs.appendChild(grad);
  svg.appendChild(defs);
  svg.appendChild(el("rect", { x: barX, y: top, width: barW, height: Math.max(h, 60), fill: "url(#cbar)", id: "colour-bar" }));
  const barH = Math.max(h, 60);
  for (const f of [0, 0.5, 1]) {
    svg.appendChild(el("text", {
      x: barX + barW + 4, y: top + barH - f * barH, "dominant-baseline": "middle", class: "tick",
    }, (f * vmax).toFixed(2)));
  }
  container.replaceChildren(svg);
}

function showTip(ev, src, tgt, w) {
  const t = $("tooltip");
  t.textContent = `source “${src}” → output “${tgt}”: weight ${w.toFixed(3)}`;
  t.style.left = `${ev.clientX + 12}px`;
  t.style.top = `${ev.clientY + 12}px`;
  t.hidden = false;
}
function hideTip() {
  $("tooltip").hidden = true;
}

function meanOverHeads(heads) {
  const n = heads.length;
  return heads[0].map((row, i) => row.map((_, j) => heads.reduce((s, h) => s + h[i][j], 0) / n));
}

function redrawAttention() {
  if (!attention) return;
  const l = Number($("attention-layer").value);
  const hv = $("attention-head").value;
  const heads = attention.weights[l];
  const m = hv === "mean" ? meanOverHeads(heads) : heads[Number(hv)];
  const which = hv === "mean" ? "mean over heads" : `head ${hv}`;
  drawHeatmap($("heatmap"), m, attention.target, attention.source,
    `Encoder-decoder attention: layer ${l}, ${which}`);
}

function setAttention(a) {
  attention = a;
  const layers = $("attention-layer"), heads = $("attention-head");
  const keepL = layers.value, keepH = heads.value;
  layers.replaceChildren(...a.weights.map((_, i) => new Option(String(i), String(i))));
  layers.value = keepL && Number(keepL) < a.weights.length ? keepL : String(a.weights.length - 1);
  const nh = a.weights[0].length;
  heads.replaceChildren(new Option("mean", "mean"), ...Array.from({ length: nh }, (_, i) => new Option(String(i), String(i))));
  heads.value = keepH && (keepH === "mean" || Number(keepH) < nh) ? keepH : "mean";
  $("attention-controls").hidden = false;
  redrawAttention();
}

async function translate(ev) {
  if (ev) ev.preventDefault();
  const out = $("translation"), btn = $("translate-button");
  out.classList.remove("error");
  out.textContent = "…";
  btn.disabled = true;
  try {
    const r = await api("/v1/translate", {
      model: $("translate-model").value, text: $("translate-text").value, attention: true,
    });
    out.textContent = r.translation;
    setAttention(r.attention);
  } catch (e) {
    showError(out, e);
  } finally {
    btn.disabled = false;
  }
}

// ---- positional encoding -----------------------------------------------------------------

function drawPositionalEncoding() {
  const d = Math.max(2, Math.min(1024, Number($("pe-d-model").value) || 128));
  const n = Math.max(1, Math.min(512, Number($("pe-positions").value) || 64));
  const px = Math.max(2, Math.min(8, Math.floor(720 / d)));
  const ph = Math.max(2, Math.min(8, Math.floor(360 / n)));
  const left = 40, top = 30;
  const canvas = document.createElement("canvas");
  canvas.width = d * px;
  canvas.height = n * ph;
  const g = canvas.getContext("2d");
  for (let pos = 0; pos < n; pos++) {
    for (let i = 0; i < d; i++) {
      const angle = pos / Math.pow(10000, (2 * Math.floor(i / 2)) / d);
      g.fillStyle = diverging(i % 2 === 0 ? Math.sin(angle) : Math.cos(angle));
      g.fillRect(i * px, pos * ph, px, ph);
    }
  }
  const title = `Positional encoding (d_model ${d}, positions 0–${n - 1})`;
  const width = Math.max(left + canvas.width + 70, 8 + textWidth(title, 15) + 20);
  const height = top + canvas.height + 30;
  const svg = el("svg", { width, height, id: "pe-svg" });
  svg.appendChild(el("text", { x: 8, y: 18, class: "title" }, title));
  svg.appendChild(el("image", { x: left, y: top, width: canvas.width, height: canvas.height, href: canvas.toDataURL() }));
  svg.appendChild(el("text", { x: left - 6, y: top + 10, "text-anchor": "end", class: "tick" }, "0"));
  svg.appendChild(el("text", { x: left - 6, y: top + canvas.height, "text-anchor": "end", class: "tick" }, String(n - 1)));
  svg.appendChild(el("text", { x: left + canvas.width / 2, y: top + canvas.height + 18, "text-anchor": "middle", class: "tick" }, "dimension →"));
  const bx = left + canvas.width + 16;
  const defs = el("defs");
  const grad = el("linearGradient", { id: "pebar", x1: 0, y1: 1, x2: 0, y2: 0 });
  for (let k = 0; k <= 8; k++) grad.appendChild(el("stop", { offset: k / 8, "stop-color": diverging(k / 4 - 1) }));
  defs.appendChild(grad);
  svg.appendChild(defs);
  svg.appendChild(el("rect", { x: bx, y: top, width: 12, height: canvas.height, fill: "url(#pebar)", stroke: "#999" }));
  for (const [v, f] of [[1, 0], [0, 0.5], [-1, 1]]) {
    svg.appendChild(el("text", { x: bx + 16, y: top + f * canvas.height, "dominant-baseline": "middle", class: "tick" }, String(v)));
  }
  $("pe-figure").replaceChildren(svg);
}

// ---- the other panels ----------------------------------------------------------------------

function panel(formId, run) {
  $(formId).addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const btn = $(formId).querySelector("button");
    if (btn) btn.disabled = true;
    try {
      await run();
    } finally {
      if (btn) btn.disabled = false;
    }
  });
}

panel("generate-form", async () => {
  const out = $("generated");
  out.classList.remove("error");
  out.textContent = "…";
  try {
    const r = await api("/v1/generate", {
      model: $("generate-model").value, prompt: $("generate-prompt").value,
      max_tokens: Number($("generate-max").value), temperature: Number($("generate-temperature").value),
      seed: Number($("generate-seed").value),
    });
    out.textContent = r.text;
  } catch (e) {
    showError(out, e);
  }
});

panel("similar-form", async () => {
  const out = $("similar-list");
  out.classList.remove("error");
  try {
    // "king woman -man": words to add, and words after a "-" to subtract (as `seqlab predict`).
    const words = $("similar-word").value.trim().split(/\s+/).filter((w) => w);
    const negative = words.filter((w) => w.length > 1 && w.startsWith("-")).map((w) => w.slice(1));
    const positive = words.filter((w) => !(w.length > 1 && w.startsWith("-")));
    const r = await api("/v1/similar", {
      model: $("similar-model").value, positive, negative, n: Number($("similar-n").value),
    });
    out.replaceChildren(...r.similar.map((s) => {
      const li = document.createElement("li");
      li.textContent = `${s.word}  ${s.similarity.toFixed(3)}`;
      return li;
    }));
  } catch (e) {
    out.replaceChildren();
    showError(out, e);
  }
});

panel("classify-form", async () => {
  const out = $("classified");
  out.classList.remove("error");
  try {
    const r = await api("/v1/classify", { model: $("classify-model").value, text: $("classify-text").value });
    out.replaceChildren(...r.probabilities.map((p) => {
      const div = document.createElement("div");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.round(200 * p.probability)}px`;
      div.append(bar, `${p.label}  ${(100 * p.probability).toFixed(1)} %`);
      return div;
    }));
  } catch (e) {
    showError(out, e);
  }
});

panel("forecast-form", async () => {
  const out = $("forecasted");
  out.classList.remove("error");
  try {
    const series = $("forecast-series").value.split(/[\s,;]+/).filter((s) => s).map(Number);
    const r = await api("/v1/forecast", { model: $("forecast-model").value, series });
    const f = (v) => v.map((x) => x.toFixed(3)).join(", ");
    out.textContent = `model: ${f(r.forecast)}\nlast value: ${f(r.last_value)}\nseasonal naive: ${f(r.seasonal_naive)}`;
  } catch (e) {
    showError(out, e);
  }
});

// ---- start -----------------------------------------------------------------------------------

async function start() {
  let models;
  try {
    models = (await api("/v1/models")).models;
  } catch (e) {
    $("status").classList.add("error");
    $("status").textContent = `cannot list the models: ${e.message}`;
    return;
  }
  const byKind = {};
  for (const m of models) (byKind[m.kind] = byKind[m.kind] || []).push(m);
  $("status").textContent = models.length
    ? `models: ${models.map((m) => `${m.name} (${m.kind})`).join(", ")}`
    : "no models loaded";
  for (const kind of ["translate", "generate", "similar", "classify", "forecast"]) {
    const list = byKind[kind] || [];
    $(`panel-${kind}`).hidden = list.length === 0;
    if (list.length) fillModels($(`${kind}-model`), list.map((m) => m.name));
  }
  if (byKind.translate) {
    $("translate-form").addEventListener("submit", translate);
    $("attention-layer").addEventListener("change", redrawAttention);
    $("attention-head").addEventListener("change", redrawAttention);
    $("panel-pe").hidden = false;
    const dm = byKind.translate[0].info && byKind.translate[0].info.d_model;
    if (dm) $("pe-d-model").value = dm;
    $("pe-form").addEventListener("input", drawPositionalEncoding);
    drawPositionalEncoding();
    const q = new URLSearchParams(location.search).get("text");
    if (q) {
      $("translate-text").value = q;
      translate();
    }
  }
}

start();
