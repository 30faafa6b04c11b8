// Schedules: tonight's dimming steps per area and the active overrides (create/cancel with role).
"use strict";
(async () => {
  const C = Console;
  await C.whoami();
  async function load(bg) {
    const j = await C.api("/api/schedules", bg === true);
    if (!j.available) { document.querySelector("#steps tbody").innerHTML = `<tr><td colspan="3">${C.esc(j.detail)}</td></tr>`; return; }
    const hm = (t) => new Date(t * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
    document.querySelector("#steps tbody").innerHTML = j.areas.map((a) => `<tr><td>${C.esc(a.area)}</td><td>${a.luminaires}</td>
      <td>${a.steps.map((s) => `${hm(s.at)} → ${s.level === null ? "off" : s.level + " %"}`).join(" · ")}</td></tr>`).join("");
    document.querySelector("#overrides tbody").innerHTML = j.overrides.map((o) => `<tr data-override="${C.esc(o.id)}"><td>${C.esc(o.id)}</td>
      <td>${C.esc(o.scope)}</td><td>${o.level} %</td><td>${C.time(o.expires)}</td><td>${C.esc(o.user)}</td><td>${C.esc(o.reason)}</td>
      <td><button data-cancel="${C.esc(o.id)}" data-action="schedule.override">Cancel</button></td></tr>`).join("")
      || '<tr><td colspan="7" class="muted">no active override</td></tr>';
    const sel = document.getElementById("ov-area");
    if (!sel.options.length) for (const a of j.site_areas) sel.insertAdjacentHTML("beforeend", `<option>${C.esc(a)}</option>`);
    C.applyRoles();
  }
  document.getElementById("ov-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = {areas: [document.getElementById("ov-area").value], level: Number(document.getElementById("ov-level").value),
                  minutes: Number(document.getElementById("ov-minutes").value), reason: document.getElementById("ov-reason").value};
    const c = await C.confirmBox(`Override ${body.areas[0]} at ${body.level} % for ${body.minutes} min?`);
    if (!c.ok) return;
    try { await C.post("/api/overrides", body); } catch (e) { /* toast */ }
    load();
  });
  document.querySelector("#overrides tbody").addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-cancel]");
    if (!b || b.disabled) return;
    const c = await C.confirmBox("Cancel override " + b.dataset.cancel + "?");
    if (!c.ok) return;
    try { await C.post("/api/overrides/" + encodeURIComponent(b.dataset.cancel) + "/cancel", {}); } catch (e) { /* toast */ }
    load();
  });
  load();
  setInterval(() => load(true), 30000);
})();
