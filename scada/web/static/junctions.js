// Junctions: mode, plan, signal-group states and faults from each junction's live tags.
"use strict";
(async () => {
  const C = Console;
  const MODES = {0: "normal", 1: "flashing amber", 2: "dark", 3: "manual"};
  const FAULTS = ["conflict", "door_open", "mains_failure", "detector_fault", "coordination_loss", "flashing"];
  async function load(bg) {
    const list = await C.api("/api/devices?kind=junction&limit=500", bg === true);
    const cards = [];
    for (const d of list.devices) {
      const f = await C.api("/api/devices/" + d.path, bg === true);
      const by = Object.fromEntries(f.tags.map((t) => [t.name, t]));
      const sgs = f.tags.filter((t) => /^sg\d+_state$/.test(t.name));
      const faults = FAULTS.filter((k) => by[k] && by[k].value === true)
        .concat(f.tags.filter((t) => /lamp_failure$/.test(t.name) && t.value === true).map((t) => t.name));
      const alarms = f.alarms.filter((a) => a.state !== "Normal");
      const mode = by.mode ? (MODES[by.mode.value] ?? by.mode.value) : "—";
      cards.push(`<div class="card${faults.length || alarms.length ? " fault" : ""}" data-junction="${C.esc(d.path)}">
        <h3><a href="/devices/${C.esc(d.path)}">${C.esc(d.path)}</a></h3>
        <div>mode <b class="mode">${C.esc(mode)}</b> · plan <b>${C.esc(by.plan ? C.value(by.plan.value) : "—")}</b>
          <span class="${by.mode ? C.qualityClass(by.mode.status) : ""}">${C.esc(by.mode ? by.mode.status_name : "")}</span></div>
        <div>${sgs.map((t) => `<span class="sg s${t.value ?? 0}" title="${C.esc(t.name)}: ${C.esc(t.value)}"></span>`).join("")}</div>
        <div class="faults">${faults.length ? "faults: " + faults.map(C.esc).join(", ") : '<span class="muted">no fault</span>'}</div>
        <div>${alarms.map((a) => `<div class="bad">${C.esc(a.name)} (${C.esc(a.isa_state)})</div>`).join("")}</div></div>`);
    }
    document.getElementById("junctions").innerHTML = cards.join("") || '<p class="muted">No junction in your areas.</p>';
  }
  await load();
  let t = null;
  C.stream({alarm: () => { clearTimeout(t); t = setTimeout(() => load(true), 500); }});
  setInterval(() => load(true), 10000);
})();
