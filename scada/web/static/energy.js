// Energy: the savings KPI (option B, luminaire counters) against the 65 % target by month and
// area, with the measured share and the DATA INSUFFICIENT rule (docs/energy-kpi.md); a bar per
// month on <canvas> against the target line.
"use strict";
(() => {
  const C = Console;
  const el = document.getElementById("energy"), head = document.getElementById("e-headline");
  const canvas = document.getElementById("e-chart");
  const yearIn = document.getElementById("e-year"), areaIn = document.getElementById("e-area");
  const cls = (v) => v === "met" ? "good" : v === "NOT met" ? "bad" : "muted";

  function chart(months, target) {
    const ctx = canvas.getContext("2d");
    const W = canvas.width = canvas.clientWidth || 640, H = canvas.height = canvas.clientHeight || 220;
    ctx.clearRect(0, 0, W, H);
    canvas.dataset.bars = String(months.length);
    if (!months.length) return;
    const pad = 36, top = 10, bottom = 24, y = (p) => top + (H - top - bottom) * (1 - Math.max(0, Math.min(100, p)) / 100);
    ctx.strokeStyle = "#cfd8dc"; ctx.fillStyle = "#5f6b76"; ctx.font = "11px sans-serif";
    for (const p of [0, 25, 50, 75, 100]) {
      ctx.beginPath(); ctx.moveTo(pad, y(p)); ctx.lineTo(W - 5, y(p)); ctx.stroke(); ctx.fillText(p + " %", 2, y(p) + 4);
    }
    const bw = (W - pad - 5) / months.length;
    months.forEach((m, k) => {
      const x = pad + k * bw + bw * 0.15;
      if (m.savings_pct !== null) {
        ctx.fillStyle = m.verdict === "met" ? "#2e7d32" : m.verdict === "NOT met" ? "#c62828" : "#9e9e9e";
        ctx.fillRect(x, y(m.savings_pct), bw * 0.7, y(0) - y(m.savings_pct));
      }
      ctx.fillStyle = "#5f6b76"; ctx.fillText(m.month.slice(5), x, H - 8);
    });
    ctx.strokeStyle = "#1565c0"; ctx.lineWidth = 2; ctx.setLineDash([6, 4]);
    ctx.beginPath(); ctx.moveTo(pad, y(target)); ctx.lineTo(W - 5, y(target)); ctx.stroke();
    ctx.setLineDash([]); ctx.lineWidth = 1; ctx.fillStyle = "#1565c0"; ctx.fillText(`target ${target} %`, W - 80, y(target) - 4);
  }

  const given = new URLSearchParams(location.search);  // /energy?year=2025&area=centre
  if (given.get("year")) yearIn.value = given.get("year");
  let seq = 0;  // only the latest answer is shown

  async function load() {
    const mine = ++seq;
    const q = new URLSearchParams();
    if (yearIn.value) q.set("year", yearIn.value);
    const area = areaIn.options.length === 1 ? (given.get("area") || "") : areaIn.value;  // first load: the URL's
    if (area) q.set("area", area);
    const j = await C.api("/api/energy?" + q);
    if (mine !== seq) return;
    if (!yearIn.value) yearIn.value = j.year;
    if (areaIn.options.length === 1) for (const a of j.areas_allowed || []) areaIn.add(new Option(a, a));
    if (areaIn.options.length > 1 && !areaIn.dataset.init) { areaIn.dataset.init = "1"; areaIn.value = area; }
    if (!j.available) {
      head.textContent = ""; chart([], j.target_pct);
      el.innerHTML = `<p class="muted">Not available: ${C.esc(j.detail)}</p><p>Target: ${j.target_pct} %</p>`;
      return;
    }
    head.innerHTML = `<strong class="${cls(j.verdict)}">${C.esc(j.headline)}</strong>`;
    chart(j.months, j.target_pct);
    const row = (r, area) => `<tr><td>${C.esc(r.month)}</td><td>${C.esc(area)}</td>
      <td class="${cls(r.verdict)}">${C.value(r.savings_pct, "%")}</td><td>${j.target_pct} %</td>
      <td>${C.value(r.measured_pct, "%")}</td><td class="${cls(r.verdict)}">${C.esc(r.verdict)}</td></tr>`;
    const rows = [];
    for (const m of j.months) {
      rows.push(row(m, j.area === "all" ? "all areas" : j.area));
      if (j.area === "all" && j.areas.length > 1) for (const c of j.cells.filter((c) => c.month === m.month)) rows.push(row(c, c.area));
    }
    el.innerHTML = `<table class="grid" id="energy-table"><thead><tr><th>Month</th><th>Area</th><th>Savings</th><th>Target</th>
      <th>Measured</th><th>Verdict</th></tr></thead><tbody>${rows.join("")}</tbody></table>`;
  }

  document.getElementById("e-go").addEventListener("click", load);
  load();
})();
