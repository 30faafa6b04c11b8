// Work-order list: filter by state; live: a "workorder" event re-reads the list.
"use strict";
(async () => {
  const C = Console;
  await C.whoami();
  const sel = document.getElementById("wo-state");
  async function load() {
    const j = await C.api("/api/wo?state=" + encodeURIComponent(sel.value));
    document.getElementById("wo-count").textContent = j.total + " orders";
    document.querySelector("#workorders tbody").innerHTML = j.orders.map((o) =>
      `<tr data-order="${C.esc(o.id)}"><td><a href="/workorders/${C.esc(o.id)}">${C.esc(o.id)}</a></td><td class="state">${C.esc(o.state)}</td>` +
      `<td>${o.priority}</td><td>${C.esc(o.trade || "")}</td><td>${C.esc(o.devices.join(", "))}</td><td>${C.esc(o.area)}</td>` +
      `<td>${C.esc(o.crew || "")}</td><td>${C.time(o.due_repair)}</td><td>${C.esc(o.title)}</td></tr>`).join("");
  }
  sel.addEventListener("change", load);
  C.stream({workorder: load});
  load();
})();
