// Junctions: mode, plan, signal-group states and faults from each junction's live tags.
"use strict";
(async () => {
  const C = Console;
  const MODES = {0: "normal", 1: "flashing amber", 2: "dark", 3: "manual"};
  async function load(bg) {
    const j = await C.api("/api/junctions?limit=500", bg === true);
    const cards = j.junctions.map((f) => {
      const mode = f.mode ? (MODES[f.mode.value] ?? f.mode.value) : "—";
      return `<div class="card${f.faults.length || f.alarms.length ? " fault" : ""}" data-junction="${C.esc(f.path)}">
        <h3><a href="/devices/${C.esc(f.path)}">${C.esc(f.path)}</a></h3>
        <div>mode <b class="mode">${C.esc(mode)}</b> · plan <b>${C.esc(f.plan ? C.value(f.plan.value) : "—")}</b>
          <span class="${f.mode ? C.qualityClass(f.mode.status) : ""}">${C.esc(f.mode ? f.mode.status_name : "")}</span></div>
        <div>${f.signal_groups.map((g) => `<span class="sg s${g.value ?? 0}" title="${C.esc(g.name)}: ${C.esc(g.value)} (${C.esc(g.status_name)})"></span>`).join("")}</div>
        <div class="faults">${f.faults.length ? "faults: " + f.faults.map(C.esc).join(", ") : '<span class="muted">no fault</span>'}</div>
        <div>${f.alarms.map((a) => `<div class="bad">${C.esc(a.name)} (${C.esc(a.isa_state)})</div>`).join("")}</div></div>`;
    });
    document.getElementById("junctions").innerHTML = cards.join("") || '<p class="muted">No junction in your areas.</p>';
    if (j.total > j.junctions.length) document.getElementById("junctions").insertAdjacentHTML("beforeend", `<p class="muted">first ${j.junctions.length} of ${j.total}</p>`);
  }
  await load();
  let t = null;
  C.stream({alarm: () => { clearTimeout(t); t = setTimeout(() => load(true), 500); }});
  setInterval(() => load(true), 10000);
})();
