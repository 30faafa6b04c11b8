// The live map: every device at its position on a canvas (Web Mercator), coloured by its state,
// clustered on a screen grid when zoomed out (a cluster takes its worst member's colour and shows
// its count), live from the event stream. No library, no CDN: a 202,000-device city is a few
// typed arrays and one pass per frame. Base map: raster tiles from the configured template, or a
// plain background (the default; works with no internet).
"use strict";
(() => {
  const STATE_COLOURS = ["#90a4ae", "#b0bec5", "#1565c0", "#546e7a", "#ef8f00", "#b71c1c", "#8e24aa", "#ff0000"];
  const STATE_LABELS = ["normal", "suppressed", "shelved", "out of service", "returned, unacknowledged",
    "acknowledged, active", "communication lost", "active, unacknowledged"];
  const CELL = 44;            // cluster grid (CSS px)
  const INDIVIDUAL = 15000;   // draw devices one by one when fewer are visible
  const TILE = 256;
  const host = document.getElementById("map");
  if (!host) return;
  const css = document.createElement("link");
  css.rel = "stylesheet"; css.href = "/static/map.css";
  document.head.appendChild(css);

  const M = window.scadaMap = {ready: false, firstPaint: null, frames: 0, seen: {}, n: 0, error: null};
  let cfg = null, paths = [], wx = null, wy = null, has = null, rank = null, prio = null, index = new Map();
  let hot = new Set();        // indices not normal (drawn on top, individually)
  let cx = 0.5 * TILE, cy = 0.5 * TILE, zoom = 12, W = 0, H = 0, dpr = 1;
  let pending = false, pendingSeen = [];
  const tiles = new Map();

  // ------------------------------------------------------------------ DOM
  host.classList.add("scada-map");
  const canvas = document.createElement("canvas");
  canvas.id = "map-canvas";
  host.appendChild(canvas);
  const ctx2 = canvas.getContext("2d");
  const bar = document.createElement("div");
  bar.className = "map-controls";
  bar.innerHTML = '<button id="map-zoom-in" title="zoom in">+</button><button id="map-zoom-out" title="zoom out">−</button>' +
    '<button id="map-fit" title="whole city">⤢</button>';
  host.appendChild(bar);
  const legend = document.createElement("div");
  legend.className = "map-legend"; legend.id = "map-legend";
  legend.innerHTML = STATE_LABELS.map((l, k) => '<div><span class="dot" data-state="' + k + '"></span>' + l +
    ' <span class="count" id="map-count-' + k + '"></span></div>').reverse().join("") +
    '<div><span class="crew-key"></span>crew (tablet position) <span class="crew-key base"></span>crew (base)</div>' +
    '<div class="muted" id="map-info"></div><div class="attr" id="map-attr"></div>';
  host.appendChild(legend);
  legend.querySelectorAll(".dot").forEach((d) => { d.style.background = STATE_COLOURS[+d.dataset.state]; });
  // GIS import (engineers: the gis.import row of the role matrix; the server checks it again)
  const gisBox = document.createElement("form");
  gisBox.className = "map-gis"; gisBox.id = "map-gis"; gisBox.hidden = true;
  gisBox.innerHTML = '<b>Import positions</b> <span class="muted">GeoJSON, CSV, zipped shapefile</span><br>' +
    '<input type="file" id="gis-file" accept=".geojson,.json,.csv,.txt,.zip"> ' +
    '<label>id field <input id="gis-id" value="id" size="8"></label> ' +
    '<label>EPSG <input id="gis-epsg" size="6" placeholder="4326"></label> ' +
    '<label><input type="checkbox" id="gis-dry"> dry run</label> ' +
    '<button type="submit" id="gis-submit">Import</button><pre id="gis-report"></pre>';
  host.appendChild(gisBox);
  const pop = document.createElement("div");
  pop.className = "map-popup"; pop.id = "map-popup"; pop.hidden = true;
  host.appendChild(pop);

  // ------------------------------------------------------------------ projection
  const project = ScadaMapCore.project;  // shared with the tablet's visit maps (mapcore.js)
  function scale() { return Math.pow(2, zoom); }
  function toScreen(x, y) { const k = scale(); return [(x - cx) * k + W / 2, (y - cy) * k + H / 2]; }
  function toWorld(sx, sy) { const k = scale(); return [(sx - W / 2) / k + cx, (sy - H / 2) / k + cy]; }

  // ------------------------------------------------------------------ data
  function decode(t) {
    const n = t.n;
    paths = new Array(n); wx = new Float64Array(n); wy = new Float64Array(n);
    has = new Uint8Array(n).fill(1); rank = new Uint8Array(n); prio = new Uint8Array(n);
    index = new Map(); hot = new Set();
    for (const k of t.nopos) has[k] = 0;
    let la = 0, lo = 0;
    const stack = [];  // [path, children left]
    for (let i = 0; i < n; i++) {
      la += t.lat[i]; lo += t.lon[i];
      const p = project(la / t.scale, lo / t.scale);
      wx[i] = p[0]; wy[i] = p[1];
      while (stack.length && stack[stack.length - 1][1] === 0) stack.pop();
      let path;
      if (stack.length) { const top = stack[stack.length - 1]; top[1]--; path = top[0] + "/" + t.names[t.name[i]]; }
      else path = t.areas[t.area[i]] + "/" + t.names[t.name[i]];
      paths[i] = path; index.set(path, i);
      if (t.nchild[i] > 0) stack.push([path, t.nchild[i]]);
    }
    M.n = n; M.rev = t.rev;
  }

  function setState(path, s, p, ts) {
    const i = index.get(path);
    if (i === undefined) return;
    rank[i] = s; prio[i] = p;
    if (s) hot.add(i); else hot.delete(i);
    if (ts !== undefined) pendingSeen.push([path, s, ts]);
  }

  async function loadStates() {
    const st = await Console.api("/api/map/states");
    rank.fill(0); prio.fill(0); hot = new Set();
    for (const [path, s, p] of st.d) setState(path, s, p);
    redraw();
  }

  async function loadDevices() {
    const t = await Console.api("/api/map/devices");
    decode(t);
  }

  function fit() {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (let i = 0; i < M.n; i++) {
      if (!has[i]) continue;
      if (wx[i] < x0) x0 = wx[i]; if (wx[i] > x1) x1 = wx[i];
      if (wy[i] < y0) y0 = wy[i]; if (wy[i] > y1) y1 = wy[i];
    }
    if (!isFinite(x0)) { const c = project(cfg.center[0], cfg.center[1]); cx = c[0]; cy = c[1]; zoom = 13; return; }
    cx = (x0 + x1) / 2; cy = (y0 + y1) / 2;
    // margins: the legend (right) and the import form (bottom) lie over the canvas
    const span = Math.max((x1 - x0) / Math.max(W - 360, 100), (y1 - y0) / Math.max(H - 200, 100), 1e-9);
    zoom = Math.max(2, Math.min(cfg.max_zoom, Math.log2(1 / span)));
  }

  // ------------------------------------------------------------------ drawing
  function resize() {
    dpr = window.devicePixelRatio || 1;
    const r = host.getBoundingClientRect();
    W = Math.max(100, r.width); H = Math.max(100, r.height);
    canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
    canvas.style.width = W + "px"; canvas.style.height = H + "px";
    redraw();
  }

  function redraw() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(frame);
  }

  function drawTiles() { ScadaMapCore.drawTiles(ctx2, cfg, {cx, cy, zoom, W, H}, tiles, redraw); }

  function dot(x, y, r, colour, ring) {
    ctx2.beginPath(); ctx2.arc(x, y, r, 0, 2 * Math.PI);
    ctx2.fillStyle = colour; ctx2.fill();
    if (ring) { ctx2.lineWidth = 1.5; ctx2.strokeStyle = ring; ctx2.stroke(); }
  }

  function radius(s, p) { return s === 0 ? 2.5 : (p && p <= 2 ? 7 : 5.5); }

  function frame() {
    pending = false;
    ctx2.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx2.fillStyle = ScadaMapCore.BACKGROUND; ctx2.fillRect(0, 0, W, H);
    drawTiles();
    if (!M.n) { finishFrame(); return; }
    const k = scale(), hx = W / 2 - cx * k, hy = H / 2 - cy * k;
    // visible devices
    let visible = 0;
    for (let i = 0; i < M.n; i++) {
      if (!has[i]) continue;
      const sx = wx[i] * k + hx, sy = wy[i] * k + hy;
      if (sx >= -10 && sy >= -10 && sx <= W + 10 && sy <= H + 10) visible++;
    }
    M.clustered = visible > M.clusterAbove;
    const counts = new Array(STATE_COLOURS.length).fill(0);
    for (const i of hot) counts[rank[i]]++;
    if (M.clustered) {
      const cols = Math.ceil(W / CELL) + 2, rows = Math.ceil(H / CELL) + 2;
      const cnt = new Uint32Array(cols * rows), worst = new Int8Array(cols * rows).fill(-1);
      const sumx = new Float64Array(cols * rows), sumy = new Float64Array(cols * rows);
      for (let i = 0; i < M.n; i++) {
        if (!has[i]) continue;
        const sx = wx[i] * k + hx, sy = wy[i] * k + hy;
        if (sx < -CELL || sy < -CELL || sx > W + CELL || sy > H + CELL) continue;
        const c = (Math.floor(sy / CELL) + 1) * cols + Math.floor(sx / CELL) + 1;
        if (c < 0 || c >= cnt.length) continue;
        cnt[c]++; sumx[c] += sx; sumy[c] += sy;
        if (rank[i] > worst[c]) worst[c] = rank[i];
      }
      ctx2.font = "11px system-ui, sans-serif"; ctx2.textAlign = "center"; ctx2.textBaseline = "middle";
      M.clusters = [];
      for (let c = 0; c < cnt.length; c++) {
        if (!cnt[c]) continue;
        const x = sumx[c] / cnt[c], y = sumy[c] / cnt[c], s = worst[c];
        const r = Math.min(20, 6 + 2.2 * Math.log10(cnt[c] + 1) * 2);
        dot(x, y, r, STATE_COLOURS[s], s === 0 ? "#607d8b" : "#fff");
        ctx2.fillStyle = s === 0 || s === 1 ? "#1b1f23" : "#fff";
        ctx2.fillText(cnt[c] > 999 ? Math.round(cnt[c] / 1000) + "k" : String(cnt[c]), x, y);
        M.clusters.push([x, y, r, s, cnt[c]]);
      }
    } else {
      M.clusters = null;
      ctx2.fillStyle = STATE_COLOURS[0];
      for (let i = 0; i < M.n; i++) {
        if (!has[i] || rank[i]) continue;
        const sx = wx[i] * k + hx, sy = wy[i] * k + hy;
        if (sx < -5 || sy < -5 || sx > W + 5 || sy > H + 5) continue;
        ctx2.fillRect(sx - 2, sy - 2, 4, 4);
      }
      // not normal: on top, the worst last
      const order = [...hot].filter((i) => has[i]).sort((a, b) => rank[a] - rank[b] || prio[b] - prio[a]);
      for (const i of order) {
        const sx = wx[i] * k + hx, sy = wy[i] * k + hy;
        if (sx < -10 || sy < -10 || sx > W + 10 || sy > H + 10) continue;
        dot(sx, sy, radius(rank[i], prio[i]), STATE_COLOURS[rank[i]], "#263238");
      }
    }
    drawCrews();
    for (let s = 1; s < counts.length; s++) {
      const el = document.getElementById("map-count-" + s);
      if (el) el.textContent = counts[s] ? "(" + counts[s] + ")" : "";
    }
    document.getElementById("map-info").textContent =
      M.n + " devices · zoom " + zoom.toFixed(1) + (M.clustered ? " · clustered" : "");
    finishFrame();
  }

  // crews (issue 20): where dispatch believes they are, the position their tablet reported
  // (filled square) or their base position from the site file (hollow square)
  let crews = [];
  function drawCrews() {
    ctx2.font = "bold 11px system-ui, sans-serif"; ctx2.textAlign = "left"; ctx2.textBaseline = "middle";
    for (const c of crews) {
      if (c.lat == null) continue;
      const [x, y] = toScreen(...project(c.lat, c.lon));
      if (x < -20 || y < -20 || x > W + 20 || y > H + 20) continue;
      ctx2.lineWidth = 2; ctx2.strokeStyle = "#1d3557";
      ctx2.fillStyle = c.position_source === "reported" ? "#1d3557" : "#ffffff";
      ctx2.fillRect(x - 6, y - 6, 12, 12); ctx2.strokeRect(x - 6, y - 6, 12, 12);
      ctx2.fillStyle = "#1d3557"; ctx2.fillText(c.name || c.id, x + 9, y);
    }
  }
  async function loadCrews() {
    try {
      const j = await Console.api("/api/crews", true);
      crews = j.crews || [];
    } catch (e) { crews = []; }
    M.crews = crews;
    redraw();
  }
  function crewEvent(c) {
    const k = crews.findIndex((x) => x.id === c.id);
    if (k >= 0) crews[k] = c; else crews.push(c);
    M.crews = crews;
    redraw();
  }

  function finishFrame() {
    M.frames++;
    const now = Date.now() / 1000;
    for (const [path, s, ts] of pendingSeen) M.seen[path] = {t: now, state: s, server_ts: ts};
    pendingSeen = [];
    if (M.n && M.firstPaint === null) { M.firstPaint = performance.now(); M.ready = true; }
  }

  // ------------------------------------------------------------------ interaction
  function zoomAt(sx, sy, dz) {
    const [x, y] = toWorld(sx, sy);
    zoom = Math.max(1, Math.min((cfg && cfg.max_zoom) || 19, zoom + dz));
    const k = scale();
    cx = x - (sx - W / 2) / k; cy = y - (sy - H / 2) / k;
    redraw();
  }
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = canvas.getBoundingClientRect();
    zoomAt(e.clientX - r.left, e.clientY - r.top, e.deltaY < 0 ? 0.5 : -0.5);
  }, {passive: false});
  let drag = null;
  canvas.addEventListener("pointerdown", (e) => { drag = {x: e.clientX, y: e.clientY, cx, cy, moved: false}; canvas.setPointerCapture(e.pointerId); });
  canvas.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    const k = scale(); cx = drag.cx - dx / k; cy = drag.cy - dy / k; redraw();
  });
  canvas.addEventListener("pointerup", (e) => {
    const d = drag; drag = null;
    if (d && !d.moved) { const r = canvas.getBoundingClientRect(); click(e.clientX - r.left, e.clientY - r.top); }
  });
  document.getElementById("map-zoom-in").onclick = () => zoomAt(W / 2, H / 2, 1);
  document.getElementById("map-zoom-out").onclick = () => zoomAt(W / 2, H / 2, -1);
  document.getElementById("map-fit").onclick = () => { fit(); redraw(); };
  window.addEventListener("resize", resize);

  function nearest(sx, sy, maxd) {
    const k = scale(), hx = W / 2 - cx * k, hy = H / 2 - cy * k;
    let best = -1, bd = maxd * maxd;
    const consider = (i) => {
      if (!has[i]) return;
      const dx = wx[i] * k + hx - sx, dy = wy[i] * k + hy - sy, d = dx * dx + dy * dy;
      if (d < bd || (d === bd && rank[i] > rank[best])) { bd = d; best = i; }
    };
    for (const i of hot) consider(i);
    if (best < 0) for (let i = 0; i < M.n; i++) consider(i);
    return best;
  }

  function click(sx, sy) {
    if (M.clustered && M.clusters) {
      for (const [x, y, r] of M.clusters) {
        if ((x - sx) ** 2 + (y - sy) ** 2 <= r * r) { zoomAt(x, y, 2); return; }
      }
    }
    const i = nearest(sx, sy, 10);
    if (i < 0) { pop.hidden = true; return; }
    showPopup(i, sx, sy);
  }

  function showPopup(i, sx, sy) {
    const p = paths[i];
    pop.innerHTML = '<b>' + Console.esc(p) + '</b><br>' + Console.esc(STATE_LABELS[rank[i]]) +
      (rank[i] && prio[i] ? ' · priority ' + prio[i] : '') +
      '<br><a id="map-faceplate" href="/devices/' + p.split("/").map(encodeURIComponent).join("/") + '">faceplate</a>';
    pop.style.left = Math.min(W - 220, sx + 12) + "px"; pop.style.top = Math.max(0, sy - 10) + "px";
    pop.hidden = false;
  }

  gisBox.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = document.getElementById("gis-file").files[0];
    const out = document.getElementById("gis-report");
    if (!f) { out.textContent = "choose a file first"; return; }
    const fd = new FormData();
    fd.append("id_field", document.getElementById("gis-id").value || "id");
    const epsg = document.getElementById("gis-epsg").value.trim();
    if (epsg) fd.append("epsg", epsg);
    if (document.getElementById("gis-dry").checked) fd.append("dry_run", "1");
    fd.append("file", f, f.name);
    out.textContent = "importing " + f.name + " ...";
    const r = await fetch("/api/gis/import", {method: "POST", body: fd, credentials: "same-origin",
      headers: {"X-CSRF-Token": Console.csrf, "Accept": "application/json"}});
    const j = await r.json().catch(() => ({detail: "the server's answer is not JSON (" + r.status + ")"}));
    out.textContent = r.ok ? j.message : "refused (" + r.status + "): " + (j.detail || j.message || j.error);
    out.className = r.ok ? "" : "bad";
  });

  // for tests and benchmarks: where a device is drawn, what state it shows
  M.screenOf = (path) => { const i = index.get(path); if (i === undefined || !has[i]) return null; return toScreen(wx[i], wy[i]); };
  M.stateOf = (path) => { const i = index.get(path); return i === undefined ? null : rank[i]; };
  M.has = (path) => index.has(path);
  M.paths = () => paths.slice();
  M.focus = (path, z) => { const i = index.get(path); if (i === undefined) return false; cx = wx[i]; cy = wy[i]; zoom = z || 18; redraw(); return true; };
  M.crewScreen = (id) => { const c = crews.find((x) => x.id === id); return c && c.lat != null ? toScreen(...project(c.lat, c.lon)) : null; };
  M.colours = STATE_COLOURS; M.states = STATE_LABELS; M.clusterAbove = INDIVIDUAL;

  // ------------------------------------------------------------------ start
  async function start() {
    try {
      cfg = await Console.api("/api/map/config");
      Console.whoami().then(() => { gisBox.hidden = !Console.allowed("gis.import"); }).catch(() => {});
      const attr = document.getElementById("map-attr");
      attr.textContent = cfg.attribution || (cfg.tiles ? "" : "no base map configured (web.map.tiles)");
      const r = host.getBoundingClientRect();
      W = Math.max(100, r.width); H = Math.max(100, r.height);
      let streamOpen = false;
      const handlers = {
        "map.state": (ev) => { for (const [path, s, p] of ev.d) setState(path, s, p, ev.ts); redraw(); },
        "map.reload": async () => { await loadDevices(); await loadStates(); },
        hello: () => { if (streamOpen) { loadStates(); loadCrews(); } streamOpen = true; },
        crew: crewEvent,
      };
      await loadDevices();
      Console.stream(handlers);
      fit();
      resize();
      await loadStates();
      await loadCrews();
    } catch (e) {
      M.error = String(e && e.message || e);
      document.getElementById("map-info").textContent = "map unavailable: " + M.error;
    }
  }
  start();
})();
