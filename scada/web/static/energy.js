// Energy: the savings KPI against the 65 % target by month and area, with completeness.
"use strict";
(async () => {
  const C = Console;
  const j = await C.api("/api/energy");
  const el = document.getElementById("energy");
  if (!j.available) { el.innerHTML = `<p class="muted">Not available: ${C.esc(j.detail)}</p><p>Target: ${j.target_pct} %</p>`; return; }
  el.innerHTML = `<table class="grid"><thead><tr><th>Month</th><th>Area</th><th>Savings</th><th>Target</th><th>Completeness</th></tr></thead><tbody>` +
    (j.rows || []).map((r) => `<tr><td>${C.esc(r.month)}</td><td>${C.esc(r.area)}</td><td class="${r.savings_pct >= j.target_pct ? "good" : "bad"}">${C.value(r.savings_pct, "%")}</td>
      <td>${j.target_pct} %</td><td>${C.value(r.completeness_pct, "%")}</td></tr>`).join("") + "</tbody></table>";
})();
