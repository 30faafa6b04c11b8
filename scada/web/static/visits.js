// Visits of the day: open orders grouped by site, tasks in trade order, proposed crew.
"use strict";
(async () => {
  const C = Console;
  await C.whoami();
  async function load() {
    const j = await C.api("/api/visits");
    document.getElementById("v-count").textContent = j.total + " visits";
    document.getElementById("visits").innerHTML = j.visits.map((v, i) =>
      `<section class="visit" data-visit="${C.esc(v.id)}"><h3>${i + 1}. ${C.esc(v.site)} · ${C.esc(v.area)} · P${v.priority}` +
      ` · proposed crew: <span class="crew">${C.esc(v.proposed_crew || "none available")}</span>${v.distance_m != null ? " (" + Math.round(v.distance_m) + " m)" : ""}</h3><ol>` +
      v.tasks.map((t) => `<li data-order="${C.esc(t.id)}"><a href="/workorders/${C.esc(t.id)}">${C.esc(t.id)}</a> ${C.esc(t.trade || "")} · ${C.esc(t.state)} · ${C.esc(t.title)}</li>`).join("") +
      "</ol></section>").join("");
  }
  C.stream({workorder: load});
  load();
})();
