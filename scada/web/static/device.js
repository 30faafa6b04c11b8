// Device faceplate: live tags with quality and source time, writes with confirmation,
// out of service, the device's alarms and their history, and a trend chart on <canvas>
// (raw values, or min/max bands for long ranges; drag to zoom, "Reset zoom" to go back).
"use strict";
(async () => {
  const C = Console;
  const path = document.body.dataset.device;
  const me = await C.whoami();
  let dev = null;
  const tagBody = document.querySelector("#tags tbody");

  function tagRow(t) {
    const write = t.writable ? `<button data-write="${C.esc(t.tag)}" data-action="tag.write">Write…</button>` : "";
    return `<tr data-tag="${C.esc(t.tag)}"><td title="${C.esc(t.description)}">${C.esc(t.name)}</td>
      <td class="val">${C.esc(C.value(t.value, t.unit))}</td>
      <td class="q ${C.qualityClass(t.status)}" data-status="${t.status}">${C.esc(t.status_name)}</td>
      <td class="ts">${C.time(t.source_ts)}</td><td>${write}</td></tr>`;
  }

  async function load(bg) {
    dev = await C.api("/api/devices/" + path, bg === true);
    document.getElementById("d-title").textContent = dev.path;
    document.getElementById("d-info").textContent = [dev.kind, dev.profile, dev.description,
      dev.out_of_service ? "OUT OF SERVICE" : ""].filter(Boolean).join(" · ");
    tagBody.innerHTML = dev.tags.map(tagRow).join("");
    const sel = document.getElementById("trend-tag");
    if (!sel.options.length) {
      for (const t of dev.tags) if (t.type !== "string") sel.insertAdjacentHTML("beforeend", `<option value="${C.esc(t.tag)}">${C.esc(t.name)}</option>`);
      const pref = dev.tags.find((t) => /power|level|voltage/.test(t.name) && t.type === "float");
      if (pref) sel.value = pref.tag;
    }
    const ob = document.getElementById("oos-btn");
    ob.textContent = dev.out_of_service ? "Return to service" : "Out of service";
    document.querySelector("#dev-alarms tbody").innerHTML = dev.alarms.filter((a) => a.state !== "Normal" || !a.acked).map((a) =>
      `<tr class="st-${C.esc(a.isa_state)}"><td>${C.esc(a.name)}</td><td>${C.esc(a.isa_state)}</td><td>${a.priority}</td><td>${C.esc(a.message)}</td></tr>`).join("")
      || `<tr><td colspan="4" class="muted">no active alarm</td></tr>`;
    C.applyRoles();
  }

  async function workorders(bg) {
    // the device's work orders (interventions service; the panel stays hidden without it)
    let j;
    try { j = await C.api("/api/wo?" + new URLSearchParams({device: path, limit: 50}), bg === true); } catch (e) { return; }
    if (!j || j.available === false || !j.orders) return;
    document.getElementById("dev-wo-panel").hidden = false;
    document.querySelector("#dev-wo tbody").innerHTML = j.orders.map((w) =>
      `<tr data-wo="${C.esc(w.id)}"><td><a href="/workorders/${encodeURIComponent(w.id)}">${C.esc(w.id)}</a></td><td>${C.esc(w.state)}</td>
      <td>${w.priority}</td><td>${C.esc(w.trade || "")}</td><td>${C.esc(w.title || "")}</td><td>${C.esc((w.devices || []).join(", "))}</td></tr>`).join("")
      || `<tr><td colspan="6" class="muted">no work order</td></tr>`;
  }

  async function history(bg) {
    const j = await C.api("/api/alarms/history?" + new URLSearchParams({device: path, limit: 50, start: me.server_time - 30 * 86400}), bg === true);
    document.querySelector("#dev-history tbody").innerHTML = j.entries.map((r) => `<tr><td>${C.time(r.ts)}</td><td>${C.esc(r.event)}</td>
      <td>${C.esc(r.name || r.alarm_id)}</td><td>${C.esc(r.user || "")}</td><td>${C.esc(r.comment || "")}</td></tr>`).join("");
  }

  tagBody.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-write]");
    if (!b || b.disabled) return;
    const t = dev.tags.find((x) => x.tag === b.dataset.write);
    const c = await C.confirmBox(`Write to ${t.tag} (now ${C.value(t.value, t.unit)})` + (t.eu_range ? ` range ${t.eu_range[0]}..${t.eu_range[1]}` : ""), "New value");
    if (!c.ok) return;
    let v = c.extra.trim();
    if (t.type === "bool") v = ["1", "true", "on"].includes(v.toLowerCase());
    else if (t.type !== "string") v = Number(v);
    try { await C.post("/api/write", {tag: t.tag, value: v}); } catch (e) { /* toast */ }
    load();
  });

  document.getElementById("oos-btn").addEventListener("click", async () => {
    const oos = !dev.out_of_service;
    const c = await C.confirmBox((oos ? "Put " : "Return ") + path + (oos ? " out of service (works)?" : " to service?"), "Comment");
    if (!c.ok) return;
    try { await C.post("/api/devices/out-of-service", {device: path, oos: oos, comment: c.extra}); } catch (e) { /* toast */ }
    load();
  });

  // ---------------------------------------------------------------- trend
  const canvas = document.getElementById("trend");
  const tr = {start: null, end: null, data: null, drag: null};
  async function trend() {
    const tag = document.getElementById("trend-tag").value;
    if (!tag) return;
    const now = (await C.api("/api/me")).server_time;
    const span = Number(document.getElementById("trend-range").value);
    const end = tr.end ?? now, start = tr.start ?? end - span;
    const w = Math.max(100, Math.min(2000, canvas.clientWidth || 640));
    tr.data = await C.api("/api/trend?" + new URLSearchParams({tag, start, end, points: w}));
    draw();
  }
  function draw() {
    const d = tr.data, ctx = canvas.getContext("2d");
    const W = canvas.width = canvas.clientWidth || 640, H = canvas.height = canvas.clientHeight || 260;
    ctx.clearRect(0, 0, W, H);
    const info = document.getElementById("trend-info");
    if (!d || !d.available) { info.textContent = d ? d.detail : ""; canvas.dataset.points = "0"; return; }
    const lo = d.mode === "raw" ? d.v : d.min, hi = d.mode === "raw" ? d.v : d.max;
    const vals = lo.concat(hi).filter((x) => x !== null);
    canvas.dataset.points = String(d.t.length);
    canvas.dataset.mode = d.mode;
    info.textContent = `${d.t.length} ${d.mode === "raw" ? "values" : "min/max buckets of " + Math.round(d.interval) + " s"} · ${C.time(d.start)} – ${C.time(d.end)}`;
    if (!vals.length) { ctx.fillText("no history in this range", 10, 20); return; }
    let vmin = Math.min(...vals), vmax = Math.max(...vals);
    if (vmin === vmax) { vmin -= 1; vmax += 1; }
    const pad = 30, x = (t) => pad + (t - d.start) / (d.end - d.start) * (W - pad - 5),
          y = (v) => H - 20 - (v - vmin) / (vmax - vmin) * (H - 30);
    ctx.strokeStyle = "#cfd8dc"; ctx.fillStyle = "#5f6b76"; ctx.font = "11px sans-serif";
    ctx.strokeRect(pad, 10, W - pad - 5, H - 30);
    ctx.fillText(vmax.toPrecision(4), 2, 14); ctx.fillText(vmin.toPrecision(4), 2, H - 20);
    ctx.fillText(new Date(d.start * 1000).toLocaleString(), pad, H - 5);
    const endLabel = new Date(d.end * 1000).toLocaleString();
    ctx.fillText(endLabel, W - 5 - ctx.measureText(endLabel).width, H - 5);
    if (d.mode === "minmax") {
      ctx.strokeStyle = "#90caf9";
      for (let i = 0; i < d.t.length; i++) if (lo[i] !== null) { ctx.beginPath(); ctx.moveTo(x(d.t[i]), y(lo[i])); ctx.lineTo(x(d.t[i]), y(hi[i])); ctx.stroke(); }
    }
    ctx.strokeStyle = "#1565c0"; ctx.lineWidth = 1.5; ctx.beginPath();
    let pen = false;
    for (let i = 0; i < d.t.length; i++) {
      const v = d.mode === "raw" ? lo[i] : (lo[i] === null ? null : (lo[i] + hi[i]) / 2);
      if (v === null || (d.q[i] >>> 31)) { pen = false; continue; }
      if (d.mode === "raw" && pen) ctx.lineTo(x(d.t[i]), y(lo[i - 1] ?? v));  // step: value holds until the next
      pen ? ctx.lineTo(x(d.t[i]), y(v)) : ctx.moveTo(x(d.t[i]), y(v)); pen = true;
    }
    ctx.stroke();
    if (tr.drag && tr.drag.x1 !== undefined) { ctx.fillStyle = "rgba(21,101,192,.15)"; ctx.fillRect(Math.min(tr.drag.x0, tr.drag.x1), 10, Math.abs(tr.drag.x1 - tr.drag.x0), H - 30); }
    canvas._toTime = (px) => d.start + (px - pad) / (W - pad - 5) * (d.end - d.start);
  }
  canvas.addEventListener("mousedown", (e) => { tr.drag = {x0: e.offsetX}; });
  canvas.addEventListener("mousemove", (e) => { if (tr.drag) { tr.drag.x1 = e.offsetX; draw(); } });
  canvas.addEventListener("mouseup", (e) => {
    const dr = tr.drag; tr.drag = null;
    if (!dr || !canvas._toTime || Math.abs(e.offsetX - dr.x0) < 5) { draw(); return; }
    const a = canvas._toTime(Math.min(dr.x0, e.offsetX)), b = canvas._toTime(Math.max(dr.x0, e.offsetX));
    tr.start = a; tr.end = b; trend();
  });
  document.getElementById("trend-reset").addEventListener("click", () => { tr.start = tr.end = null; trend(); });
  document.getElementById("trend-tag").addEventListener("change", () => { tr.start = tr.end = null; trend(); });
  document.getElementById("trend-range").addEventListener("change", () => { tr.start = tr.end = null; trend(); });

  await load();
  history();
  workorders();
  trend();
  C.stream({
    tags: (ev) => {
      for (const t of ev.tags) {
        const tr_ = tagBody.querySelector(`tr[data-tag="${CSS.escape(t.tag)}"]`);
        const known = dev.tags.find((x) => x.tag === t.tag);
        if (!tr_ || !known) continue;
        Object.assign(known, {value: t.value, status: t.status, status_name: t.status_name, source_ts: t.source_ts});
        tr_.outerHTML = tagRow(known);
      }
      C.applyRoles(tagBody);
    },
    alarm: (ev) => { if (ev.device === path) { load(true); history(true); workorders(true); } },
  }, path);
})();
