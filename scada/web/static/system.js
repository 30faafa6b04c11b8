// System: driver health, historian lag and spool, server load, console counters.
"use strict";
(async () => {
  const C = Console;
  function card(title, obj) {
    const rows = Object.entries(obj || {}).map(([k, v]) => `<tr><td>${C.esc(k)}</td><td>${C.esc(C.value(v))}</td></tr>`).join("");
    return `<div class="card" data-group="${C.esc(title)}"><h3>${C.esc(title)}</h3><table class="grid">${rows || '<tr><td class="muted">—</td></tr>'}</table></div>`;
  }
  async function load(background) {
    const j = await C.api("/api/system", background === true);
    const el = document.getElementById("system");
    if (!j.visible) { el.innerHTML = `<p class="muted">${C.esc(j.detail)}</p>`; return; }
    el.innerHTML = card("server", j.server) + card("historian", j.historian) + card("alarms", j.alarms) +
      Object.entries(j.drivers).map(([k, v]) => card("driver " + k, v)).join("") + card("web console", j.web) +
      Object.entries(j.other).map(([k, v]) => card(k, v)).join("");
  }
  load();
  setInterval(() => load(true), 5000);
})();
