// Visits: open orders grouped by site, tasks in trade order, the crew proposed for the chosen
// day (today: on shift now and not busy; a later day: any crew with the trade) and whether
// dispatch used its tablet's position or its base position; "assign" accepts the
// proposal in one click: each task is assigned to that crew for the chosen day through the
// operator API (POST /api/wo/{id}/assign: role matrix, audit per order).
"use strict";
(async () => {
  const C = Console;
  await C.whoami();
  const day = document.getElementById("v-day");
  let visits = [];
  async function load() {
    const j = await C.api("/api/visits" + (day.value ? "?day=" + encodeURIComponent(day.value) : ""));
    visits = j.visits;
    if (!day.value && j.today) day.value = j.today;
    day.min = j.today || "";
    document.getElementById("v-count").textContent = j.total + " visits";
    document.getElementById("visits").innerHTML = j.visits.map((v, i) => {
      const crew = v.proposed_crew;
      const assigned = crew && v.tasks.every((t) => t.crew === crew);
      return `<section class="visit" data-visit="${C.esc(v.id)}"><h3>${i + 1}. ${C.esc(v.site)} · ${C.esc(v.area)} · P${v.priority}` +
        ` · proposed crew: <span class="crew">${C.esc(crew || "none available")}</span>${v.distance_m != null ? " (" + Math.round(v.distance_m) + " m)" : ""}` +
        (v.proposed_position ? ` <span class="muted where" title="${C.esc(v.proposed_note || "")}">${v.proposed_position === "reported" ? "tablet position" : "base position"}</span>` : "") +
        (crew ? ` <button class="assign" data-crew="${C.esc(crew)}" data-action="wo.assign"${assigned ? ' data-off="1"' : ""}>${assigned ? "assigned" : "assign"}</button>` : "") +
        `</h3><ol>` +
        v.tasks.map((t) => `<li data-order="${C.esc(t.id)}"><a href="/workorders/${C.esc(t.id)}">${C.esc(t.id)}</a> ${C.esc(t.trade || "")} · ${C.esc(t.state)}` +
          ` · <span class="t-crew">${C.esc(t.crew || "unassigned")}</span>${t.planned ? " " + C.esc(t.planned) : ""} · ${C.esc(t.title)}</li>`).join("") +
        "</ol></section>";
    }).join("");
    C.applyRoles(document.getElementById("visits"));
  }
  document.getElementById("visits").addEventListener("click", async (e) => {
    const b = e.target.closest("button.assign");
    if (!b || b.disabled) return;
    const v = visits.find((x) => x.id === b.closest(".visit").dataset.visit);
    if (!v) return;
    b.disabled = true;
    for (const t of v.tasks) {
      await C.post(`/api/wo/${encodeURIComponent(t.id)}/assign`, {crew: b.dataset.crew, planned: day.value || null}).catch(() => {});
    }
    load();
  });
  day.addEventListener("change", () => load().catch(() => {}));  // proposals for that day
  C.stream({workorder: load, crew: load});
  load();
})();
