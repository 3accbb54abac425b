"""The interactive landscape page: one self-contained HTML file, its data
and script inline (works offline, from file://)."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from sonufy_model.landscape.clusters import nearest_neighbours
from sonufy_model.landscape.colors import (
    AUTO,
    OTHER_COLOR,
    UNKNOWN,
    _check_color_by,
    choose_color_by,
    coloring,
    present_labels,
)
from sonufy_model.landscape.persistence import _vectors

HTML_NAME = "landscape.html"


def _layer(frame: pl.DataFrame, line1: list[str], line2: list[str], label_names: Sequence[str],
           color_by: str, unit: str, audio: list[str | None] | None = None) -> dict:
    neighbours = nearest_neighbours(_vectors(frame)) if frame.height > 1 else np.zeros((frame.height, 0))
    labels = {}
    for name in label_names:
        c = coloring(name, frame[name].cast(pl.String).to_list())
        labels[name] = {"values": c.values, "counts": c.counts, "colors": c.colors, "codes": c.codes.tolist()}
    layer = {
        "unit": unit,
        "x": [round(float(v), 4) for v in frame["x"].to_list()],
        "y": [round(float(v), 4) for v in frame["y"].to_list()],
        "line1": line1,
        "line2": line2,
        "neighbours": neighbours.astype(int).tolist(),
        "labels": labels,
        "colorBy": color_by if color_by in labels else label_names[0],
    }
    if audio is not None:
        layer["audio"] = audio
    return layer


def render_html(
    points: pl.DataFrame, path: Path, color_by: str = AUTO, groups: pl.DataFrame | None = None,
    group_vectors: dict[str, np.ndarray] | None = None, title: str = "Sonufy: the sonic landscape",
    max_points: int = 50_000, total: int | None = None, seed: int = 0,
) -> dict:
    """The interactive page: one file, its data and script inline (works
    offline, from file://). Hover names a point, a click plays the preview
    (when there is one), the search box highlights a track and its 10
    nearest neighbours (cosine in the latent space), colour by any label
    with a known value (``auto``: :func:`choose_color_by`, over every track).

    points: track_id, x, y, artist, title, the COLOR_LABELS, audio, vector.
    groups: level, name, artist, genre, tracks, x, y, cluster (optional),
    with group_vectors[level] the mean vectors in the same order.
    Above ``max_points`` tracks a seeded random sample of that size is shown.
    Returns the numbers shown."""
    _check_color_by(color_by)
    if color_by == AUTO:
        color_by, _ = choose_color_by(points)
    total = points.height if total is None else total
    label_names = present_labels(points, keep=color_by)
    if points.height > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(points.height, max_points, replace=False))
        points = points[keep]
    layers = {
        "tracks": _layer(
            points, points["artist"].to_list(), points["title"].to_list(), label_names, color_by, "tracks",
            audio=points["audio"].to_list(),
        )
    }
    for level, unit in (("artist", "artists"), ("genre", "genres")):
        if groups is None or group_vectors is None or level not in group_vectors:
            continue
        part = groups.filter(pl.col("level") == level).with_columns(
            pl.Series("vector", group_vectors[level], dtype=pl.Array(pl.Float32, group_vectors[level].shape[1])),
            pl.col("cluster").cast(pl.String).fill_null(UNKNOWN),
        )
        if part.is_empty():
            continue
        detail = [
            f"{n:,} track{'s' if n != 1 else ''}" + (f" · {g}" if g and level == "artist" else "")
            for n, g in zip(part["tracks"].to_list(), part["genre"].to_list())
        ]
        names = ["cluster", "genre"] if level == "artist" else ["cluster"]
        layers[unit] = _layer(part, part["name"].to_list(), detail, names, "cluster", unit)
    data = {
        "title": title,
        "modelVersion": str(points["model_version"][0]) if "model_version" in points.columns and points.height else "",
        "total": total,
        "shown": points.height,
        "layers": layers,
    }
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    page = _PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", payload)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return {"html_points": points.height, "html_bytes": path.stat().st_size}


_PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
html, body { margin: 0; height: 100%; background: #0b0d12; color: #e4e6eb;
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; }
#app { display: flex; height: 100%; }
#side { width: 310px; flex: none; box-sizing: border-box; padding: 14px 14px 10px; overflow-y: auto;
  border-right: 1px solid #23262f; background: #10131a; }
#side h1 { font-size: 17px; margin: 0 0 4px; }
#meta { color: #9aa0ab; margin: 0 0 12px; font-size: 12px; }
label.row { display: flex; justify-content: space-between; align-items: center; margin: 6px 0; }
select, input[type=search] { background: #181c25; color: #e4e6eb; border: 1px solid #323744;
  border-radius: 4px; padding: 4px 6px; font: inherit; }
input[type=search] { width: 100%; box-sizing: border-box; margin-top: 10px; }
#matches { list-style: none; margin: 4px 0 0; padding: 0; }
#matches li, #selection li { cursor: pointer; padding: 2px 4px; border-radius: 3px; }
#matches li:hover, #selection li:hover { background: #232836; }
#selection h2 { font-size: 14px; margin: 12px 0 4px; color: #ffd166; }
#selection ol { margin: 0; padding-left: 22px; font-size: 13px; }
#legend { margin-top: 12px; font-size: 12px; }
#legend div { display: flex; align-items: center; gap: 6px; margin: 2px 0; }
#legend i { width: 11px; height: 11px; border-radius: 50%; flex: none; }
#legend span.n { color: #8a909b; margin-left: auto; }
#status { color: #9aa0ab; font-size: 12px; min-height: 1.4em; }
audio { width: 100%; margin-top: 4px; }
#main { flex: 1; position: relative; overflow: hidden; }
#map { display: block; width: 100%; height: 100%; cursor: crosshair; }
#tooltip { position: absolute; pointer-events: none; display: none; max-width: 320px;
  background: rgba(18, 21, 29, 0.96); border: 1px solid #3a4050; border-radius: 5px; padding: 6px 9px;
  box-shadow: 0 2px 10px rgba(0,0,0,.5); }
#tooltip .l1 { font-weight: 600; }
#tooltip .l3 { color: #9aa0ab; font-size: 12px; }
#count { position: absolute; right: 10px; bottom: 8px; color: #8a909b; font-size: 12px; }
#help { position: absolute; left: 10px; bottom: 8px; color: #5d6370; font-size: 11px; }
</style>
</head>
<body>
<div id="app">
  <aside id="side">
    <h1>The sonic landscape</h1>
    <p id="meta"></p>
    <label class="row">Map <select id="layer"></select></label>
    <label class="row">Colour by <select id="color-by"></select></label>
    <input id="search" type="search" placeholder="Search artist or title, Enter to pick" autocomplete="off">
    <ul id="matches"></ul>
    <div id="selection"></div>
    <p id="status"></p>
    <audio id="player" controls preload="none"></audio>
    <div id="legend"></div>
  </aside>
  <main id="main">
    <canvas id="map"></canvas>
    <div id="tooltip"></div>
    <div id="count"></div>
    <div id="help">scroll: zoom · drag: pan · double-click: reset · click: play and show neighbours · Esc: clear</div>
  </main>
</div>
<script id="landscape-data" type="application/json">__DATA__</script>
<script>
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("landscape-data").textContent);
  var BG = "#0b0d12";
  var canvas = document.getElementById("map"), ctx = canvas.getContext("2d");
  var $ = function (id) { return document.getElementById(id); };
  var tooltip = $("tooltip"), search = $("search"), matchesEl = $("matches"), selectionEl = $("selection");
  var legendEl = $("legend"), statusEl = $("status"), player = $("player"), countEl = $("count");
  var layerSel = $("layer"), colorSel = $("color-by");
  var state = { layer: null, colorBy: null, scale: 1, tx: 0, ty: 0, selected: -1, highlight: [], hover: -1 };
  var layers = {};

  function prepare(name) {
    var L = DATA.layers[name], n = L.x.length, i;
    L.name = name; L.n = n;
    var x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (i = 0; i < n; i++) {
      if (L.x[i] < x0) x0 = L.x[i]; if (L.x[i] > x1) x1 = L.x[i];
      if (L.y[i] < y0) y0 = L.y[i]; if (L.y[i] > y1) y1 = L.y[i];
    }
    if (!n) { x0 = y0 = 0; x1 = y1 = 1; }
    L.bounds = [x0, x1 > x0 ? x1 : x0 + 1, y0, y1 > y0 ? y1 : y0 + 1];
    L.text = new Array(n);
    for (i = 0; i < n; i++) L.text[i] = (L.line1[i] + " \u2014 " + L.line2[i]).toLowerCase();
    // A grid over the data for hover look-ups.
    var g = Math.max(1, Math.min(512, Math.round(Math.sqrt(n / 4))));
    var w = (L.bounds[1] - L.bounds[0]) / g, h = (L.bounds[3] - L.bounds[2]) / g;
    var cellOf = new Int32Array(n), counts = new Int32Array(g * g + 1);
    for (i = 0; i < n; i++) {
      var cx = Math.min(g - 1, Math.floor((L.x[i] - L.bounds[0]) / w));
      var cy = Math.min(g - 1, Math.floor((L.y[i] - L.bounds[2]) / h));
      cellOf[i] = cx + cy * g; counts[cellOf[i] + 1]++;
    }
    for (i = 0; i < g * g; i++) counts[i + 1] += counts[i];
    var fill = counts.slice(0, g * g), items = new Int32Array(n);
    for (i = 0; i < n; i++) items[fill[cellOf[i]]++] = i;
    L.grid = { g: g, w: w, h: h, start: counts, items: items };
    L.byColor = {};
    layers[name] = L;
  }

  function layer() { return layers[state.layer]; }
  function size() { return { w: canvas.clientWidth, h: canvas.clientHeight }; }
  function sx(x) { return state.tx + x * state.scale; }
  function sy(y) { return state.ty - y * state.scale; }

  function fitView() {
    var L = layer(), s = size(), b = L.bounds, pad = 24;
    state.scale = Math.min((s.w - 2 * pad) / (b[1] - b[0]), (s.h - 2 * pad) / (b[3] - b[2]));
    state.tx = s.w / 2 - state.scale * (b[0] + b[1]) / 2;
    state.ty = s.h / 2 + state.scale * (b[2] + b[3]) / 2;
  }

  function resize() {
    var dpr = window.devicePixelRatio || 1, s = size();
    canvas.width = Math.max(1, Math.round(s.w * dpr)); canvas.height = Math.max(1, Math.round(s.h * dpr));
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  }

  function order(L, label) {
    // Point indices grouped by colour: one fill per colour.
    if (L.byColor[label]) return L.byColor[label];
    var lab = L.labels[label], groups = {}, i;
    for (i = 0; i < L.n; i++) {
      var c = lab.colors[lab.codes[i]];
      (groups[c] = groups[c] || []).push(i);
    }
    var list = Object.keys(groups).map(function (c) { return [c, groups[c]]; });
    list.sort(function (a, b) { return b[1].length - a[1].length; }); // big groups first, small on top
    return (L.byColor[label] = list);
  }

  function radius(L) {
    var base = L.n < 500 ? 4.5 : L.n < 5000 ? 3 : L.n < 30000 ? 2 : 1.3;
    return base * Math.max(1, Math.min(3, Math.sqrt(state.scale / L.baseScale)));
  }

  function draw() {
    var L = layer(), s = size(), r = radius(L), drawn = 0;
    ctx.fillStyle = BG; ctx.fillRect(0, 0, s.w, s.h);
    var dim = state.highlight.length > 0, groups = order(L, state.colorBy);
    ctx.globalAlpha = dim ? 0.16 : (L.n > 30000 ? 0.55 : 0.85);
    groups.forEach(function (group) {
      ctx.fillStyle = group[0]; ctx.beginPath();
      group[1].forEach(function (i) {
        var px = sx(L.x[i]), py = sy(L.y[i]);
        if (px < -r || py < -r || px > s.w + r || py > s.h + r) return;
        drawn++;
        if (r < 2) { ctx.rect(px - r, py - r, 2 * r, 2 * r); }
        else { ctx.moveTo(px + r, py); ctx.arc(px, py, r, 0, 2 * Math.PI); }
      });
      ctx.fill();
    });
    ctx.globalAlpha = 1;
    if (dim) drawHighlight(L, r);
    if (state.hover >= 0) ring(L, state.hover, r + 3, "#ffffff", 1.5);
    canvas.setAttribute("data-drawn", String(drawn));
    countEl.textContent = drawn.toLocaleString("en") + " of " + L.n.toLocaleString("en") + " " + L.unit + " drawn" +
      (L.name === "tracks" && DATA.total > DATA.shown ? " (a sample of " + DATA.total.toLocaleString("en") + ")" : "");
  }

  function ring(L, i, r, color, width) {
    ctx.strokeStyle = color; ctx.lineWidth = width; ctx.beginPath();
    ctx.arc(sx(L.x[i]), sy(L.y[i]), r, 0, 2 * Math.PI); ctx.stroke();
  }

  function drawHighlight(L, r) {
    var lab = L.labels[state.colorBy], sel = state.selected, R = Math.max(r + 2, 5);
    ctx.strokeStyle = "rgba(255, 209, 102, 0.55)"; ctx.lineWidth = 1; ctx.beginPath();
    state.highlight.forEach(function (i) {
      if (i === sel) return;
      ctx.moveTo(sx(L.x[sel]), sy(L.y[sel])); ctx.lineTo(sx(L.x[i]), sy(L.y[i]));
    });
    ctx.stroke();
    state.highlight.forEach(function (i) {
      ctx.fillStyle = lab.colors[lab.codes[i]]; ctx.beginPath();
      ctx.arc(sx(L.x[i]), sy(L.y[i]), R, 0, 2 * Math.PI); ctx.fill();
      ring(L, i, R + 1.5, i === sel ? "#ffd166" : "#ffffff", i === sel ? 3 : 1.5);
    });
  }

  function nearest(mx, my, maxPx) {
    var L = layer(), G = L.grid, rd = maxPx / state.scale;
    var x = (mx - state.tx) / state.scale, y = (state.ty - my) / state.scale;
    var cx0 = Math.max(0, Math.floor((x - rd - L.bounds[0]) / G.w)), cx1 = Math.min(G.g - 1, Math.floor((x + rd - L.bounds[0]) / G.w));
    var cy0 = Math.max(0, Math.floor((y - rd - L.bounds[2]) / G.h)), cy1 = Math.min(G.g - 1, Math.floor((y + rd - L.bounds[2]) / G.h));
    var best = -1, bestD = rd * rd;
    for (var cy = cy0; cy <= cy1; cy++) for (var cx = cx0; cx <= cx1; cx++) {
      var c = cx + cy * G.g;
      for (var k = G.start[c]; k < G.start[c + 1]; k++) {
        var i = G.items[k], dx = L.x[i] - x, dy = L.y[i] - y, d = dx * dx + dy * dy;
        if (d <= bestD) { bestD = d; best = i; }
      }
    }
    return best;
  }

  function el(tag, cls, text) { var e = document.createElement(tag); if (cls) e.className = cls; if (text != null) e.textContent = text; return e; }

  function labelOf(L, i) { var lab = L.labels[state.colorBy]; return state.colorBy + ": " + lab.values[lab.codes[i]]; }

  function showTooltip(i, mx, my) {
    var L = layer();
    if (i < 0) { tooltip.style.display = "none"; tooltip.removeAttribute("data-index"); return; }
    tooltip.replaceChildren(el("div", "l1", L.line1[i]), el("div", "l2", L.line2[i]),
      el("div", "l3", labelOf(L, i) + (L.audio && L.audio[i] ? " \u00b7 click to play" : "")));
    tooltip.setAttribute("data-index", String(i));
    tooltip.style.display = "block";
    var s = size(), w = tooltip.offsetWidth, h = tooltip.offsetHeight;
    tooltip.style.left = Math.min(mx + 14, s.w - w - 4) + "px";
    tooltip.style.top = (my + 14 + h > s.h ? my - h - 10 : my + 14) + "px";
  }

  function select(i, recentre) {
    var L = layer();
    state.selected = i;
    state.highlight = i < 0 ? [] : [i].concat(L.neighbours[i] || []);
    selectionEl.replaceChildren();
    if (i >= 0) {
      selectionEl.appendChild(el("h2", null, L.line1[i] + " \u2014 " + L.line2[i]));
      selectionEl.appendChild(el("div", "sub", (L.neighbours[i] || []).length + " nearest by sound:"));
      var ol = el("ol");
      (L.neighbours[i] || []).forEach(function (j) {
        var li = el("li", null, L.line1[j] + " \u2014 " + L.line2[j]);
        li.setAttribute("data-index", String(j));
        li.addEventListener("click", function () { select(j, true); play(j); });
        ol.appendChild(li);
      });
      selectionEl.appendChild(ol);
      if (recentre) {
        var s = size(), px = sx(L.x[i]), py = sy(L.y[i]);
        if (px < 40 || py < 40 || px > s.w - 40 || py > s.h - 40) { state.tx += s.w / 2 - px; state.ty += s.h / 2 - py; }
      }
    }
    selectionEl.setAttribute("data-selected", String(i));
    draw();
  }

  function play(i) {
    var L = layer(), url = L.audio ? L.audio[i] : null;
    if (!url) { player.pause(); statusEl.textContent = "No preview for " + L.line1[i] + " \u2014 " + L.line2[i] + "."; return; }
    player.src = url;
    statusEl.textContent = "Playing " + L.line1[i] + " \u2014 " + L.line2[i];
    var p = player.play();
    // AbortError: a later click paused or replaced this preview before it
    // started; the later click has already said what happens.
    if (p && p.catch) p.catch(function (e) { if (e.name !== "AbortError") statusEl.textContent = "Could not play this preview (" + e.name + ")."; });
  }

  function findMatches(q) {
    var L = layer(), out = [];
    for (var i = 0; i < L.n && out.length < 8; i++) if (L.text[i].indexOf(q) >= 0) out.push(i);
    return out;
  }

  function showMatches() {
    var q = search.value.trim().toLowerCase(), L = layer();
    matchesEl.replaceChildren();
    if (q.length < 2) return [];
    var found = findMatches(q);
    found.forEach(function (i) {
      var li = el("li", null, L.line1[i] + " \u2014 " + L.line2[i]);
      li.setAttribute("data-index", String(i));
      li.addEventListener("click", function () { pick(i); });
      matchesEl.appendChild(li);
    });
    if (!found.length) matchesEl.appendChild(el("li", "none", "no match"));
    return found;
  }

  function pick(i) { matchesEl.replaceChildren(); select(i, true); }

  function legend() {
    var L = layer(), lab = L.labels[state.colorBy], shown = 0;
    legendEl.replaceChildren(el("div", null, "Colour: " + state.colorBy));
    var entries = lab.values.map(function (v, k) { return [v, lab.counts[k], lab.colors[k]]; });
    var grey = entries.filter(function (e) { return e[2] === "__OTHER__"; }).length;
    entries.forEach(function (e) {
      if (shown >= 24 || (e[2] === "__OTHER__" && state.colorBy !== "year")) return;
      var row = el("div"), dot = el("i"); dot.style.background = e[2];
      row.append(dot, el("span", null, e[0]), el("span", "n", e[1].toLocaleString("en")));
      legendEl.appendChild(row); shown++;
    });
    if (entries.length > shown) legendEl.appendChild(el("div", "more", "\u2026 and " + (entries.length - shown).toLocaleString("en") + " more" + (grey ? " (grey)" : "")));
  }

  function setLayer(name) {
    state.layer = name; state.hover = -1;
    var L = layer();
    colorSel.replaceChildren();
    Object.keys(L.labels).forEach(function (k) { var o = el("option", null, k); o.value = k; colorSel.appendChild(o); });
    state.colorBy = L.labels[state.colorBy] ? state.colorBy : L.colorBy;
    colorSel.value = state.colorBy;
    fitView(); L.baseScale = state.scale;
    legend(); select(-1); showMatches();
    search.placeholder = name === "tracks" ? "Search artist or title, Enter to pick" : "Search " + L.unit + ", Enter to pick";
  }

  // -- events
  var drag = null;
  canvas.addEventListener("mousedown", function (e) { drag = { x: e.offsetX, y: e.offsetY, tx: state.tx, ty: state.ty, moved: false }; });
  window.addEventListener("mouseup", function () { if (drag) setTimeout(function () { drag = null; }, 0); });
  canvas.addEventListener("mousemove", function (e) {
    if (drag && (e.buttons & 1)) {
      var dx = e.offsetX - drag.x, dy = e.offsetY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      if (drag.moved) { state.tx = drag.tx + dx; state.ty = drag.ty + dy; showTooltip(-1); draw(); return; }
    }
    var i = nearest(e.offsetX, e.offsetY, 12);
    if (i !== state.hover) { state.hover = i; draw(); }
    showTooltip(i, e.offsetX, e.offsetY);
  });
  canvas.addEventListener("mouseleave", function () { state.hover = -1; showTooltip(-1); draw(); });
  canvas.addEventListener("click", function (e) {
    if (drag && drag.moved) return;
    var i = nearest(e.offsetX, e.offsetY, 12);
    if (i < 0) return;
    select(i, false); play(i);
  });
  canvas.addEventListener("dblclick", function () { fitView(); draw(); });
  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    var f = Math.exp(-e.deltaY * 0.0015);
    state.tx = e.offsetX - (e.offsetX - state.tx) * f; state.ty = e.offsetY - (e.offsetY - state.ty) * f; state.scale *= f;
    draw();
  }, { passive: false });
  search.addEventListener("input", showMatches);
  search.addEventListener("keydown", function (e) {
    if (e.key === "Enter") { var found = showMatches(); if (found.length) pick(found[0]); }
    if (e.key === "Escape") { search.value = ""; showMatches(); select(-1); }
  });
  document.addEventListener("keydown", function (e) { if (e.key === "Escape" && document.activeElement !== search) select(-1); });
  colorSel.addEventListener("change", function () { state.colorBy = colorSel.value; legend(); draw(); });
  layerSel.addEventListener("change", function () { setLayer(layerSel.value); });
  window.addEventListener("resize", function () { resize(); fitView(); layer().baseScale = state.scale; draw(); });

  // -- start
  Object.keys(DATA.layers).forEach(function (name) {
    prepare(name);
    var o = el("option", null, name); o.value = name; layerSel.appendChild(o);
  });
  $("meta").textContent = (DATA.modelVersion ? "model " + DATA.modelVersion + " \u00b7 " : "") +
    DATA.total.toLocaleString("en") + " tracks" + (DATA.total > DATA.shown ? ", " + DATA.shown.toLocaleString("en") + " shown" : "");
  resize();
  setLayer("tracks");
  window.landscape = {
    state: state,
    layer: function () { return layer(); },
    screenOf: function (i) {
      var L = layer(), b = canvas.getBoundingClientRect();
      return [b.left + sx(L.x[i]), b.top + sy(L.y[i])];
    },
    indexOf: function (line1, line2) {
      var L = layer();
      for (var i = 0; i < L.n; i++) if (L.line1[i] === line1 && L.line2[i] === line2) return i;
      return -1;
    },
    select: select,
  };
  document.body.setAttribute("data-ready", "true");
})();
</script>
</body>
</html>
"""
_PAGE = _PAGE.replace("__OTHER__", OTHER_COLOR)
