// One work order: fields, lifecycle buttons (the transitions the table allows), checklist,
// notes, photos and its journal; live updates re-read it.
"use strict";
(async () => {
  const C = Console;
  await C.whoami();
  const id = document.body.dataset.order;
  const NEXT = {draft: ["approved", "cancelled"], approved: ["scheduled", "cancelled"], scheduled: ["in_progress", "on_hold", "cancelled"],
    in_progress: ["on_hold", "completed"], on_hold: ["scheduled", "in_progress", "cancelled"], completed: ["closed", "in_progress"], closed: [], cancelled: []};
  const set = (k, v) => { document.getElementById(k).textContent = v; };
  const plan = document.getElementById("wo-plan");
  plan.addEventListener("submit", async (e) => {
    e.preventDefault();
    await C.post(`/api/wo/${encodeURIComponent(id)}/assign`, {crew: document.getElementById("wo-plan-crew").value,
      planned: document.getElementById("wo-plan-day").value}).catch(() => {});
    load();
  });
  async function load() {
    const o = await C.api("/api/wo/" + encodeURIComponent(id));
    set("wo-title", o.id + " · " + o.title); set("wo-state", o.state); set("wo-priority", o.priority);
    set("wo-trade", o.trade || "—"); set("wo-crew", o.crew || "—"); set("wo-area", o.area);
    set("wo-planned", o.planned || "—");
    if (!plan.dataset.init) {  // the dispatch form: the order's crew and day, else the proposal and today
      plan.dataset.init = "1";
      const cr = await C.api("/api/crews");
      const sel = document.getElementById("wo-plan-crew");
      sel.innerHTML = cr.crews.filter((c) => !o.trade || c.trades.includes(o.trade)).map((c) =>
        `<option value="${C.esc(c.id)}">${C.esc(c.name)}${c.on_shift ? "" : " (off shift)"}</option>`).join("");
      if (o.crew) sel.value = o.crew;
      document.getElementById("wo-plan-day").value = o.planned || o.today;
    }
    C.applyRoles(plan);
    set("wo-devices", o.devices.join(", ")); set("wo-alarms", o.alarms.join(", ") || "—"); set("wo-repeats", o.repeats);
    set("wo-due-respond", C.time(o.due_respond)); set("wo-due-repair", C.time(o.due_repair));
    const bl = document.getElementById("wo-blocked");
    bl.hidden = !o.close_blocked_by.length;
    bl.textContent = "The fault is still active: " + o.close_blocked_by.join(", ") + " (closing needs an override with a comment)";
    document.getElementById("wo-actions").innerHTML = (NEXT[o.state] || []).map((s) =>
      `<button data-to="${s}" data-action="wo.transition">${s.replace("_", " ")}</button>`).join("");
    C.applyRoles(document.getElementById("wo-actions"));
    document.getElementById("wo-checklist").innerHTML = o.checklist.map((s) => `<li>${s.done ? "☑" : "☐"} ${C.esc(s.text)} ${s.user ? "(" + C.esc(s.user) + ", " + C.time(s.ts) + ")" : ""}</li>`).join("");
    document.getElementById("wo-notes").innerHTML = o.notes.map((n) => `<li>${C.time(n.ts)} ${C.esc(n.user)}: ${C.esc(n.text)}</li>`).join("");
    document.getElementById("wo-photos").innerHTML = o.photos.map((p) => `<img alt="photo" width="160" src="/api/wo/photos/${C.esc(p.file)}">`).join("");
    document.querySelector("#wo-journal tbody").innerHTML = o.journal.map((r) =>
      `<tr><td>${r.seq}</td><td>${C.time(r.ts)}</td><td>${C.esc(r.op)}${r.to ? " → " + C.esc(r.to) : ""}${r.field ? " (" + C.esc(r.field) + ")" : ""}</td><td>${C.esc(r.user)}</td><td>${C.esc(r.via)}</td></tr>`).join("");
  }
  document.getElementById("wo-actions").addEventListener("click", async (e) => {
    const b = e.target.closest("button");
    if (!b) return;
    {
      const r = await C.confirmBox(`${id}: ${b.dataset.to.replace("_", " ")}?`, "comment");
      if (!r.ok) return;
      const body = {to: b.dataset.to, comment: r.extra || ""};
      await C.post(`/api/wo/${encodeURIComponent(id)}/transition`, body).catch(async (err) => {
        if (err.status === 409 && b.dataset.to === "closed" && r.extra) {
          await C.post(`/api/wo/${encodeURIComponent(id)}/transition`, {...body, override: true}).catch(() => {});
        }
      });
    }
    load();
  });
  C.stream({workorder: (d) => { if (!d || d.id === id) load(); }});
  load();
})();
