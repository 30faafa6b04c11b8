// Procedures: the checklist of each active alarm, with steps done (user, time).
"use strict";
(async () => {
  const C = Console;
  await C.whoami();
  async function load() {
    const j = await C.api("/api/procedures");
    document.getElementById("p-count").textContent = j.total + " alarms";
    document.getElementById("procedures").innerHTML = j.procedures.map((p) =>
      `<section class="procedure" data-alarm="${C.esc(p.alarm_id)}"><h3>${C.esc(p.alarm_id)} · P${p.priority} · ${C.esc(p.category)}${p.serious ? " · <strong>serious</strong>" : ""}</h3><ul>` +
      p.steps.map((s) => `<li>${s.done ? "☑" : `<button data-step="${C.esc(s.id)}" data-action="procedure.step">done</button>`} ${C.esc(s.text)}` +
        `${s.user ? " (" + C.esc(s.user) + ", " + C.time(s.ts) + ")" : ""}</li>`).join("") + "</ul></section>").join("");
    C.applyRoles(document.getElementById("procedures"));
  }
  document.getElementById("procedures").addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-step]");
    if (!b) return;
    await C.post("/api/procedures/step", {alarm_id: b.closest(".procedure").dataset.alarm, step: b.dataset.step}).catch(() => {});
    load();
  });
  C.stream({procedure: load, alarm: load});
  load();
})();
