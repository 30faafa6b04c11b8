// The field tablet: the agent's visits of the day in order (overdue ones first), each task's
// summary, a small map of the visit's tasks (mapcore.js: the console map's projection and tiles,
// the plain background without them) and checklist (steps ticked), and the actions "arrived",
// "done" (note + photo) and "cannot complete". With the agent's permission the tablet reports
// where it is (browser geolocation, at most every POS_EVERY ms unless it moved POS_MOVED m):
// the crew's last known position for dispatch and the console's map.
// Actions are queued in localStorage first, each with an idempotency key generated here, and
// sent in order; without network they wait and are replayed when it returns (the "online"
// event, and a retry timer). The server records a key once: a replay never duplicates a step.
"use strict";
(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const QKEY = "scada-tablet-queue:" + document.body.dataset.user;
  let data = null;
  let flushing = false;
  let mapCfg = null;
  const tiles = new Map();
  const POS_EVERY = 60000, POS_MOVED = 50;
  const T = window.scadaTablet = {maps: {}, position: null, sent: 0, refused: null};
  let posPending = null, posLast = null, posSending = false;

  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const queue = () => { try { return JSON.parse(localStorage.getItem(QKEY) || "[]"); } catch (e) { return []; } };
  const save = (q) => { localStorage.setItem(QKEY, JSON.stringify(q)); showQueue(); };
  function newKey() {
    if (self.crypto && crypto.randomUUID) return crypto.randomUUID();
    const b = new Uint8Array(16); crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }
  function showQueue() {
    const n = queue().length;
    document.getElementById("queued").textContent = n ? n + " to send" : "";
    document.getElementById("queued").dataset.count = String(n);
  }
  function showNet() {
    const el = document.getElementById("net");
    el.textContent = navigator.onLine ? "online" : "offline";
    el.classList.toggle("off", !navigator.onLine);
  }

  async function loadMapConfig() {
    try {
      const r = await fetch("/api/map/config", {credentials: "same-origin", headers: {Accept: "application/json"}});
      if (!r.ok) throw new Error(String(r.status));
      mapCfg = await r.json();
      localStorage.setItem(QKEY + ":map", JSON.stringify(mapCfg));
    } catch (e) {
      mapCfg = JSON.parse(localStorage.getItem(QKEY + ":map") || "null") || {tiles: null, max_zoom: 19};
    }
  }

  // the visit's tasks on its own small map: numbered dots in the tasks' order, the agent's
  // position when known; tiles if the site has them, else the plain background
  function drawVisitMap(canvas, v) {
    const MC = window.ScadaMapCore;
    const dpr = window.devicePixelRatio || 1;
    const W = canvas.clientWidth || 300, H = canvas.clientHeight || 160;
    canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
    const g = canvas.getContext("2d");
    const pts = v.tasks.map((t, k) => [t.location || v.location, k]).filter((p) => p[0]);
    const world = pts.map(([loc]) => MC.project(loc[0], loc[1]));
    const view = MC.fitView(world, W, H, 28, Math.min(18, (mapCfg && mapCfg.max_zoom) || 18));
    const info = T.maps[v.id] = {points: [], tiles: 0, background: true};
    if (!view) return;
    const frame = () => {
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.fillStyle = MC.BACKGROUND; g.fillRect(0, 0, W, H);
      info.tiles = MC.drawTiles(g, mapCfg, view, tiles, () => { if (canvas.isConnected) frame(); });
      info.background = info.tiles === 0;
      info.points = [];
      const used = [];
      g.font = "bold 12px system-ui, sans-serif"; g.textAlign = "center"; g.textBaseline = "middle";
      world.forEach(([wx, wy], i) => {
        let [x, y] = MC.toScreen(view, wx, wy);
        const same = used.filter(([ux, uy]) => Math.hypot(ux - x, uy - y) < 14).length;
        if (same) { const a = same * 2.1; x += 16 * Math.cos(a); y += 16 * Math.sin(a); }  // tasks on one spot
        used.push([x, y]);
        g.beginPath(); g.arc(x, y, 9, 0, 2 * Math.PI); g.fillStyle = "#e63946"; g.fill();
        g.lineWidth = 1.5; g.strokeStyle = "#fff"; g.stroke();
        g.fillStyle = "#fff"; g.fillText(String(pts[i][1] + 1), x, y);
        info.points.push([Math.round(x), Math.round(y), v.tasks[pts[i][1]].id]);
      });
      if (T.position) {
        const [x, y] = MC.toScreen(view, ...MC.project(T.position.lat, T.position.lon));
        if (x >= 0 && y >= 0 && x <= W && y <= H) {
          g.beginPath(); g.arc(x, y, 6, 0, 2 * Math.PI); g.fillStyle = "#1d7bd8"; g.fill();
          g.strokeStyle = "#fff"; g.stroke(); info.me = [Math.round(x), Math.round(y)];
        }
      }
    };
    frame();
  }

  // ------------------------------------------------------------------ position
  function metres(a, b) {
    const k = Math.PI / 180, x = (b.lon - a.lon) * k * Math.cos((a.lat + b.lat) / 2 * k), y = (b.lat - a.lat) * k;
    return 6371000 * Math.hypot(x, y);
  }
  function onPosition(p) {
    const here = {lat: p.coords.latitude, lon: p.coords.longitude, accuracy: p.coords.accuracy, at: Date.now()};
    T.position = here;
    if (posLast && Date.now() - posLast.at < POS_EVERY && metres(posLast, here) < POS_MOVED) return;  // throttled
    posPending = here;
    sendPosition();
  }
  async function sendPosition() {
    if (posSending || !posPending || !navigator.onLine) return;
    posSending = true;
    const p = posPending;
    try {
      const r = await fetch("/api/tablet/position", {method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
        body: JSON.stringify({lat: p.lat, lon: p.lon, accuracy: p.accuracy, key: newKey()})});
      if (r.ok) { T.sent++; posLast = p; if (posPending === p) posPending = null; }
      else if (r.status < 500 && r.status !== 429 && r.status !== 401) {  // refused: say so, do not insist
        T.refused = (await r.json().catch(() => ({}))).detail || String(r.status);
        if (posPending === p) posPending = null;
      }
    } catch (e) { /* offline: the latest position waits */ }
    posSending = false;
  }
  function watchPosition() {
    if (!navigator.geolocation) return;
    navigator.geolocation.watchPosition(onPosition, (err) => { T.positionError = err.message || String(err.code); },
      {enableHighAccuracy: true, maximumAge: 30000, timeout: 60000});
  }

  async function load() {
    try {
      const r = await fetch("/api/tablet", {credentials: "same-origin", headers: {Accept: "application/json"}});
      if (r.status === 401) { location.assign("/login?next=/tablet"); return; }
      data = await r.json();
      localStorage.setItem(QKEY + ":data", JSON.stringify(data));
    } catch (e) {
      data = JSON.parse(localStorage.getItem(QKEY + ":data") || "null");
    }
    render();
  }

  function pendingFor(id) { return queue().filter((a) => a.order === id).map((a) => a.what); }

  function render() {
    const main = document.getElementById("visits");
    // what the agent is typing or has picked (a note, a photo) survives a refresh: the task's
    // own textarea and file input are moved into the new markup
    const kept = new Map();
    for (const t of main.querySelectorAll(".task")) kept.set(t.dataset.order, [t.querySelector(".note"), t.querySelector(".photo")]);
    document.getElementById("day").textContent = data && data.day ? data.day : "";
    if (!data || !data.visits.length) { main.innerHTML = '<p class="muted" id="none">No visit today.</p>'; return; }
    main.innerHTML = data.visits.map((v, i) => {
      const late = v.overdue ? `<span class="overdue">overdue (planned ${esc(v.planned)})</span>` : "";
      const map = (v.location || v.tasks.some((t) => t.location)) ? `<canvas class="visit-map" data-visit="${esc(v.id)}"></canvas>` : "";
      return `<section class="visit${v.overdue ? " late" : ""}" data-visit="${esc(v.id)}" data-overdue="${v.overdue ? 1 : 0}">` +
        `<h2>${i + 1}. ${esc(v.site)} ${late}</h2>${map}` +
        v.tasks.map((t, k) => {
          const pend = pendingFor(t.id);
          const ticked = queue().filter((a) => a.order === t.id && a.what === "check").map((a) => a.step);
          const checklist = (t.checklist || []).map((s) => {
            const on = s.done || ticked.includes(s.id);
            return `<li><label><input type="checkbox" class="step" data-step="${esc(s.id)}"${on ? " checked disabled" : ""}> ${esc(s.text)}</label></li>`;
          }).join("");
          return `<div class="task" data-order="${esc(t.id)}" data-rank="${k}">
            <div><span class="trade">${esc(t.trade || "")}</span> · P${t.priority} · <span class="state">${esc(t.state)}</span>
              ${pend.length ? `<span class="pending">(${esc(pend.join(", "))} waiting to be sent)</span>` : ""}</div>
            <div class="title">${esc(t.title)}</div><div class="muted">${esc(t.devices.join(", "))}</div>
            ${checklist ? `<ul class="checklist">${checklist}</ul>` : ""}
            <textarea class="note" rows="2" placeholder="note"></textarea>
            <input class="photo" type="file" accept="image/*" capture="environment">
            <div><button class="arrived">Arrived</button><button class="done">Done</button><button class="cannot">Cannot complete</button></div>
          </div>`;
        }).join("") + "</section>";
    }).join("");
    for (const c of main.querySelectorAll("canvas.visit-map")) {
      const v = data.visits.find((x) => x.id === c.dataset.visit);
      if (v && window.ScadaMapCore) drawVisitMap(c, v);
    }
    for (const t of main.querySelectorAll(".task")) {
      const k = kept.get(t.dataset.order);
      if (!k) continue;
      if (k[0]) t.querySelector(".note").replaceWith(k[0]);
      if (k[1]) t.querySelector(".photo").replaceWith(k[1]);
    }
  }

  function readPhoto(input) {
    const f = input.files && input.files[0];
    if (!f) return Promise.resolve(null);
    return new Promise((ok, ko) => { const r = new FileReader(); r.onload = () => ok(r.result); r.onerror = ko; r.readAsDataURL(f); });
  }

  async function act(taskEl, what) {
    const note = taskEl.querySelector(".note").value;
    const photo = what === "done" ? await readPhoto(taskEl.querySelector(".photo")) : null;
    const q = queue();
    q.push({key: newKey(), order: taskEl.dataset.order, what, note, photo, at: Date.now()});
    save(q);
    taskEl.querySelector(".note").value = "";  // sent (or queued): the draft is done
    taskEl.querySelector(".photo").value = "";
    render();
    flush();
  }

  async function flush() {
    if (flushing) return;
    flushing = true;
    try {
      for (;;) {
        const q = queue();
        if (!q.length) break;
        const a = q[0];
        let r;
        try {
          r = await fetch("/api/tablet/action", {method: "POST", credentials: "same-origin",
            headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
            body: JSON.stringify({order: a.order, what: a.what, note: a.note, photo: a.photo, step: a.step, key: a.key})});
        } catch (e) { break; }  // no network: keep it, retry later
        if (r.status >= 500 || r.status === 401 || r.status === 429) break;  // try again later
        const j = await r.json().catch(() => ({}));
        const rest = queue().filter((x) => x.key !== a.key);
        save(rest);
        if (!r.ok) alertMsg(a, j);
      }
    } finally {
      flushing = false;
    }
    await load();
  }

  function alertMsg(a, j) {
    const box = document.createElement("p");
    box.className = "refused";
    box.textContent = `${a.order} ${a.what}: refused (${j.detail || j.error || "?"})`;
    document.getElementById("visits").prepend(box);
  }

  document.addEventListener("change", (e) => {
    const box = e.target.closest("input.step");
    const t = e.target.closest(".task");
    if (!box || !t || !box.checked) return;
    const q = queue();
    q.push({key: newKey(), order: t.dataset.order, what: "check", step: box.dataset.step, at: Date.now()});
    save(q);
    render();
    flush();
  });
  document.addEventListener("click", (e) => {
    const b = e.target.closest("button");
    const t = e.target.closest(".task");
    if (!b || !t) return;
    if (b.classList.contains("arrived")) act(t, "arrived");
    else if (b.classList.contains("done")) act(t, "done");
    else if (b.classList.contains("cannot")) act(t, "cannot_complete");
  });
  window.addEventListener("online", () => { showNet(); flush(); sendPosition(); });
  window.addEventListener("offline", showNet);
  setInterval(() => { if (queue().length) flush(); sendPosition(); }, 3000);
  if ("serviceWorker" in navigator) navigator.serviceWorker.register("/tablet-sw.js", {scope: "/tablet"}).catch(() => {});
  showNet(); showQueue();
  loadMapConfig().then(load).then(flush);
  watchPosition();
})();
